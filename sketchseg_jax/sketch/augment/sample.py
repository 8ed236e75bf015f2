"""Helpers every augmentation shares: seeds, copying samples, per-stroke extras, the
canvas <-> photo mapping of aligned pairs, fills, and label-to-mask lookup.

See the package docstring (sketchseg_jax/sketch/augment/__init__.py) for the sample convention.
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.types import Sketch


def as_rng(rng_or_seed) -> np.random.Generator:
  """A Generator from a Generator (used as is), an int, a tuple of ints or a SeedSequence.

  None is refused: an augmentation without an explicit seed would not be reproducible.
  """
  if isinstance(rng_or_seed, np.random.Generator):
    return rng_or_seed
  if rng_or_seed is None:
    raise UserError("an augmentation needs a seed or a numpy Generator, got None")
  if isinstance(rng_or_seed, np.random.SeedSequence):
    return np.random.default_rng(rng_or_seed)
  if isinstance(rng_or_seed, (numbers.Integral, tuple, list)):
    return np.random.default_rng(np.random.SeedSequence(_entropy(rng_or_seed)))
  raise UserError(f"a seed must be an int, a tuple of ints, a SeedSequence or a Generator, "
                  f"got {type(rng_or_seed).__name__}")


def _entropy(seed):
  vals = [seed] if isinstance(seed, numbers.Integral) else list(seed)
  if not vals or not all(isinstance(v, numbers.Integral) and v >= 0 for v in vals):
    raise UserError(f"a seed must be a non-negative int or a tuple of them, got {seed!r}")
  return [int(v) for v in vals]


def draw(rng: np.random.Generator, spec, name: str = "value") -> float:
  """A number: `spec` itself when a scalar, uniform in [lo, hi] when a pair."""
  if isinstance(spec, numbers.Real):
    return float(spec)
  try:
    lo, hi = (float(v) for v in spec)
  except (TypeError, ValueError):
    raise UserError(f"{name} must be a number or a (low, high) pair, got {spec!r}") from None
  if hi < lo:
    raise UserError(f"{name} range {spec!r} has high < low")
  return lo if hi == lo else float(rng.uniform(lo, hi))


def draw_int(rng: np.random.Generator, spec, name: str = "value") -> int:
  """An int: `spec` itself when a scalar, uniform in [lo, hi] (both included) when a pair."""
  if isinstance(spec, numbers.Integral):
    return int(spec)
  try:
    lo, hi = (int(v) for v in spec)
  except (TypeError, ValueError):
    raise UserError(f"{name} must be an int or a (low, high) pair of ints, got {spec!r}") from None
  if hi < lo:
    raise UserError(f"{name} range {spec!r} has high < low")
  return int(rng.integers(lo, hi + 1))


def get_sketch(sample: dict) -> Sketch:
  sketch = sample.get("sketch")
  if not isinstance(sketch, Sketch):
    raise UserError(f"a sample needs a Sketch under 'sketch', got {type(sketch).__name__}")
  return sketch


def image_hw(sample: dict) -> Optional[tuple]:
  """(H, W) of the sample's photo, or None when it has none."""
  image = sample.get("image")
  return None if image is None else tuple(np.shape(image)[:2])


def with_sketch(sample: dict, sketch: Sketch, source: Optional[Sequence[int]] = None) -> dict:
  """A copy of `sample` holding `sketch`; `source[i]` is the old stroke that new stroke i
  came from, so per-stroke extras (stroke_widths) follow their strokes."""
  out = dict(sample)
  out["sketch"] = sketch
  widths = sample.get("stroke_widths")
  if widths is not None and source is not None:
    out["stroke_widths"] = np.asarray(widths, np.float32)[np.asarray(source, np.int64)]
  return out


StrokeFn = Callable[[Sketch, Optional[np.ndarray], np.random.Generator], tuple]


def map_sketches(sample: dict, rng: np.random.Generator, fn: StrokeFn) -> dict:
  """Applies `fn(sketch, widths, rng) -> (sketch, widths)` to the sample's sketch and then,
  in order, to each of its separate query sketches (their widths live in query_stroke_widths)."""
  out = dict(sample)
  sketch, widths = fn(get_sketch(sample), sample.get("stroke_widths"), rng)
  out["sketch"] = sketch
  if widths is not None:
    out["stroke_widths"] = widths
  queries = sample.get("queries")
  if queries:
    qwidths = sample.get("query_stroke_widths") or [None] * len(queries)
    new_q, new_w = [], []
    for q, w in zip(queries, qwidths):
      q2, w2 = fn(q, w, rng)
      new_q.append(q2)
      new_w.append(w2)
    out["queries"] = new_q
    if any(w is not None for w in new_w):
      out["query_stroke_widths"] = new_w
  return out


def transform_points(sketch: Sketch, fn: Callable[[np.ndarray], np.ndarray],
                     canvas_size=None) -> Sketch:
  """The sketch with every stroke's points mapped by `fn` ((N, 2) -> (N, 2)), extras kept."""
  if not sketch.strokes:
    return sketch if canvas_size is None else sketch.replace(canvas_size=canvas_size)
  counts = [s.shape[0] for s in sketch.strokes]
  moved = fn(np.concatenate(sketch.strokes, axis=0).astype(np.float64))
  parts = np.split(moved.astype(np.float32), np.cumsum(counts)[:-1])
  return sketch.replace(strokes=tuple(parts),
                        canvas_size=sketch.canvas_size if canvas_size is None else canvas_size)


def canvas_to_photo_scale(sketch: Sketch, hw) -> tuple:
  """(sx, sy) with photo_px = canvas_xy * (sx, sy) for an aligned pair."""
  cw, ch = sketch.canvas_size
  return hw[1] / cw, hw[0] / ch


def region_pixel_mask(region, sketch: Sketch, hw) -> np.ndarray:
  """(H, W) bool: the photo pixels whose centres fall in the canvas-unit `region`."""
  sx, sy = canvas_to_photo_scale(sketch, hw)
  x0, y0, x1, y1 = region
  cols = (np.arange(hw[1]) + 0.5) / sx
  rows = (np.arange(hw[0]) + 0.5) / sy
  return (((rows >= y0) & (rows <= y1))[:, None]) & (((cols >= x0) & (cols <= x1))[None, :])


def fill_colour(fill, images: Sequence[np.ndarray]) -> np.ndarray:
  """(3,) float fill in 0-255: "mean" (mean colour of `images`), a grey level, or an RGB triple."""
  if isinstance(fill, str):
    if fill != "mean":
      raise UserError(f"fill must be 'mean', a number or an (r, g, b) triple, got {fill!r}")
    counts = [np.asarray(im).shape[0] * np.asarray(im).shape[1] for im in images]
    total = sum(channel_means(im) * n for im, n in zip(images, counts))
    return np.asarray(total, np.float64) / max(sum(counts), 1)
  arr = np.asarray(fill, np.float64).reshape(-1)
  if arr.size not in (1, 3) or not np.all(np.isfinite(arr)):
    raise UserError(f"fill must be 'mean', a number or an (r, g, b) triple, got {fill!r}")
  return np.broadcast_to(arr, (3,)).copy()


def channel_means(image) -> np.ndarray:
  """(3,) mean of each channel of an (H, W, 3) photo; exact (from histograms) for uint8,
  which numpy's strided per-channel sums are slow at."""
  image = np.asarray(image)
  if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size:
    hist = np.asarray(Image.fromarray(image).histogram(), np.float64).reshape(3, 256)
    return hist @ np.arange(256.0) / (image.shape[0] * image.shape[1])
  return np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0)


def label_mask(labels, masks, mask_info, hw) -> Optional[np.ndarray]:
  """Union of the masks that the stroke `labels` name, or None when they cannot say.

  A label with a part uses that part's mask, else (or when the part has no mask) the whole
  object's mask (mask_info part ""). None when there are no labels, no masks, or a label
  names an object that has no mask: a target that cannot be kept true is dropped, not guessed.
  """
  if labels is None or masks is None or mask_info is None:
    return None
  index = {(int(m["object_id"]), m.get("part", "")): k for k, m in enumerate(mask_info)}
  out = np.zeros(hw, bool)
  for lab in set(labels):
    if lab is None:
      return None
    k = index.get((lab.object_id, lab.part), index.get((lab.object_id, "")))
    if k is None:
      return None
    out |= np.asarray(masks[k], bool)
  return out


def object_mask(sample: dict) -> Optional[np.ndarray]:
  """What the sample's sketch depicts on its photo: its target, else the masks its labels name."""
  if sample.get("target") is not None:
    return np.asarray(sample["target"], bool)
  hw = image_hw(sample)
  if hw is None:
    return None
  return label_mask(get_sketch(sample).labels, sample.get("masks"), sample.get("mask_info"), hw)


def nearest_resample(arr: np.ndarray, box, out_hw) -> np.ndarray:
  """Nearest-neighbour resample of the last two axes of `arr` from pixel `box`
  (x0, y0, x1, y1) onto an out_hw grid (pixel centres mapped, as PIL does)."""
  x0, y0, x1, y1 = box
  oh, ow = out_hw
  rows = np.floor(y0 + (np.arange(oh) + 0.5) * ((y1 - y0) / oh)).astype(np.int64)
  cols = np.floor(x0 + (np.arange(ow) + 0.5) * ((x1 - x0) / ow)).astype(np.int64)
  rows = np.clip(rows, 0, arr.shape[-2] - 1)
  cols = np.clip(cols, 0, arr.shape[-1] - 1)
  return arr[..., rows[:, None], cols[None, :]]
