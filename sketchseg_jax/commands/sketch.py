"""`sketchseg sketch show`: a contact sheet of sketches under augmentations, to check by eye.

Rows are files; columns are the original and then each augmentation under seeds 0..K-1.
Each cell is the rasterised sketch on its canvas (grey frame), the partition region in blue,
with a caption under it.
"""

from __future__ import annotations

import ast
import os

# Sheet geometry in pixels: cells of --cell x --cell, a caption strip under each, padding.
PAD = 4
CAPTION = 14


def register(sub):
  p = sub.add_parser("sketch", help="inspect sketch files",
                     description="Inspect sketch files (.ndjson, .npz, .svg, .png, .jpg).")
  inner = p.add_subparsers(dest="sketch_command", metavar="ACTION")
  inner.required = True
  show = inner.add_parser(
      "show", help="draw sketches under augmentations into one PNG contact sheet",
      description="Rows are files, columns the original and each augmentation under seeds "
                  "0..K-1. An augmentation is NAME or NAME:key=value,key=value (values are "
                  "Python literals, e.g. partition:mode=box,area=(0.2,0.4)). The group "
                  "augmentation tiles each file with up to three of the files after it.")
  show.add_argument("files", nargs="+", metavar="FILE", help="sketch files")
  show.add_argument("--aug", action="extend", nargs="+", default=[], metavar="NAME",
                    help="augmentation(s) to show; repeatable")
  show.add_argument("--seeds", type=int, default=3, metavar="K",
                    help="seeds per augmentation (default 3)")
  show.add_argument("--cell", type=int, default=160, help="cell size in pixels (default 160)")
  show.add_argument("--width", type=float, default=2.0, help="stroke width in pixels")
  show.add_argument("--fit", choices=("canvas", "fit"), default="canvas",
                    help="draw each sketch on its whole canvas (default) or fitted to its ink")
  show.add_argument("--index", type=int, default=0,
                    help="which drawing of a multi-drawing file (.ndjson line, .npz entry)")
  show.add_argument("--out", required=True, help="output PNG")
  show.set_defaults(handler=run_show)


def parse_aug(spec: str) -> dict:
  """'name:k=v,k=v' -> {"name": name, k: literal(v), ...}; bare words stay strings."""
  from sketchseg_jax.errors import UserError
  name, _, rest = spec.partition(":")
  step = {"name": name.strip()}
  for item in _split_top_level(rest):
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
      raise UserError(f"--aug {spec!r}: expected key=value, got {item!r}")
    try:
      step[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      step[key.strip()] = value.strip()
  return step


def _split_top_level(text: str) -> list:
  """Splits on commas outside brackets, so tuple values survive."""
  parts, depth, cur = [], 0, ""
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      parts.append(cur)
      cur = ""
    else:
      cur += ch
  if cur.strip():
    parts.append(cur)
  return [p for p in parts if p.strip()]


def run_show(args) -> int:
  from PIL import Image, ImageDraw

  from sketchseg_jax.errors import UserError
  from sketchseg_jax.sketch.augment import build_augment
  from sketchseg_jax.sketch.io import load
  from sketchseg_jax.sketch.types import Sketch

  if args.seeds < 1:
    raise UserError(f"--seeds must be >= 1, got {args.seeds}")
  if args.cell < 16:
    raise UserError(f"--cell must be >= 16, got {args.cell}")
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    raise UserError(f"--out {args.out}: folder {out_dir} does not exist")
  steps = [parse_aug(s) for s in args.aug]
  augs = [build_augment([s]) for s in steps]  # validates names and parameters up front

  items = []
  for path in args.files:
    if not os.path.isfile(path):
      raise UserError(f"{path}: no such file")
    items.append(load(path, index=args.index))
  samples = [{"sketch": it, "aligned": False} if isinstance(it, Sketch) else None
             for it in items]

  rows, cols = len(items), 1 + len(augs) * args.seeds
  cell = args.cell
  sheet = Image.new("RGB", (PAD + cols * (cell + PAD), PAD + rows * (cell + CAPTION + PAD)),
                    (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for r, (path, item) in enumerate(zip(args.files, items)):
    y = PAD + r * (cell + CAPTION + PAD)
    _cell(sheet, draw, PAD, y, cell, _render(item, None, cell, args), os.path.basename(path))
    for a, (spec, step, aug) in enumerate(zip(args.aug, steps, augs)):
      for k in range(args.seeds):
        x = PAD + (1 + a * args.seeds + k) * (cell + PAD)
        caption = f"{spec} #{k}"
        if samples[r] is None:
          _cell(sheet, draw, x, y, cell, None, f"{step['name']}: raster")
          continue
        if step["name"] == "group":
          others = [s for s in samples[r + 1:] + samples[:r] if s is not None][:3]
          out = aug([samples[r]] + others, k)
        else:
          out = aug(samples[r], k)
        if out.get("queries"):
          caption += f" ({len(out['queries'])} q)"
        _cell(sheet, draw, x, y, cell, _render(out["sketch"], out, cell, args), caption)
  sheet.save(args.out, format="PNG")
  print(f"wrote {args.out}: {rows} x {cols} cells of {cell}px")
  return 0


def _render(item, sample, cell, args):
  """An RGB array of the sketch (or raster) with its canvas frame and any region drawn."""
  import numpy as np
  from PIL import Image, ImageDraw

  from sketchseg_jax.sketch.raster import placement, rasterize
  from sketchseg_jax.sketch.types import Sketch

  widths = None
  if sample is not None and sample.get("stroke_widths") is not None:
    widths = args.width * np.asarray(sample["stroke_widths"], np.float32)
  ink = rasterize(item, cell, width=args.width, fit=args.fit, widths=widths)
  grey = np.round(255 * (1.0 - ink)).astype(np.uint8)
  img = Image.fromarray(np.stack([grey] * 3, axis=-1))
  if isinstance(item, Sketch):
    d = ImageDraw.Draw(img)
    scale, ox, oy = placement(item, cell, fit=args.fit)
    cw, ch = item.canvas_size
    d.rectangle([ox, oy, ox + cw * scale - 1, oy + ch * scale - 1], outline=(200, 200, 200))
    if sample is not None and sample.get("region") is not None:
      x0, y0, x1, y1 = sample["region"]
      d.rectangle([ox + x0 * scale, oy + y0 * scale, ox + x1 * scale, oy + y1 * scale],
                  outline=(40, 110, 230))
  return np.asarray(img)


def _cell(sheet, draw, x, y, cell, rgb, caption):
  from PIL import Image
  if rgb is None:
    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(235, 235, 235))
  else:
    sheet.paste(Image.fromarray(rgb), (x, y))
  text = caption
  if draw.textlength(text) > cell:
    while text and draw.textlength(text + "..") > cell:
      text = text[:-1]
    text += ".."
  draw.text((x, y + cell + 1), text, fill=(0, 0, 0))
