"""Pictures of a segmentation a person can judge at a glance, and atomic PNG writing.

`overlay` tints the mask over the photo, outlines it, and puts the sketch(es) in a corner
as thumbnails (black ink on white paper, framed), in the corner the mask covers least.
numpy and PIL only: no JAX here.
"""

from __future__ import annotations

import os
import uuid
import numpy as np

from sketchseg_jax.errors import UserError

TINT = np.array([30, 144, 255], np.float32)   # the mask's fill, blended over the photo
TINT_ALPHA = 0.5
CONTOUR = np.array([255, 220, 0], np.uint8)   # the mask's outline
FRAME = (60, 60, 60)


def _as_mask(mask, threshold: float) -> tuple:
  """(hard bool mask, soft float mask or None)."""
  m = np.asarray(mask)
  if m.ndim != 2:
    raise UserError(f"a mask must be (H, W), got shape {m.shape}")
  if m.dtype == np.bool_:
    return m, None
  m = m.astype(np.float32)
  return m >= threshold, m


def _as_image(image) -> np.ndarray:
  a = np.asarray(image)
  if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
    raise UserError(f"overlay needs an (H, W, 3) uint8 photo, got {a.dtype} {a.shape}")
  return a


def _shift_min(m: np.ndarray) -> np.ndarray:
  """4-neighbour erosion with the edge replicated (the photo's border is not an edge)."""
  p = np.pad(m, 1, mode="edge")
  return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(m: np.ndarray, steps: int) -> np.ndarray:
  for _ in range(steps):
    p = np.pad(m, 1)
    m = m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
  return m


def contour(hard: np.ndarray, thickness: int = 1) -> np.ndarray:
  """Bool (H, W) pixels on the mask's boundary, `thickness` pixels wide."""
  edge = hard & ~_shift_min(hard)
  return _dilate(edge, max(0, int(thickness) - 1))


def _ink255(raster) -> np.ndarray:
  """A raster (uint8 ink = 255, or float / bool ink = 1) -> uint8 ink = 255."""
  r = np.asarray(raster)
  if r.dtype == np.uint8:
    return r
  return np.round(np.clip(np.nan_to_num(r.astype(np.float32)), 0, 1) * 255).astype(np.uint8)


def _sketch_list(sketch_raster) -> list:
  if sketch_raster is None:
    return []
  if isinstance(sketch_raster, (list, tuple)):
    out = [np.asarray(s) for s in sketch_raster]
  else:
    a = np.asarray(sketch_raster)
    out = list(a) if a.ndim == 3 else [a]
  for s in out:
    if s.ndim != 2:
      raise UserError(f"a sketch raster must be (R, R) or (Q, R, R), got shape {s.shape}")
  return out


def thumbnail(raster, side: int) -> np.ndarray:
  """(side, side, 3) uint8: the sketch black on white with a frame, aspect kept."""
  from PIL import Image
  ink = _ink255(raster)
  h, w = ink.shape
  scale = (side - 4) / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  paper = Image.fromarray(255 - ink).resize(size, Image.BILINEAR)
  cell = Image.new("L", (side, side), 255)
  cell.paste(paper, ((side - size[0]) // 2, (side - size[1]) // 2))
  out = np.repeat(np.asarray(cell)[:, :, None], 3, axis=2).copy()
  out[:2, :] = out[-2:, :] = out[:, :2] = out[:, -2:] = FRAME
  return out


def _upscaled(image, hard, soft, min_size):
  from PIL import Image
  h, w = hard.shape
  scale = min(min_size / min(h, w), 4096 / max(h, w))  # a thin strip stays a sane size
  if scale <= 1:
    return image, hard, soft
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
  if soft is not None:
    soft = np.ascontiguousarray(soft, np.float32)
    soft = np.asarray(Image.fromarray(soft).resize(size, Image.BILINEAR))
    return image, None, soft
  hard = np.asarray(Image.fromarray(hard).resize(size, Image.NEAREST))
  return image, hard, None


def overlay(image, mask, sketch_raster=None, threshold: float = 0.5,
            min_size: int = 0) -> np.ndarray:
  """(H, W, 3) uint8: `mask` (float probabilities, thresholded at `threshold`, or bool) tinted
  blue over `image` with a yellow outline, and each sketch of `sketch_raster` ((R, R) or
  (Q, R, R); uint8 ink = 255 or float ink = 1) as a framed thumbnail in the corner the mask
  covers least. min_size: photos smaller than this on their short side are drawn scaled up
  to it (the result is then larger than the photo; the CLI asks for 256)."""
  image = _as_image(image)
  if not 0.0 < float(threshold) < 1.0:
    raise UserError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
  hard, soft = _as_mask(mask, float(threshold))
  if hard.shape != image.shape[:2]:
    raise UserError(f"mask {hard.shape} and photo {image.shape[:2]} differ in size")
  if min_size:
    image, hard, soft = _upscaled(image, hard, soft, int(min_size))
    if hard is None:
      hard = soft >= float(threshold)
  h, w = hard.shape
  out = image.astype(np.float32)
  out[hard] = (1.0 - TINT_ALPHA) * out[hard] + TINT_ALPHA * TINT
  out = np.round(out).astype(np.uint8)
  out[contour(hard, max(1, round(min(h, w) / 160)))] = CONTOUR

  sketches = _sketch_list(sketch_raster)
  if sketches:
    margin = max(2, round(min(h, w) / 64))
    gap = margin
    n = len(sketches)
    side = min(max(24, round(0.22 * min(h, w))), 192)
    side = min(side, (w - 2 * margin - (n - 1) * gap) // n, h - 2 * margin)
    if side >= 8:
      strip_w, strip_h = n * side + (n - 1) * gap, side
      corners = [(margin, margin), (w - margin - strip_w, margin),
                 (margin, h - margin - strip_h), (w - margin - strip_w, h - margin - strip_h)]
      x0, y0 = min(corners, key=lambda c: hard[c[1]:c[1] + strip_h, c[0]:c[0] + strip_w].sum())
      for i, s in enumerate(sketches):
        x = x0 + i * (side + gap)
        out[y0:y0 + side, x:x + side] = thumbnail(s, side)
  return out


def save_png(array, path) -> str:
  """Write an (H, W) or (H, W, 3) uint8 array (bool: 0/255) as a PNG; the file appears
  atomically (a temporary beside it, then a rename). Returns the path."""
  from PIL import Image
  a = np.asarray(array)
  if a.dtype == np.bool_:
    a = a.astype(np.uint8) * 255
  if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
    raise UserError(f"save_png takes (H, W) or (H, W, 3|4) uint8 or bool, got {a.dtype} "
                    f"{a.shape}")
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f"{path}: folder {folder} does not exist")
  temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    with open(temporary, "xb") as f:
      Image.fromarray(a).save(f, format="PNG")
    os.replace(temporary, path)
  except OSError as e:
    raise UserError(f"{path}: cannot write: {e.strerror or e}") from None
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path
