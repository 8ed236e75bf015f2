"""Raster sketches (`.png`, `.jpg`): used as images directly, never vectorised.

`read` returns a float32 (H, W) array in [0, 1] with ink = 1: dark strokes on white paper
become 1 on 0. Transparent pixels count as paper (composited over white); 16-bit greyscale
is scaled from 0..65535; the EXIF orientation of photographed sketches is applied.

Images that are already ink-on-black (light strokes on a dark background, as some pipelines
save them) are detected with background="auto": a sketch covers a minority of its canvas, so
when the median pixel reads as ink the image is inverted. Pass background="white" or "black"
to say which it is instead.
"""

from __future__ import annotations

import struct

import numpy as np

from sketchseg_jax.sketch.formats import common
from sketchseg_jax.sketch.formats.common import fail
from sketchseg_jax.sketch.types import SketchFormatError

_FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _paper_luminance(im) -> np.ndarray:
  """Luminance in [0, 1] with transparency composited over white paper."""
  if im.mode in _SIXTEEN_BIT:
    return np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
  if im.mode in ("F",):
    raise ValueError(f"unsupported image mode {im.mode}")
  has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
  if not has_alpha:
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
  rgba = im.convert("RGBA")
  lum = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
  alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
  return lum * alpha + (1.0 - alpha)


def read(path: str, background: str = "auto") -> np.ndarray:
  from PIL import Image, ImageOps, UnidentifiedImageError  # heavy-ish; only raster needs it

  if background not in ("auto", "white", "black"):
    raise ValueError(f"background must be 'auto', 'white' or 'black', got {background!r}")
  with common.open_binary(path) as f:
    try:
      with Image.open(f, formats=_FORMATS) as im:
        if im.width * im.height > common.MAX_IMAGE_PIXELS:
          fail(path, f"image of {im.width}x{im.height} pixels is over the cap of "
                     f"{common.MAX_IMAGE_PIXELS}")
        im = ImageOps.exif_transpose(im)
        lum = _paper_luminance(im)
    except SketchFormatError:
      raise
    except UnidentifiedImageError:
      fail(path, "not a PNG or JPEG image")
    # Pillow reports damaged files with all of these, depending on the decoder and the damage.
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
            TypeError, ZeroDivisionError, MemoryError, Image.DecompressionBombError) as e:
      fail(path, f"corrupt or unsupported image ({common.describe(e)})")
  if lum.ndim != 2 or lum.size == 0:
    fail(path, f"expected a 2-D image, got shape {lum.shape}")
  ink = 1.0 - lum
  if background == "black" or (background == "auto" and np.median(ink) > 0.5):
    ink = 1.0 - ink
  return np.ascontiguousarray(ink, dtype=np.float32)


def check_image(image, where: str = "image") -> np.ndarray:
  """A sketch image as float32 (H, W) in [0, 1], ink = 1; anything else raises."""
  a = np.asarray(image)
  if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1 or a.dtype.kind not in "fiub":
    raise SketchFormatError(
        f"{where}: a raster sketch must be a numeric (H, W) array, got {a.dtype} {a.shape}")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
    raise SketchFormatError(f"{where}: a raster sketch must hold values in [0, 1]")
  return a


def write(image, path: str, fmt: str = "PNG") -> None:
  """Save an ink = 1 array as dark strokes on white paper."""
  from PIL import Image

  a = check_image(image, path)
  gray = np.rint((1.0 - a) * 255.0).astype(np.uint8)
  Image.fromarray(gray).save(path, format=fmt)
