"""Grouping: a mosaic of 1-4 samples whose query shows a random non-empty subset of them.

Photos are scaled (keeping their aspect) so the longer side is a `scale` share of the mosaic's
shorter side and placed at random. overlap=False (default) places them without overlap
(rejection sampling, shrinking when crowded, and a 2x2 quadrant layout as the last resort);
overlap=True places them independently and later tiles cover earlier ones, whose masks lose
the covered pixels, so the target is what is visible.

Aligned sketches move with their photo into the mosaic frame (canvas = mosaic pixels) and the
result stays aligned. Object-centred sketches keep their own canvases; for the merged query
they are scaled into sub-canvases of a mosaic-sized canvas, laid out afresh (layout="random")
or at their photo's place (layout="photo").

The query is the chosen sketches merged onto one canvas (query="merge") or kept apart in
sample["queries"] (query="separate"; sample["sketch"] then holds their merged view), or a coin
flip between the two (query="random"). Object ids are renumbered so no two tiles share one;
mask_info entries gain "tile". The target is the union of the chosen tiles' object masks
(each tile's target, else the masks its stroke labels name); it is left out when any chosen
tile cannot say. sample["tiles"] holds each tile's (x0, y0, x1, y1) mosaic box and
sample["chosen"] the tile indices the query shows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment.sample import (
    as_rng, draw, fill_colour, get_sketch, image_hw, nearest_resample, object_mask,
    transform_points)
from sketchseg_jax.sketch.types import Sketch, StrokeLabel

QUERY_MODES = ("merge", "separate", "random")


def group(samples: Sequence[dict], rng, size=224, scale=(0.35, 0.65), overlap: bool = False,
          query: str = "merge", layout: str = "random", fill="mean") -> dict:
  """Tiles 1-4 samples into one mosaic sample; size is an int or (width, height)."""
  rng = as_rng(rng)
  samples = [samples] if isinstance(samples, dict) else list(samples)
  if not 1 <= len(samples) <= 4:
    raise UserError(f"group takes 1 to 4 samples, got {len(samples)}")
  if query not in QUERY_MODES:
    raise UserError(f"group query must be one of {QUERY_MODES}, got {query!r}")
  if layout not in ("random", "photo"):
    raise UserError(f"group layout must be 'random' or 'photo', got {layout!r}")
  W, H = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
  has_image = [s.get("image") is not None for s in samples]
  if any(has_image) and not all(has_image):
    raise UserError("group needs a photo in every sample or in none")
  aligned = [bool(s.get("aligned")) for s in samples]
  if any(aligned) and not all(aligned):
    raise UserError("group needs all samples aligned or all object-centred")
  with_photos, aligned = all(has_image), all(aligned) and all(has_image)
  sketches = [get_sketch(s) for s in samples]
  sources = ([image_hw(s)[::-1] for s in samples] if with_photos
             else [tuple(sk.canvas_size) for sk in sketches])
  tiles = layout_tiles(rng, sources, (W, H), scale, overlap)
  n_query = int(rng.integers(1, len(samples) + 1))
  chosen = sorted(int(i) for i in rng.choice(len(samples), n_query, replace=False))
  separate = query == "separate" or (query == "random" and bool(rng.integers(2)))

  id_maps = _id_maps(samples, sketches)
  relabelled = _renumber(sketches, id_maps)
  out = {"aligned": aligned, "tiles": [tuple(t) for t in tiles], "chosen": chosen}
  if with_photos:
    out.update(_paste_photos(samples, tiles, (W, H), fill, chosen, id_maps))
  if aligned or layout == "photo" or not with_photos:
    boxes = {i: tiles[i] for i in chosen}
  else:
    sub = layout_tiles(rng, [sketches[i].canvas_size for i in chosen], (W, H), scale, False)
    boxes = dict(zip(chosen, sub))
  placed = {i: _place(relabelled[i], boxes[i], (W, H), fit=not aligned and with_photos)
            for i in chosen}
  widths = {i: _widths(samples[i], sketches[i]) for i in chosen}
  out["sketch"] = _merge([placed[i] for i in chosen], (W, H))
  if any(samples[i].get("stroke_widths") is not None for i in chosen):
    out["stroke_widths"] = np.concatenate([widths[i] for i in chosen])
  if separate:
    out["queries"] = [placed[i] if aligned else relabelled[i] for i in chosen]
    if any(samples[i].get("stroke_widths") is not None for i in chosen):
      out["query_stroke_widths"] = [widths[i] for i in chosen]
  return out


def layout_tiles(rng, sizes, canvas, scale, overlap, tries: int = 40) -> list:
  """Integer boxes (x0, y0, x1, y1), one per (w, h) in `sizes`, inside the canvas."""
  W, H = canvas
  shrink = 1.0
  for _ in range(8):
    boxes = []
    for w, h in sizes:
      for _ in range(tries):
        b = _random_box(rng, (w, h), canvas, draw(rng, scale, "group scale") * shrink)
        if overlap or not any(_overlaps(b, o) for o in boxes):
          boxes.append(b)
          break
      else:
        break
    if len(boxes) == len(sizes):
      return boxes
    shrink *= 0.8
  # Crowded: one quadrant each, in random order, always disjoint.
  order = rng.permutation(4)[:len(sizes)]
  cells = [((q % 2) * (W // 2), (q // 2) * (H // 2), W // 2, H // 2) for q in order]
  boxes = []
  for (w, h), (cx, cy, cw, ch) in zip(sizes, cells):
    f = min(cw / w, ch / h) * rng.uniform(0.6, 1.0)
    tw, th = max(1, min(cw, round(w * f))), max(1, min(ch, round(h * f)))
    x0 = cx + int(rng.integers(0, cw - tw + 1))
    y0 = cy + int(rng.integers(0, ch - th + 1))
    boxes.append((x0, y0, x0 + tw, y0 + th))
  return boxes


def _random_box(rng, size, canvas, s):
  W, H = canvas
  w, h = size
  f = s * min(W, H) / max(w, h)
  tw, th = max(1, min(W, round(w * f))), max(1, min(H, round(h * f)))
  x0 = int(rng.integers(0, W - tw + 1))
  y0 = int(rng.integers(0, H - th + 1))
  return x0, y0, x0 + tw, y0 + th


def _overlaps(a, b):
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _paste_photos(samples, tiles, canvas, fill, chosen, id_maps):
  W, H = canvas
  images = [np.asarray(s["image"]) for s in samples]
  colour = np.round(fill_colour(fill, images)).clip(0, 255).astype(np.uint8)
  mosaic = np.empty((H, W, 3), np.uint8)
  mosaic[:] = colour
  tile_masks, info, objects = [], [], []
  for t, (s, (x0, y0, x1, y1)) in enumerate(zip(samples, tiles)):
    tw, th = x1 - x0, y1 - y0
    hw = image_hw(s)
    mosaic[y0:y1, x0:x1] = np.asarray(
        Image.fromarray(images[t]).resize((tw, th), Image.BILINEAR))

    def paste(m):
      full = np.zeros((H, W), bool)
      full[y0:y1, x0:x1] = nearest_resample(np.asarray(m, bool), (0, 0, hw[1], hw[0]), (th, tw))
      return full
    # Later tiles cover earlier ones (only possible with overlap=True).
    cover = np.zeros((H, W), bool)
    cover[y0:y1, x0:x1] = True
    for m in [m for ms in tile_masks for m in ms] + [o for o in objects if o is not None]:
      m &= ~cover
    masks = [] if s.get("masks") is None else [paste(m) for m in s["masks"]]
    tile_masks.append(masks)
    for k in range(len(masks)):
      entry = dict(s["mask_info"][k]) if s.get("mask_info") is not None else {}
      entry["tile"] = t
      if "object_id" in entry:
        entry["object_id"] = id_maps[t].get(int(entry["object_id"]), -1)
      info.append(entry)
    obj = object_mask(s)
    objects.append(None if obj is None else paste(obj))
  out = {"image": mosaic}
  flat = [m for ms in tile_masks for m in ms]
  if flat:
    out["masks"] = np.stack(flat)
    out["mask_info"] = info
  if all(objects[i] is not None for i in chosen):
    out["target"] = np.any(np.stack([objects[i] for i in chosen]), axis=0)
  return out


def _id_maps(samples, sketches):
  """Per tile, old object id -> new: tile t's ids follow all of tile t-1's; -1 stays -1."""
  maps, offset = [], 0
  for s, sk in zip(samples, sketches):
    ids = set(int(m.get("object_id", -1)) for m in s.get("mask_info") or [])
    if sk.labels is not None:
      ids.update(l.object_id for l in sk.labels if l is not None)
    ids = sorted(i for i in ids if i >= 0)
    maps.append({old: offset + k for k, old in enumerate(ids)})
    offset += len(ids)
  return maps


def _renumber(sketches, id_maps):
  out = []
  for sk, ids in zip(sketches, id_maps):
    if sk.labels is None:
      out.append(sk)
      continue
    labels = [None if l is None else StrokeLabel(ids.get(l.object_id, -1), l.category, l.part)
              for l in sk.labels]
    out.append(sk.replace(labels=tuple(labels)))
  return out


def _place(sketch, box, canvas, fit):
  """The sketch's canvas mapped onto the mosaic box: stretched to it (aligned: canvas and
  photo share the box) or, for an object-centred sketch, fitted into it at its own aspect."""
  x0, y0, x1, y1 = box
  cw, ch = sketch.canvas_size
  sx, sy = (x1 - x0) / cw, (y1 - y0) / ch
  if fit:
    sx = sy = min(sx, sy)
    x0 += ((x1 - x0) - cw * sx) / 2
    y0 += ((y1 - y0) - ch * sy) / 2
  mul, off = np.array([sx, sy]), np.array([x0, y0])
  return transform_points(sketch, lambda p: p * mul + off, canvas_size=canvas)


def _merge(sketches, canvas):
  def cat(attr):
    vals = [getattr(s, attr) for s in sketches]
    if all(v is None for v in vals):
      return None
    if attr == "labels":
      return [l for s, v in zip(sketches, vals)
              for l in (v if v is not None else [None] * s.num_strokes)]
    return [a for s, v in zip(sketches, vals)
            for a in (v if v is not None else [np.zeros(len(p)) for p in s.strokes])]
  return Sketch([p for s in sketches for p in s.strokes], canvas, times=cat("times"),
                pressures=cat("pressures"), labels=cat("labels"))


def _widths(sample, sketch):
  w = sample.get("stroke_widths")
  return np.ones(sketch.num_strokes, np.float32) if w is None else np.asarray(w, np.float32)
