"""Segmentation metrics: per-query IoU, mIoU per granularity, trivial baselines, a picture grid.

Protocol (METHOD.md "Evaluation"). Each query is a photo, one or more sketches and a true mask;
the segmenter gives a float mask `prob` in [0, 1] at the photo's size, and a pixel is predicted
foreground when `prob >= t`.
- IoU = |pred & true| / |pred | true|, and 1.0 when both masks are empty (nothing to find and
  nothing found).
- `miou`: mean IoU at the fixed threshold 0.5, per granularity (object, part, group, instance,
  category, then any other names sorted) and over all queries (`"all"`).
- `miou_best_threshold`: for each granularity, the threshold of THRESHOLDS (0.05, 0.10, ..., 0.95)
  with the highest mean IoU over that granularity's queries, and that mean; `"all"` picks one
  threshold for all queries together. The threshold is chosen on the very queries it is scored
  on, so this number is optimistic: an upper bound on what a threshold tuned elsewhere gives.
  Ties go to the threshold nearest 0.5.
- Baselines on the same queries, masks that never look at the sketch:
  - `all_ones`: every pixel foreground, IoU = true area / image area (0.0 on an empty mask).
  - `centre_prior`: the best centred disk. A disk centred on the image with radius
    r * min(H, W) / 2, r in RADII (0.1, 0.2, ..., 1.5; r = 1 is the inscribed disk, r >= sqrt(2)
    reaches the corners of a square photo); like the best threshold, r is chosen per granularity
    on the evaluated queries (ties to the smaller disk), so it is optimistic in the same way.
- `mask_stats` at the fixed threshold, means over each granularity's queries: `area` (the
  predicted mask's share of the photo), `true_area` (the true mask's), `precision`
  (|pred & true| / |pred|) and `recall` (|pred & true| / |true|); an empty mask gives 1.0
  where the other is empty too, else 0.0 (as IoU does). They tell masks that are too big
  (low precision, high recall) from masks that miss (the reverse).
- `by_split`: the same summary for the seen and the held-out categories separately (thresholds
  and radii chosen within each split); present only when some query is held out.

`SegmentationAccumulator` streams: per query it keeps only a few dozen floats, never the masks,
and accumulators from shards combine with `merge`. `render_grid` draws examples into a PNG.
"""

from __future__ import annotations

import functools
import os
import uuid
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sketchseg_jax.errors import UserError

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
RADII = np.round(np.arange(0.1, 1.51, 0.1), 1)
GRANULARITIES = ("object", "part", "group", "instance", "category")
FIXED_THRESHOLD = 0.5

_FIXED_INDEX = int(np.flatnonzero(THRESHOLDS == FIXED_THRESHOLD)[0])
# Slack for probabilities that went through float arithmetic (resizing, averaging).
_RANGE_SLACK = 1e-6


def _iou_from_counts(intersection, pred_area, target_area):
  """IoU from pixel counts (scalars or arrays); 1.0 where both masks are empty."""
  intersection = np.asarray(intersection, np.float64)
  union = np.asarray(pred_area, np.float64) + np.asarray(target_area, np.float64) - intersection
  return np.where(union > 0, intersection / np.maximum(union, 1.0), 1.0)


def iou(pred_bool, target_bool) -> float:
  """Intersection over union of two (H, W) boolean masks; 1.0 when both are empty."""
  pred = np.asarray(pred_bool)
  target = np.asarray(target_bool)
  if pred.ndim != 2 or pred.shape != target.shape:
    raise UserError(f"iou needs two (H, W) masks of one shape, got {pred.shape} and {target.shape}")
  pred = pred.astype(bool)
  target = target.astype(bool)
  return float(_iou_from_counts(np.count_nonzero(pred & target), np.count_nonzero(pred),
                                np.count_nonzero(target)))


@functools.lru_cache(maxsize=16)
def _centre_disks(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """(distance of each pixel centre from the image centre in units of min(H, W) / 2, the pixel
  count of the disk for each radius in RADII). Cached per shape: evaluation sets repeat sizes."""
  ys = (np.arange(height, dtype=np.float64) + 0.5 - height / 2.0)[:, None]
  xs = (np.arange(width, dtype=np.float64) + 0.5 - width / 2.0)[None, :]
  distance = np.sqrt(ys * ys + xs * xs) / (min(height, width) / 2.0)
  areas = np.searchsorted(np.sort(distance, axis=None), RADII, side="right")
  distance.flags.writeable = False
  areas.flags.writeable = False
  return distance, areas


def centre_disk(height: int, width: int, radius: float) -> np.ndarray:
  """The centre-prior mask: pixels whose centre lies within radius * min(H, W) / 2 of the
  image centre."""
  distance, _ = _centre_disks(int(height), int(width))
  return distance <= radius


def _check_query(prob, target, granularity) -> Tuple[np.ndarray, np.ndarray]:
  if not isinstance(granularity, str) or not granularity:
    raise UserError(f"granularity must be a non-empty string, got {granularity!r}")
  p = np.asarray(prob)
  t = np.asarray(target)
  if p.ndim != 2 or 0 in p.shape:
    raise UserError(f"prob must be a non-empty (H, W) array, got shape {p.shape}")
  if t.shape != p.shape:
    raise UserError(f"target has shape {t.shape} but prob has shape {p.shape}")
  if not (np.issubdtype(p.dtype, np.number) or p.dtype == bool):
    raise UserError(f"prob must be numeric, got dtype {p.dtype}")
  p = p.astype(np.float64)
  bad = np.count_nonzero(~np.isfinite(p))
  if bad:
    raise UserError(f"prob has {bad} non-finite values (NaN or inf)")
  low, high = float(p.min()), float(p.max())
  if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
    raise UserError(f"prob must be probabilities in [0, 1], got values from {low:g} to {high:g} "
                    "(logits? apply a sigmoid first)")
  if t.dtype != bool:
    if not np.issubdtype(t.dtype, np.number):
      raise UserError(f"target must be a boolean mask, got dtype {t.dtype}")
    if not np.all((t == 0) | (t == 1)):
      raise UserError("target must be a boolean mask (or 0/1 values); got other values, "
                      "e.g. a 0/255 image: compare it with > 0 first")
    t = t.astype(bool)
  return p, t


def _ratio(part, whole, both_empty):
  return float(part / whole) if whole else (1.0 if both_empty else 0.0)


def _query_scores(prob: np.ndarray, target: np.ndarray):
  """(IoU at each threshold of THRESHOLDS, IoU of the all-ones mask, IoU of the centred disk at
  each radius of RADII, [area, true area, precision, recall] at FIXED_THRESHOLD) for one
  validated query."""
  target_area = np.count_nonzero(target)
  inside = prob[target]
  # One pass per threshold keeps the temporary memory at one mask, whatever the grid size.
  pred_area = np.array([np.count_nonzero(prob >= t) for t in THRESHOLDS])
  inter = np.array([np.count_nonzero(inside >= t) for t in THRESHOLDS])
  thresholds = _iou_from_counts(inter, pred_area, target_area)
  all_ones = float(_iou_from_counts(target_area, prob.size, target_area))
  distance, disk_area = _centre_disks(*prob.shape)
  disk_inter = np.searchsorted(np.sort(distance[target]), RADII, side="right")
  disks = _iou_from_counts(disk_inter, disk_area, target_area)
  pred, hit = pred_area[_FIXED_INDEX], inter[_FIXED_INDEX]
  both_empty = pred == 0 and target_area == 0
  stats = np.array([pred / prob.size, target_area / prob.size,
                    _ratio(hit, pred, both_empty), _ratio(hit, target_area, both_empty)])
  return thresholds, all_ones, disks, stats


def _ordered(names) -> List[str]:
  present = set(names)
  return [g for g in GRANULARITIES if g in present] + sorted(present - set(GRANULARITIES))


def _best(means: np.ndarray, grid: np.ndarray, prefer: Optional[float]) -> Tuple[float, float]:
  """(best mean, its grid value); ties go to the value nearest `prefer`, or the smallest."""
  top = np.flatnonzero(means == means.max())
  if prefer is None:
    index = int(top[0])
  else:
    index = int(top[np.argmin(np.abs(grid[top] - prefer))])
  return float(means[index]), float(grid[index])


MASK_STATS = ("area", "true_area", "precision", "recall")


def _summary(granularity: np.ndarray, thresholds: np.ndarray, all_ones: np.ndarray,
             disks: np.ndarray, stats: np.ndarray) -> dict:
  groups = [(g, granularity == g) for g in _ordered(granularity.tolist())]
  groups.append(("all", np.ones(len(granularity), bool)))
  miou, miou_best, best_threshold = {}, {}, {}
  ones_miou, disk_miou, disk_radius = {}, {}, {}
  mask_stats = {k: {} for k in MASK_STATS}
  for name, sel in groups:
    for k, v in zip(MASK_STATS, stats[sel].mean(0)):
      mask_stats[k][name] = float(v)
    miou[name] = float(thresholds[sel, _FIXED_INDEX].mean())
    miou_best[name], best_threshold[name] = _best(thresholds[sel].mean(0), THRESHOLDS,
                                                  FIXED_THRESHOLD)
    ones_miou[name] = float(all_ones[sel].mean())
    disk_miou[name], disk_radius[name] = _best(disks[sel].mean(0), RADII, None)
  return {
      "miou": miou,
      "miou_best_threshold": miou_best,
      "best_threshold": best_threshold,
      "num_queries": int(len(granularity)),
      "queries_per_granularity": {name: int(sel.sum()) for name, sel in groups[:-1]},
      "mask_stats": mask_stats,
      "baselines": {
          "all_ones": {"miou": ones_miou},
          "centre_prior": {"miou": disk_miou, "radius": disk_radius},
      },
  }


class SegmentationAccumulator:
  """Collects per-query scores (not masks) and summarises them; see the module docstring."""

  def __init__(self):
    self._granularity: List[str] = []
    self._heldout: List[bool] = []
    self._thresholds: List[np.ndarray] = []
    self._all_ones: List[float] = []
    self._disks: List[np.ndarray] = []
    self._stats: List[np.ndarray] = []

  def __len__(self) -> int:
    return len(self._granularity)

  def add(self, prob, target, granularity: str, heldout: bool = False) -> float:
    """Score one query: prob (H, W) floats in [0, 1], target (H, W) bool. Returns its IoU at
    the fixed threshold 0.5."""
    p, t = _check_query(prob, target, granularity)
    thresholds, all_ones, disks, stats = _query_scores(p, t)
    self._granularity.append(granularity)
    self._heldout.append(bool(heldout))
    self._thresholds.append(thresholds)
    self._all_ones.append(all_ones)
    self._disks.append(disks)
    self._stats.append(stats)
    return float(thresholds[_FIXED_INDEX])

  def merge(self, other: "SegmentationAccumulator") -> "SegmentationAccumulator":
    """Append `other`'s queries (e.g. another shard's) to this one; returns self."""
    if not isinstance(other, SegmentationAccumulator):
      raise TypeError(f"merge takes a SegmentationAccumulator, got {type(other).__name__}")
    # Copies first, so merging an accumulator into itself doubles it instead of looping.
    parts = (list(other._granularity), list(other._heldout), list(other._thresholds),
             list(other._all_ones), list(other._disks), list(other._stats))
    self._granularity.extend(parts[0])
    self._heldout.extend(parts[1])
    self._thresholds.extend(parts[2])
    self._all_ones.extend(parts[3])
    self._disks.extend(parts[4])
    self._stats.extend(parts[5])
    return self

  def result(self) -> dict:
    """The JSON-able summary described in the module docstring."""
    if not self._granularity:
      raise UserError("no queries were evaluated")
    granularity = np.array(self._granularity, dtype=object)
    heldout = np.array(self._heldout, bool)
    thresholds = np.stack(self._thresholds)
    all_ones = np.array(self._all_ones, np.float64)
    disks = np.stack(self._disks)
    stats = np.stack(self._stats)
    out = _summary(granularity, thresholds, all_ones, disks, stats)
    if heldout.any():
      out["by_split"] = {}
      for split, sel in (("seen", ~heldout), ("heldout", heldout)):
        if sel.any():
          out["by_split"][split] = _summary(granularity[sel], thresholds[sel], all_ones[sel],
                                            disks[sel], stats[sel])
    return out


# ---- picture grid -------------------------------------------------------------------------------

_GAP = 2
_TITLE_H = 16
_LABEL_H = 14
_COLUMNS = ("photo", "sketch", "prediction", "truth")
_BACKGROUND = (255, 255, 255)
_LETTERBOX = (224, 224, 224)
_PRED_CONTOUR = (255, 32, 32)
_TRUE_CONTOUR = (32, 200, 32)


def _grid_size(num_rows: int, cell: int) -> Tuple[int, int]:
  width = len(_COLUMNS) * cell + (len(_COLUMNS) + 1) * _GAP
  return width, _TITLE_H + num_rows * (_LABEL_H + cell + _GAP)


def _fit(height: int, width: int, cell: int) -> Tuple[int, int]:
  """(width, height) of an image scaled to fit a cell, aspect kept."""
  scale = cell / max(height, width)
  return max(1, round(width * scale)), max(1, round(height * scale))


def _in_cell(picture: Image.Image, cell: int) -> Image.Image:
  canvas = Image.new("RGB", (cell, cell), _LETTERBOX)
  canvas.paste(picture, ((cell - picture.width) // 2, (cell - picture.height) // 2))
  return canvas


def _edge(mask: np.ndarray) -> np.ndarray:
  """Pixels of the mask with a 4-neighbour outside it (the image border counts as inside)."""
  inner = mask.copy()
  inner[1:] &= mask[:-1]
  inner[:-1] &= mask[1:]
  inner[:, 1:] &= mask[:, :-1]
  inner[:, :-1] &= mask[:, 1:]
  return mask & ~inner


def _unit_to_uint8(a: np.ndarray) -> np.ndarray:
  """uint8 stays; other numbers are taken as [0, 1] floats."""
  if a.dtype == np.uint8:
    return a
  return np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _photo_cell(image: np.ndarray, cell: int) -> Image.Image:
  size = _fit(image.shape[0], image.shape[1], cell)
  return _in_cell(Image.fromarray(image).resize(size, Image.BILINEAR), cell)


def _sketch_cell(sketch, cell: int, index: int) -> Image.Image:
  ink = np.asarray(sketch)
  if ink.ndim == 3:
    ink = ink.max(axis=0)
  if ink.ndim != 2 or 0 in ink.shape:
    raise UserError(f"row {index}: sketch must be (R, R) or (Q, R, R), got shape "
                    f"{np.asarray(sketch).shape}")
  paper = 255 - _unit_to_uint8(ink)
  picture = Image.fromarray(paper).resize(_fit(ink.shape[0], ink.shape[1], cell), Image.BILINEAR)
  return _in_cell(picture.convert("RGB"), cell)


def _mask_cell(values: np.ndarray, cell: int, threshold: float, colour, soft: bool) -> Image.Image:
  size = _fit(values.shape[0], values.shape[1], cell)
  if soft:
    resized = np.asarray(Image.fromarray(values.astype(np.float32)).resize(
        size, Image.BILINEAR))
    shown = resized >= threshold
    grey = np.clip(np.round(resized * 255.0), 0, 255).astype(np.uint8)
  else:
    shown = np.asarray(Image.fromarray(values.astype(np.uint8) * 255).resize(
        size, Image.NEAREST)) > 0
    grey = shown.astype(np.uint8) * 255
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  rgb[_edge(shown)] = colour
  return _in_cell(Image.fromarray(rgb), cell)


def _text(draw, xy, text: str, font, fill=(0, 0, 0), centred: bool = True):
  """Text vertically centred on xy[1], and centred on xy[0] or starting there. Positioned from
  its bounding box because bitmap fonts (Pillow without FreeType) take no anchors."""
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  x = xy[0] - (right - left) // 2 - left if centred else xy[0] - left
  draw.text((x, xy[1] - (bottom - top) // 2 - top), text, fill=fill, font=font)


def _no_mask_cell(cell: int, font) -> Image.Image:
  canvas = Image.new("RGB", (cell, cell), (160, 160, 160))
  _text(ImageDraw.Draw(canvas), (cell // 2, cell // 2), "no mask", font, (255, 255, 255))
  return canvas


def _row_pictures(row, index: int, cell: int, threshold: float, font):
  if not isinstance(row, dict):
    raise UserError(f"row {index} must be a dict with image, sketch, pred, target, label")
  missing = [k for k in ("image", "sketch", "pred") if k not in row]
  if missing:
    raise UserError(f"row {index} lacks {', '.join(missing)}")
  image = np.asarray(row["image"])
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise UserError(f"row {index}: image must be (H, W, 3), got shape {image.shape}")
  image = _unit_to_uint8(image)
  pred = np.asarray(row["pred"], np.float64)
  if pred.shape != image.shape[:2]:
    raise UserError(f"row {index}: pred has shape {pred.shape} but the image is {image.shape[:2]}")
  if not np.all(np.isfinite(pred)):
    raise UserError(f"row {index}: pred has non-finite values")
  target = row.get("target")
  label = str(row.get("label", ""))
  cells = [_photo_cell(image, cell), _sketch_cell(row["sketch"], cell, index),
           _mask_cell(pred, cell, threshold, _PRED_CONTOUR, soft=True)]
  if target is None:
    cells.append(_no_mask_cell(cell, font))
    label = f"{label}  (no mask)".strip()
  else:
    target = np.asarray(target)
    if target.shape != pred.shape:
      raise UserError(f"row {index}: target has shape {target.shape} but pred has {pred.shape}")
    target = target.astype(bool)
    cells.append(_mask_cell(target, cell, threshold, _TRUE_CONTOUR, soft=False))
    label = f"{label}  IoU {iou(pred >= threshold, target):.2f}".strip()
  return cells, label


def render_grid(rows: Sequence[dict], path, cell: int = 96, threshold: float = 0.5,
                max_rows: int = 16) -> str:
  """Write a PNG with one row per example: photo | sketch | prediction | truth.

  rows: dicts with `image` (H, W, 3) uint8, `sketch` (R, R) or (Q, R, R) ink (uint8 255 = ink,
  or floats with 1 = ink; several sketches are overlaid), `pred` (H, W) floats in [0, 1],
  `target` (H, W) bool or None, `label` (e.g. the granularity). The prediction is drawn as
  grey levels with the contour of `pred >= threshold` in red; the truth white on black with its
  contour in green. Each row's caption is its label and IoU at `threshold`. Only the first
  `max_rows` rows are drawn. The file appears atomically. Returns the path.
  """
  rows = list(rows)
  if not rows:
    raise UserError("render_grid needs at least one row")
  if int(cell) < 8:
    raise UserError(f"cell must be at least 8 pixels, got {cell}")
  if not 0.0 < float(threshold) <= 1.0:
    raise UserError(f"threshold must be in (0, 1], got {threshold}")
  if int(max_rows) < 1:
    raise UserError(f"max_rows must be at least 1, got {max_rows}")
  cell, threshold = int(cell), float(threshold)
  rows = rows[:int(max_rows)]
  font = ImageFont.load_default()
  sheet = Image.new("RGB", _grid_size(len(rows), cell), _BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  titles = dict(zip(_COLUMNS, _COLUMNS))
  titles["prediction"] = f"pred (t={threshold:g})"
  for j, name in enumerate(_COLUMNS):
    x = _GAP + j * (cell + _GAP)
    _text(draw, (x + cell // 2, _TITLE_H // 2), titles[name], font)
  for i, row in enumerate(rows):
    cells, label = _row_pictures(row, i, cell, threshold, font)
    top = _TITLE_H + i * (_LABEL_H + cell + _GAP)
    _text(draw, (_GAP, top + _LABEL_H // 2), label, font, centred=False)
    for j, picture in enumerate(cells):
      sheet.paste(picture, (_GAP + j * (cell + _GAP), top + _LABEL_H))

  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    # open(..., "xb") honours the umask, unlike mkstemp's private 0600 files.
    with open(temporary, "xb") as f:
      sheet.save(f, format="PNG")
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path
