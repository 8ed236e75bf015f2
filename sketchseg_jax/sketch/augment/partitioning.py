"""Sketch partitioning: a partial query made of the strokes inside one region of the sketch.

The region is a grid cell or a union of adjacent cells, a random box, or the bounding box of
one cluster of strokes (k-means on stroke centroids). Strokes are clipped to it (a stroke that
leaves and re-enters becomes several pieces, each keeping its label). The result carries
sample["region"] = (x0, y0, x1, y1) in canvas units.

Ground truth: on an aligned pair the target is cut to the photo pixels inside the region, and
with blank_photo=True the photo outside it is filled (the teacher's partition-aware positive)
and the masks are cut too. On a non-aligned pair the target is restricted to the objects and
parts whose strokes remain (from stroke labels and mask_info); when the labels cannot say,
the target is dropped rather than left wrong.
"""

from __future__ import annotations

import numpy as np

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment.clip import clip_sketch, ink_length
from sketchseg_jax.sketch.augment.sample import (
    as_rng, draw, draw_int, fill_colour, get_sketch, image_hw, label_mask, region_pixel_mask,
    with_sketch)

MODES = ("grid", "box", "cluster")


def partition(sample: dict, rng, mode="grid", grid=(2, 2), max_cells=None, area=(0.15, 0.6),
              ratio=(0.5, 2.0), clusters=(2, 4), frame: str = "bounds", min_ink: float = 0.05,
              retries: int = 10, blank_photo: bool = False, fill="mean") -> dict:
  """Keeps the part of the sketch inside a random region.

  mode: "grid", "box", "cluster", or a list of them to pick from uniformly.
  grid: n or (columns, rows); a random rectangle of adjacent cells, never all of them, of at
    most max_cells cells.
  area, ratio: the box's share of the frame's area and its width/height ratio (log-uniform).
  clusters: k (or a (low, high) range) for the stroke clustering.
  frame: "bounds" lays grid and box over the sketch's bounding box (so cells hold ink),
    "canvas" over the whole canvas.
  min_ink: the least share of the sketch's ink length a result must keep; up to `retries`
    regions are drawn, after which the whole sketch is kept with the whole canvas as region.
  blank_photo, fill: aligned pairs only; fill is "mean", a grey level or an (r, g, b) triple.
  """
  rng = as_rng(rng)
  sketch = get_sketch(sample)
  modes = [mode] if isinstance(mode, str) else list(mode)
  for m in modes:
    if m not in MODES:
      raise UserError(f"partition mode must be one of {MODES}, got {m!r}")
  if frame not in ("bounds", "canvas"):
    raise UserError(f"partition frame must be 'bounds' or 'canvas', got {frame!r}")
  total = ink_length(sketch)
  cw, ch = sketch.canvas_size
  result = None
  if sketch.num_strokes:
    box = _frame(sketch, frame)
    for _ in range(max(int(retries), 1)):
      m = modes[int(rng.integers(len(modes)))] if len(modes) > 1 else modes[0]
      if m == "grid":
        region = _grid_region(rng, box, grid, max_cells)
        part, source = clip_sketch(sketch, region)
      elif m == "box":
        region = _box_region(rng, box, area, ratio)
        part, source = clip_sketch(sketch, region)
      else:
        region, source = _cluster_region(rng, sketch, clusters)
        part = sketch.select(source)
      if part.num_strokes and (total == 0 or ink_length(part) >= min_ink * total):
        result = part, source, region
        break
  if result is None:
    result = sketch, list(range(sketch.num_strokes)), (0.0, 0.0, cw, ch)
  part, source, region = result
  out = with_sketch(sample, part, source)
  out["region"] = tuple(float(v) for v in region)
  for key in ("queries", "query_stroke_widths"):
    out.pop(key, None)  # a partial of a group is one sketch: the merged one, cut
  return _restrict_truth(out, sample, part, region, blank_photo, fill)


def _restrict_truth(out, sample, part, region, blank_photo, fill):
  hw = image_hw(sample)
  if hw is None:
    return out
  if sample.get("aligned"):
    inside = region_pixel_mask(region, part, hw)
    if sample.get("target") is not None:
      out["target"] = np.asarray(sample["target"], bool) & inside
    if blank_photo:
      image = np.asarray(sample["image"])
      colour = np.round(fill_colour(fill, [image])).clip(0, 255).astype(image.dtype)
      out["image"] = np.where(inside[..., None], image, colour)
      if sample.get("masks") is not None:
        masks = np.asarray(sample["masks"])
        out["masks"] = (masks * inside).astype(masks.dtype)
  elif sample.get("target") is not None and not _same(part, get_sketch(sample)):
    kept = label_mask(part.labels, sample.get("masks"), sample.get("mask_info"), hw)
    if kept is None:
      del out["target"]
    else:
      out["target"] = np.asarray(sample["target"], bool) & kept
  return out


def _same(a, b):
  return a is b or a == b


def _frame(sketch, frame):
  cw, ch = sketch.canvas_size
  if frame == "canvas":
    return 0.0, 0.0, cw, ch
  x0, y0, x1, y1 = sketch.bounds()
  # A straight line's box has no height; give every frame some extent so cells have area.
  least = 0.02 * max(cw, ch)
  for lo, hi, axis in ((x0, x1, 0), (y0, y1, 1)):
    if hi - lo < least:
      mid = (lo + hi) / 2
      if axis == 0:
        x0, x1 = mid - least / 2, mid + least / 2
      else:
        y0, y1 = mid - least / 2, mid + least / 2
  return x0, y0, x1, y1


def _grid_region(rng, box, grid, max_cells):
  cols, rows = (grid, grid) if np.isscalar(grid) else (int(grid[0]), int(grid[1]))
  if cols < 1 or rows < 1:
    raise UserError(f"partition grid must have at least one cell per side, got {grid!r}")
  limit = cols * rows - 1 if max_cells is None else int(max_cells)
  limit = max(limit, 1)
  rects = [(i0, j0, i1, j1)
           for i0 in range(cols) for i1 in range(i0 + 1, cols + 1)
           for j0 in range(rows) for j1 in range(j0 + 1, rows + 1)
           if (i1 - i0) * (j1 - j0) <= limit]
  i0, j0, i1, j1 = rects[int(rng.integers(len(rects)))]
  x0, y0, x1, y1 = box
  cx, cy = (x1 - x0) / cols, (y1 - y0) / rows
  return x0 + i0 * cx, y0 + j0 * cy, x0 + i1 * cx, y0 + j1 * cy


def _box_region(rng, box, area, ratio):
  x0, y0, x1, y1 = box
  fw, fh = x1 - x0, y1 - y0
  a = draw(rng, area, "partition area") * fw * fh
  lo, hi = (float(ratio), float(ratio)) if np.isscalar(ratio) else (float(v) for v in ratio)
  if not 0 < lo <= hi:
    raise UserError(f"partition ratio must be positive with low <= high, got {ratio!r}")
  r = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
  w = min(np.sqrt(a * r), fw)
  h = min(np.sqrt(a / r), fh)
  bx = x0 + rng.uniform(0.0, fw - w) if fw > w else x0
  by = y0 + rng.uniform(0.0, fh - h) if fh > h else y0
  return bx, by, bx + w, by + h


def _cluster_region(rng, sketch, clusters):
  centroids = np.stack([s.astype(np.float64).mean(axis=0) for s in sketch.strokes])
  k = min(draw_int(rng, clusters, "partition clusters"), len(centroids))
  if k < 1:
    raise UserError(f"partition clusters must be >= 1, got {clusters!r}")
  assign = _kmeans(rng, centroids, k)
  labels = np.unique(assign)
  chosen = labels[int(rng.integers(len(labels)))]
  source = [int(i) for i in np.flatnonzero(assign == chosen)]
  pts = np.concatenate([sketch.strokes[i] for i in source]).astype(np.float64)
  lo, hi = pts.min(axis=0), pts.max(axis=0)
  return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), source


def _kmeans(rng, x, k, iters: int = 10):
  """Lloyd's k-means with k-means++ seeding; returns each row's cluster index."""
  centres = [x[int(rng.integers(len(x)))]]
  for _ in range(1, k):
    d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
    if d2.sum() <= 0:
      break
    centres.append(x[int(rng.choice(len(x), p=d2 / d2.sum()))])
  c = np.array(centres)
  for _ in range(iters):
    assign = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    new = np.array([x[assign == j].mean(axis=0) if np.any(assign == j) else c[j]
                    for j in range(len(c))])
    if np.allclose(new, c):
      break
    c = new
  return np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
