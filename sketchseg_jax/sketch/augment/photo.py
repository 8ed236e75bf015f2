"""Photo-level augmentations: crop that keeps the object, zoom out, horizontal flip, colour
jitter.

Geometric ones move masks and target with the photo, and on aligned pairs move the sketch
(and queries and region) with it, so the canvas still maps onto the photo by plain scaling.
A sample without a photo passes through crop and colour jitter unchanged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment.sample import (
    as_rng, canvas_to_photo_scale, channel_means, draw, fill_colour, get_sketch, image_hw,
    nearest_resample, transform_points)


def _sketches(sample):
  return [get_sketch(sample)] + list(sample.get("queries") or [])


def _move_sketches(out, sample, fn):
  """Maps the sketch and any queries with fn(points) -> points, canvas unchanged."""
  out["sketch"] = transform_points(get_sketch(sample), fn)
  if sample.get("queries"):
    out["queries"] = [transform_points(q, fn) for q in sample["queries"]]


def _keep_box(sample, hw, centre):
  """Pixel box (x0, y0, x1, y1) a crop must contain: the target's box and, on aligned pairs,
  the sketch's; when neither is known, the central `centre` share of each side."""
  h, w = hw
  boxes = []
  target = sample.get("target")
  if target is not None and np.any(target):
    rows, cols = np.flatnonzero(np.any(target, axis=1)), np.flatnonzero(np.any(target, axis=0))
    boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
  if sample.get("aligned"):
    sx, sy = canvas_to_photo_scale(get_sketch(sample), hw)
    for s in _sketches(sample):
      if s.num_strokes:
        x0, y0, x1, y1 = s.bounds()
        boxes.append((x0 * sx, y0 * sy, x1 * sx, y1 * sy))
  if not boxes:
    m = (1.0 - centre) / 2.0
    boxes.append((w * m, h * m, w * (1 - m), h * (1 - m)))
  b = np.array(boxes, np.float64)
  x0, y0 = np.floor(b[:, :2].min(axis=0))
  x1, y1 = np.ceil(b[:, 2:].max(axis=0))
  return (int(np.clip(x0, 0, w - 1)), int(np.clip(y0, 0, h - 1)),
          int(np.clip(x1, 1, w)), int(np.clip(y1, 1, h)))


def crop(sample: dict, rng, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), centre: float = 0.5) -> dict:
  """A random crop resized back to the photo's size that still contains the object.

  The crop takes a `scale` share of the photo's area (number or range) at a width/height
  ratio drawn log-uniformly from `ratio`, grown where needed to contain the object's box
  (see _keep_box; training never has a target, so there the box comes from the aligned
  sketch or the photo's centre). Masks and target are resampled nearest-neighbour; on aligned
  pairs the sketch, queries and region are mapped into the cropped frame.
  """
  rng = as_rng(rng)
  hw = image_hw(sample)
  if hw is None:
    return dict(sample)
  h, w = hw
  kx0, ky0, kx1, ky1 = _keep_box(sample, hw, centre)
  area = draw(rng, scale, "crop scale") * w * h
  lo, hi = (float(ratio), float(ratio)) if np.isscalar(ratio) else (float(v) for v in ratio)
  if not 0 < lo <= hi:
    raise UserError(f"crop ratio must be positive with low <= high, got {ratio!r}")
  r = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
  cw_px = int(np.clip(round(np.sqrt(area * r)), kx1 - kx0, w))
  ch_px = int(np.clip(round(np.sqrt(area / r)), ky1 - ky0, h))
  x0 = int(rng.integers(max(0, kx1 - cw_px), min(kx0, w - cw_px) + 1))
  y0 = int(rng.integers(max(0, ky1 - ch_px), min(ky0, h - ch_px) + 1))
  box = (x0, y0, x0 + cw_px, y0 + ch_px)
  return crop_to_box(sample, box)


def crop_to_box(sample: dict, box) -> dict:
  """Crops the photo to the pixel box (x0, y0, x1, y1) and resizes it back to its size."""
  out = dict(sample)
  hw = image_hw(sample)
  if hw is None:
    return out
  h, w = hw
  x0, y0, x1, y1 = box
  if (x0, y0, x1, y1) == (0, 0, w, h):
    return out
  image = np.asarray(sample["image"])
  out["image"] = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR, box=box))
  for key in ("masks", "target"):
    if sample.get(key) is not None:
      out[key] = nearest_resample(np.asarray(sample[key]), box, hw)
  if sample.get("tiles") is not None:
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    mx = lambda v: int(np.clip(round((v - x0) * sx), 0, w))
    my = lambda v: int(np.clip(round((v - y0) * sy), 0, h))
    out["tiles"] = [(mx(a), my(b), mx(c), my(d)) for a, b, c, d in sample["tiles"]]
  if sample.get("aligned"):
    sk = get_sketch(sample)
    sx, sy = canvas_to_photo_scale(sk, hw)
    # canvas -> photo px -> cropped px -> canvas, per axis: x' = (x - x0/sx) * w / (x1 - x0)
    off = np.array([x0 / sx, y0 / sy])
    mul = np.array([w / (x1 - x0), h / (y1 - y0)])
    _move_sketches(out, sample, lambda p: (p - off) * mul)
    if sample.get("region") is not None:
      cw, ch = sk.canvas_size
      rx0, ry0, rx1, ry1 = sample["region"]
      a = np.clip((np.array([rx0, ry0]) - off) * mul, 0, [cw, ch])
      b = np.clip((np.array([rx1, ry1]) - off) * mul, 0, [cw, ch])
      out["region"] = (float(a[0]), float(a[1]), float(b[0]), float(b[1]))
  return out


def zoom_out(sample: dict, rng, scale=(0.3, 0.8), fill="mean") -> dict:
  """The photo shrunk to a `scale` share of each side (number or range) and placed at random
  on a canvas of its own size painted with `fill` ("mean": the photo's mean colour, a grey
  level or an RGB triple), as an object looks once a segmenter's mask has cut it out of a
  wide scene. Masks and target shrink with it (nearest-neighbour); on aligned pairs the
  sketch, queries and region move into the shrunk frame, object-centred sketches stay."""
  rng = as_rng(rng)
  hw = image_hw(sample)
  if hw is None:
    return dict(sample)
  h, w = hw
  s = draw(rng, scale, "zoom_out scale")
  if not 0.0 < s <= 1.0:
    raise UserError(f"zoom_out scale must lie in (0, 1], got {scale!r}")
  sw, sh = max(1, int(round(w * s))), max(1, int(round(h * s)))
  x0, y0 = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
  out = dict(sample)
  image = np.ascontiguousarray(sample["image"], dtype=np.uint8)
  canvas = np.empty_like(image)
  canvas[...] = np.round(fill_colour(fill, [image])).astype(np.uint8)
  shrunk = Image.fromarray(image).resize((sw, sh), Image.BILINEAR)
  canvas[y0:y0 + sh, x0:x0 + sw] = np.asarray(shrunk)
  out["image"] = canvas
  for key in ("masks", "target"):
    if sample.get(key) is not None:
      arr = np.asarray(sample[key])
      moved = np.zeros_like(arr)
      moved[..., y0:y0 + sh, x0:x0 + sw] = nearest_resample(arr, (0, 0, w, h), (sh, sw))
      out[key] = moved
  if sample.get("tiles") is not None:
    out["tiles"] = [(x0 + round(a * sw / w), y0 + round(b * sh / h), x0 + round(c * sw / w),
                     y0 + round(d * sh / h)) for a, b, c, d in sample["tiles"]]
  if sample.get("aligned"):
    sx, sy = canvas_to_photo_scale(get_sketch(sample), hw)
    mul, off = np.array([sw / w, sh / h]), np.array([x0 / sx, y0 / sy])
    _move_sketches(out, sample, lambda p: p * mul + off)
    if sample.get("region") is not None:
      rx0, ry0, rx1, ry1 = sample["region"]
      out["region"] = (rx0 * mul[0] + off[0], ry0 * mul[1] + off[1],
                       rx1 * mul[0] + off[0], ry1 * mul[1] + off[1])
  return out


def hflip(sample: dict, rng=None, flip_sketch: bool = True) -> dict:
  """Mirrors left-right the photo, masks and target, and the sketch, queries and region.

  On aligned pairs the sketch always flips with the photo. On object-centred pairs it flips
  when flip_sketch is True (default: a fine-grained pair keeps its pose in agreement) and
  stays as drawn otherwise. Deterministic; `rng` is accepted for a uniform signature.
  """
  out = dict(sample)
  for key in ("image", "masks", "target"):
    if sample.get(key) is not None:
      a = np.asarray(sample[key])
      axis = 1 if key == "image" else a.ndim - 1
      out[key] = np.ascontiguousarray(np.flip(a, axis=axis))
  if sample.get("tiles") is not None and sample.get("image") is not None:
    w = np.shape(sample["image"])[1]
    out["tiles"] = [(w - x1, y0, w - x0, y1) for x0, y0, x1, y1 in sample["tiles"]]
  if sample.get("aligned") or flip_sketch:
    cw = get_sketch(sample).canvas_size[0]
    _move_sketches(out, sample, lambda p: np.stack([cw - p[:, 0], p[:, 1]], axis=1))
    if sample.get("region") is not None:
      x0, y0, x1, y1 = sample["region"]
      out["region"] = (cw - x1, y0, cw - x0, y1)
  return out


# ITU-R BT.601 luma and the YIQ basis in which a hue shift is a rotation of (I, Q).
_LUMA = np.array([0.299, 0.587, 0.114])
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


def colour_jitter(sample: dict, rng, brightness=0.3, contrast=0.3, saturation=0.3,
                  hue=0.05) -> dict:
  """Brightness, contrast, saturation and hue jitter, in that order.

  As in torchvision, a number x means a factor drawn from [1 - x, 1 + x] (hue: a shift in
  [-x, x] turns of the colour wheel); a (low, high) pair gives the range itself.
  """
  rng = as_rng(rng)
  out = dict(sample)
  if sample.get("image") is None:
    return out
  b = _factor(rng, brightness, "brightness")
  c = _factor(rng, contrast, "contrast")
  s = _factor(rng, saturation, "saturation")
  hshift = draw(rng, (-hue, hue) if np.isscalar(hue) else hue, "colour_jitter hue")
  image = np.asarray(sample["image"])
  # All four steps are affine in RGB, so they fold into one 3x3 matrix and an offset
  # (row vectors: out = x @ m + offset; no clipping between steps), which PIL applies in C
  # with rounding and clipping to uint8.
  luma_mean = float(channel_means(image) @ _LUMA)
  sat = s * np.eye(3) + (1.0 - s) * _LUMA[:, None] * np.ones((1, 3))
  th = 2 * np.pi * hshift
  rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
  hue_m = (_FROM_YIQ @ rot @ _TO_YIQ).T if hshift else np.eye(3)
  m = b * c * sat @ hue_m
  offset = np.full(3, (1.0 - c) * b * luma_mean) @ sat @ hue_m
  matrix = tuple(float(v) for k in range(3) for v in (*m[:, k], offset[k]))
  rgb = np.ascontiguousarray(image, dtype=np.uint8)
  out["image"] = np.asarray(Image.fromarray(rgb).convert("RGB", matrix))
  return out


def _factor(rng, spec, name):
  if np.isscalar(spec):
    if spec < 0:
      raise UserError(f"colour_jitter {name} must be >= 0, got {spec!r}")
    spec = (max(0.0, 1.0 - spec), 1.0 + spec)
  return draw(rng, spec, f"colour_jitter {name}")
