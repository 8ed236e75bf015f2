"""Rasterize sketches into float ink maps (ink = 1, paper = 0), fast enough to run per sample.

Strokes are drawn as anti-aliased capsules, round joins and caps, combined with max so crossings
never exceed full ink; the compiled loop lives in _raster_kernels. Raster images (a PNG sketch)
go through the same entry point and are only resized, so callers need not care which they hold.

Output pixel (i, j) spans [j, j+1) x [i, i+1) in output coordinates; its centre is (j+0.5, i+0.5).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from sketchseg_jax.sketch.types import Sketch

Size = Union[int, Sequence[int]]

FIT_MODES = ("canvas", "fit")


def _parse_size(size: Size) -> Tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    w = h = int(size)
  else:
    if len(size) != 2:
      raise ValueError(f"size must be an int or (width, height), got {size!r}")
    w, h = int(size[0]), int(size[1])
  if w <= 0 or h <= 0:
    raise ValueError(f"size must be positive, got {size!r}")
  return w, h


def _fit_box(extent_w: float, extent_h: float, out_w: int, out_h: int,
             margin: float) -> Tuple[float, float, float]:
  """Uniform scale and offsets that fit an extent inside the output less a margin, centred."""
  avail_w = out_w * (1.0 - 2.0 * margin)
  avail_h = out_h * (1.0 - 2.0 * margin)
  scales = []
  if extent_w > 0:
    scales.append(avail_w / extent_w)
  if extent_h > 0:
    scales.append(avail_h / extent_h)
  scale = min(scales) if scales else 1.0
  return scale, (out_w - extent_w * scale) / 2.0, (out_h - extent_h * scale) / 2.0


def placement(sketch: Sketch, size: Size, fit: str = "canvas",
              margin: float = 0.05) -> Tuple[float, float, float]:
  """(scale, offset_x, offset_y) such that canvas point p lands at p * scale + offset.

  "canvas": the sketch's whole canvas is scaled uniformly to fit the output and centred, so a
  non-square canvas keeps its aspect and leaves empty bands on two sides; `margin` is unused.
  "fit": the strokes' bounding box is scaled uniformly to fill the output less `margin` (a
  fraction of the output size on every side; ink of wide strokes may reach into it) and centred.
  An empty sketch in "fit" mode gets the identity.
  """
  out_w, out_h = _parse_size(size)
  if fit == "canvas":
    cw, ch = sketch.canvas_size
    return _fit_box(cw, ch, out_w, out_h, 0.0)
  if fit == "fit":
    if not 0.0 <= margin < 0.5:
      raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
    if sketch.num_strokes == 0:
      return 1.0, 0.0, 0.0
    x0, y0, x1, y1 = sketch.bounds()
    scale, ox, oy = _fit_box(x1 - x0, y1 - y0, out_w, out_h, margin)
    return scale, ox - x0 * scale, oy - y0 * scale
  raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")


def rasterize(sketch: Union[Sketch, np.ndarray], size: Size, width: float = 2.0,
              antialias: bool = True, fit: str = "canvas", margin: float = 0.05,
              widths: Optional[Sequence[float]] = None) -> np.ndarray:
  """Draw `sketch` into a float32 (height, width) array in [0, 1], ink = 1.

  size: an int (square) or (width, height) in pixels. width: stroke width in output pixels
  (not scaled with the sketch); widths: optional per-stroke widths overriding it (width jitter).
  antialias=False gives hard 0/1 pixels whose centres lie within the stroke (at least half a
  pixel wide so thin lines stay connected). fit: "canvas" or "fit", see `placement`.
  A raster array is resized instead (see `resize_raster`); width/antialias/widths then do not
  apply.
  """
  if isinstance(sketch, np.ndarray):
    return resize_raster(sketch, size, fit=fit, margin=margin)
  if not isinstance(sketch, Sketch):
    raise TypeError(f"rasterize takes a Sketch or a numpy array, got {type(sketch).__name__}")
  out_w, out_h = _parse_size(size)
  scale, ox, oy = placement(sketch, (out_w, out_h), fit=fit, margin=margin)
  img = np.zeros((out_h, out_w), np.float32)
  n = sketch.num_strokes
  if n == 0:
    return img
  if widths is None:
    radii = np.full(n, 0.5 * float(width), np.float32)
  else:
    radii = 0.5 * np.asarray(widths, np.float32).reshape(-1)
    if radii.shape[0] != n:
      raise ValueError(f"{radii.shape[0]} widths for {n} strokes")
  if not np.all(np.isfinite(radii)) or np.any(radii < 0):
    raise ValueError("stroke widths must be finite and non-negative")
  if not antialias:
    radii = np.where(radii > 0, np.maximum(radii, 0.5), 0.0).astype(np.float32)
  pts = np.concatenate(sketch.strokes, axis=0)
  starts = np.zeros(n + 1, np.int64)
  np.cumsum([s.shape[0] for s in sketch.strokes], out=starts[1:])
  from sketchseg_jax.sketch import _raster_kernels  # numba import deferred to first use
  _raster_kernels.draw_polylines(img, pts, starts, radii, float(scale), float(ox), float(oy),
                                 bool(antialias))
  return img


def _ink_from_array(image: np.ndarray) -> np.ndarray:
  """Float ink map from an image array.

  Integer images (uint8/uint16, as a PNG or JPEG reads) are taken as dark ink on light paper:
  grey or RGB, with an alpha channel composited over white. Float and bool arrays are taken as
  ink maps already (ink = 1), like rasterize's own output, and must be 2-D.
  """
  a = np.asarray(image)
  if a.ndim == 3 and a.shape[2] == 1:
    a = a[:, :, 0]
  if a.dtype == np.bool_:
    return a.astype(np.float32)
  if np.issubdtype(a.dtype, np.floating):
    if a.ndim != 2:
      raise ValueError(f"a float raster must be a 2-D ink map, got shape {a.shape}")
    return np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0), 0.0, 1.0)
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"unsupported raster dtype {a.dtype}")
  top = float(np.iinfo(a.dtype).max)
  x = a.astype(np.float32) / top
  if x.ndim == 3 and x.shape[2] in (2, 4):
    alpha = x[:, :, -1:]
    x = x[:, :, :-1] * alpha + (1.0 - alpha)
  if x.ndim == 3 and x.shape[2] == 3:
    x = x @ np.array([0.299, 0.587, 0.114], np.float32)
  elif x.ndim == 3 and x.shape[2] == 1:
    x = x[:, :, 0]
  if x.ndim != 2:
    raise ValueError(f"unsupported raster shape {a.shape}")
  return np.clip(1.0 - x, 0.0, 1.0)


def resize_raster(image: np.ndarray, size: Size, fit: str = "canvas",
                  margin: float = 0.05) -> np.ndarray:
  """Resize a raster sketch to `size` as an ink map, float32 (height, width) in [0, 1].

  "canvas": the whole image scaled uniformly to fit and centred (as rasterize does with a
  canvas). "fit": cropped to its inked pixels, then scaled to fill the output less `margin`.
  Shrinking averages areas (box filter), so line weight turns into grey rather than breaking up.
  """
  from PIL import Image
  out_w, out_h = _parse_size(size)
  ink = _ink_from_array(image)
  out = np.zeros((out_h, out_w), np.float32)
  if fit == "fit":
    if not 0.0 <= margin < 0.5:
      raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
    rows = np.flatnonzero(ink.max(axis=1) > 0.5 / 255)
    cols = np.flatnonzero(ink.max(axis=0) > 0.5 / 255)
    if rows.size == 0:
      return out
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  elif fit == "canvas":
    margin = 0.0
  else:
    raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
  in_h, in_w = ink.shape
  if in_h == 0 or in_w == 0:
    return out
  scale, _, _ = _fit_box(in_w, in_h, out_w, out_h, margin)
  new_w = min(out_w, max(1, int(round(in_w * scale))))
  new_h = min(out_h, max(1, int(round(in_h * scale))))
  if (new_w, new_h) != (in_w, in_h):
    shrink = new_w < in_w or new_h < in_h
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    ink = np.asarray(Image.fromarray(np.ascontiguousarray(ink)).resize((new_w, new_h), method))
  x0 = (out_w - new_w) // 2
  y0 = (out_h - new_h) // 2
  out[y0:y0 + new_h, x0:x0 + new_w] = np.clip(ink, 0.0, 1.0)
  return out
