"""Contact sheets of dataset records, to check a data set by eye (`sketchseg data show`).

One row per record, four cells: the photo; the query sketch (a multi-sketch query's sketches
side by side, each in its own colour, every one on its canvas in a grey frame); the target
tinted red over the dimmed photo, with an aligned sketch drawn over it in cyan where the
sketch sits on the photo; the instance masks, one colour per object, with part borders in
black. A caption under the row names the record, category, granularity and flags.

  open_dataset(path, split=None) -> (source, format)   a synth output or any evaluation folder
  render_sheet(records, cell=160, names=None) -> PIL.Image
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sketchseg_jax.errors import UserError

COLUMNS = ("photo", "sketch", "target", "instances / parts")
PAD = 4
HEADER = 16
CAPTION = 14
BACKDROP = (236, 236, 236)
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127)],
    np.float32)
TARGET_TINT = np.array((230, 40, 40), np.float32)
SKETCH_INK = np.array((0, 225, 255), np.float32)


# ---------------------------------------------------------------------------- data sets

def open_dataset(path, split: Optional[str] = None) -> tuple:
  """(source, "folder" | "tfds") for an evaluation folder (manifest.json) or a TFDS dataset
  written by `sketchseg data synth`. A TFDS dataset with several splits shows `split`, by
  default "train" when it has one, else its first; a folder has one split at most."""
  from sketchseg_jax.data import synth, tfds_store
  root = Path(path).expanduser()
  if not root.exists():
    raise UserError(f"{root}: no such folder")
  if not root.is_dir():
    raise UserError(f"{root}: not a folder (give a synth output or an evaluation folder)")
  if (root / synth.MANIFEST_FILE).is_file():
    from sketchseg_jax.data.sources.eval_folder import EvalFolder
    if split is not None:
      held = _settings(root).get("split")
      if held is None:
        raise UserError(f"{root} is an evaluation folder, which has no splits; drop --split")
      if split != held:
        raise UserError(f"{root} holds split {held!r}, not {split!r}")
    return EvalFolder(str(root)), "folder"
  try:
    version_dir = tfds_store.find_dataset_dir(root)
  except UserError:
    raise UserError(f"{root}: neither an evaluation folder ({synth.MANIFEST_FILE}) nor a TFDS "
                    "dataset (dataset_info.json)") from None
  info = json.loads((version_dir / "dataset_info.json").read_text())
  splits = [s["name"] for s in info.get("splits", [])]
  if not splits:
    raise UserError(f"{version_dir}: the TFDS dataset has no splits")
  if split is None:
    split = "train" if "train" in splits else splits[0]
  if split not in splits:
    raise UserError(f"{version_dir}: no split {split!r}; it has {', '.join(splits)}")
  source = tfds_store.TFDSSource(str(version_dir), split)
  if len(source) == 0:
    raise UserError(f"{version_dir}: split {split!r} is empty")
  return source, "tfds"


def _settings(root: Path) -> dict:
  from sketchseg_jax.data import synth
  try:
    return json.loads((root / synth.SETTINGS_FILE).read_text())
  except (OSError, ValueError):
    return {}


# ---------------------------------------------------------------------------- drawing

def render_sheet(records: Sequence[dict], cell: int = 160,
                 names: Optional[Sequence[str]] = None, width: float = 2.0):
  """The contact sheet of `records` (sample dicts) as an RGB PIL image."""
  from PIL import Image, ImageDraw

  if not records:
    raise UserError("nothing to draw: no records")
  cols = len(COLUMNS)
  row_h = cell + CAPTION + PAD
  sheet = Image.new("RGB", (PAD + cols * (cell + PAD), HEADER + PAD + len(records) * row_h),
                    (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for c, title in enumerate(COLUMNS):
    draw.text((PAD + c * (cell + PAD), 2), title, fill=(90, 90, 90))
  for r, rec in enumerate(records):
    y = HEADER + r * row_h
    cells = (photo_cell(rec, cell), sketch_cell(rec, cell, width), target_cell(rec, cell, width),
             masks_cell(rec, cell))
    for c, rgb in enumerate(cells):
      sheet.paste(Image.fromarray(rgb), (PAD + c * (cell + PAD), y))
    if rec.get("masks") is None:
      draw.text((PAD + 3 * (cell + PAD) + 4, y + 4), "no instance masks", fill=(255, 255, 255))
    name = names[r] if names is not None else rec.get("query_name", f"#{r}")
    _text(draw, (PAD, y + cell + 1), caption(rec, name), sheet.width - 2 * PAD)
  return sheet


def caption(rec: dict, name: str) -> str:
  bits = [str(name), str(rec.get("category", "?")), str(rec.get("granularity", "?"))]
  meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
  parts, instances = rec.get("parts") or meta.get("parts"), rec.get("instances") or \
      meta.get("instances")
  if parts:
    bits.append("parts: " + ", ".join(map(str, parts)))
  if instances:
    bits.append(f"{instances} instances")
  background = rec.get("background") or meta.get("background")
  if background:
    bits.append(f"{background} background")
  queries = rec.get("queries")
  if queries and len(queries) > 1:
    bits.append(f"{len(queries)} sketches")
  bits.append("aligned" if rec.get("aligned") else "centred")
  if rec.get("heldout"):
    bits.append("HELD OUT")
  return "  |  ".join(bits)


def _text(draw, xy, text, max_width):
  if draw.textlength(text) > max_width:
    while text and draw.textlength(text + "..") > max_width:
      text = text[:-1]
    text += ".."
  draw.text(xy, text, fill=(0, 0, 0))


def _box(shape, cell: int) -> tuple:
  """(w, h, x0, y0) of an (H, W) frame fitted into the cell and centred."""
  H, W = shape[:2]
  s = cell / max(H, W)
  w, h = max(1, round(W * s)), max(1, round(H * s))
  return w, h, (cell - w) // 2, (cell - h) // 2


def _canvas(cell: int) -> np.ndarray:
  return np.full((cell, cell, 3), BACKDROP, np.float32)


def _photo(image: np.ndarray, w: int, h: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize(
      (w, h), Image.BILINEAR), np.float32)


def _nearest(a: np.ndarray, w: int, h: int) -> np.ndarray:
  """Nearest-neighbour resize of the last two axes of a mask (or stack of masks)."""
  H, W = a.shape[-2:]
  rows = np.minimum((np.arange(h) + 0.5) * H / h, H - 1).astype(np.int64)
  cols = np.minimum((np.arange(w) + 0.5) * W / w, W - 1).astype(np.int64)
  return a[..., rows[:, None], cols[None, :]]


def _done(canvas: np.ndarray) -> np.ndarray:
  return np.clip(canvas, 0, 255).round().astype(np.uint8)


def photo_cell(rec: dict, cell: int) -> np.ndarray:
  out = _canvas(cell)
  image = rec.get("image")
  if image is not None and image.size:
    w, h, x0, y0 = _box(image.shape, cell)
    out[y0:y0 + h, x0:x0 + w] = _photo(image, w, h)
  return _done(out)


def _ink(sketch, w: int, h: int, width: float, widths=None) -> np.ndarray:
  from sketchseg_jax.sketch.raster import rasterize
  from sketchseg_jax.sketch.types import Sketch
  if isinstance(sketch, Sketch) and widths is not None and len(widths) == sketch.num_strokes:
    return rasterize(sketch, (w, h), width=width, widths=width * np.asarray(widths, np.float32))
  return rasterize(sketch, (w, h), width=width)


def _frame_size(sketch, w: int, h: int) -> tuple:
  """The sketch canvas fitted into w x h: (fw, fh, x0, y0)."""
  from sketchseg_jax.sketch.types import Sketch
  cw, ch = sketch.canvas_size if isinstance(sketch, Sketch) else sketch.shape[1::-1]
  s = min(w / cw, h / ch)
  fw, fh = max(1, round(cw * s)), max(1, round(ch * s))
  return fw, fh, (w - fw) // 2, (h - fh) // 2


def _draw_sketch(out: np.ndarray, sketch, x: int, y: int, w: int, h: int, colour, width,
                 widths=None) -> None:
  """The sketch on white in its canvas frame, fitted into out[y:y+h, x:x+w]."""
  fw, fh, fx, fy = _frame_size(sketch, w, h)
  x, y = x + fx, y + fy
  frame = out[y:y + fh, x:x + fw]
  frame[:] = (200, 200, 200)
  frame[1:-1, 1:-1] = 255
  ink = _ink(sketch, fw, fh, width, widths)[..., None]
  frame[:] = frame * (1 - ink) + colour * ink


def sketch_cell(rec: dict, cell: int, width: float = 2.0) -> np.ndarray:
  out = _canvas(cell)
  queries = rec.get("queries")
  if queries and len(queries) > 1:
    n = len(queries)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    sw, sh = (cell - PAD * (cols - 1)) // cols, (cell - PAD * (rows - 1)) // rows
    qwidths = rec.get("query_stroke_widths") or [None] * n
    for k, (q, qw) in enumerate(zip(queries, qwidths)):
      r, c = divmod(k, cols)
      _draw_sketch(out, q, c * (sw + PAD), r * (sh + PAD), sw, sh, PALETTE[k % len(PALETTE)],
                   width, qw)
  elif rec.get("sketch") is not None:
    _draw_sketch(out, rec["sketch"], 0, 0, cell, cell, np.zeros(3, np.float32), width,
                 rec.get("stroke_widths"))
  return _done(out)


def _edges(labels: np.ndarray) -> np.ndarray:
  """Pixels whose right or lower neighbour carries another label (both sides nonzero or not)."""
  e = np.zeros(labels.shape, bool)
  e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
  e[:-1, :] |= labels[:-1, :] != labels[1:, :]
  return e


def target_cell(rec: dict, cell: int, width: float = 2.0) -> np.ndarray:
  from sketchseg_jax.sketch.types import Sketch
  out = _canvas(cell)
  image, target = rec.get("image"), rec.get("target")
  if image is None or not image.size:
    return _done(out)
  w, h, x0, y0 = _box(image.shape, cell)
  photo = _photo(image, w, h)
  # Grey, dim surroundings so the tinted target stands out whatever the photo's colours.
  view = np.repeat(photo.mean(axis=-1, keepdims=True), 3, axis=-1) * 0.45 + 20
  if target is not None:
    t = _nearest(np.asarray(target, bool), w, h)
    view[t] = photo[t] * 0.4 + TARGET_TINT * 0.6
    view[_edges(t.astype(np.int8))] = TARGET_TINT
  sketch = rec.get("sketch")
  if rec.get("aligned") and isinstance(sketch, Sketch):
    # An aligned canvas is the photo frame scaled, so "canvas" placement lands on the photo.
    ink = _ink(sketch, w, h, max(1.0, width * 0.75), rec.get("stroke_widths"))[..., None]
    view = view * (1 - ink) + SKETCH_INK * ink
  out[y0:y0 + h, x0:x0 + w] = view
  return _done(out)


def masks_cell(rec: dict, cell: int) -> np.ndarray:
  out = _canvas(cell)
  image, masks, info = rec.get("image"), rec.get("masks"), rec.get("mask_info")
  if image is None or not image.size:
    return _done(out)
  w, h, x0, y0 = _box(image.shape, cell)
  photo = _photo(image, w, h)
  view = np.repeat(photo.mean(axis=-1, keepdims=True), 3, axis=-1) * 0.45 + 20
  if masks is not None and info:
    masks = _nearest(np.asarray(masks, bool), w, h)
    parts = np.zeros((h, w), np.int32)
    objects = sorted({int(m["object_id"]) for m in info})
    for k, m in enumerate(info):
      if m["part"] == "":
        colour = PALETTE[objects.index(int(m["object_id"])) % len(PALETTE)]
        view[masks[k]] = photo[masks[k]] * 0.35 + colour * 0.65
      else:
        parts[masks[k]] = k + 1
    view[_edges(parts)] = (0, 0, 0)
  out[y0:y0 + h, x0:x0 + w] = view
  return _done(out)
