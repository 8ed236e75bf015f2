"""Load and save sketches in the published formats, picking the reader by extension or content.

| format   | extensions              | what it holds                                        |
|----------|-------------------------|------------------------------------------------------|
| `ndjson` | .ndjson .jsonl .json    | QuickDraw drawings, simplified or raw, one per line   |
| `npz`    | .npz                    | sketch-rnn stroke-3 under train / valid / test       |
| `svg`    | .svg                    | Sketchy, TU-Berlin and other stroke SVGs             |
| `raster` | .png .jpg .jpeg         | an image of the sketch, used as is                   |

`load` gives a `Sketch` for the vector formats and, for raster files, a float32 (H, W) array
in [0, 1] with ink = 1. Every entry point that takes a sketch (rasterizer, augmentations,
predictor, CLI) accepts either of the two; `coerce` turns a path, a Sketch or an image array
into one of them. Each format's conventions (canvas size when the file has none, what a
round trip keeps) are in its module under `sketchseg_jax.sketch.formats`.

Anything wrong with a file raises `SketchFormatError` naming the file and the problem.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from sketchseg_jax.sketch.formats import common, ndjson, npz, raster, svg
from sketchseg_jax.sketch.formats.common import fail
from sketchseg_jax.sketch.types import Sketch, SketchFormatError

FORMATS = ("ndjson", "npz", "svg", "raster")

_NAMES = {
    "ndjson": "ndjson", "jsonl": "ndjson", "json": "ndjson", "quickdraw": "ndjson",
    "npz": "npz", "sketch-rnn": "npz", "sketchrnn": "npz", "stroke3": "npz",
    "svg": "svg",
    "raster": "raster", "png": "raster", "jpg": "raster", "jpeg": "raster", "image": "raster",
}
_EXTENSIONS = {
    ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".npz": "npz", ".svg": "svg",
    ".png": "raster", ".jpg": "raster", ".jpeg": "raster",
}
_SNIFF_BYTES = 512

SketchOrImage = Union[Sketch, np.ndarray]


def sniff(head: bytes) -> Optional[str]:
  """The format the first bytes of a file announce, or None."""
  if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
    return "raster"
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
    return "npz"
  text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
  text = text.lstrip()
  if text.startswith(b"<"):
    return "svg"
  if text.startswith(b"{"):
    return "ndjson"
  return None


def _path_text(path) -> str:
  if isinstance(path, bytes):
    return os.fsdecode(path)
  if not isinstance(path, (str, os.PathLike)):
    raise SketchFormatError(f"expected a file path, got {type(path).__name__}")
  return os.fspath(path)


def _named_format(path: str, format: str) -> str:
  key = str(format).lower().lstrip(".")
  if key not in _NAMES:
    fail(path, f"unknown format {format!r}; choose from {', '.join(sorted(_NAMES))}")
  return _NAMES[key]


def detect_format(path) -> str:
  """The format of a file: from its extension, else from its first bytes."""
  path = _path_text(path)
  ext = os.path.splitext(path)[1].lower()
  with common.open_binary(path) as f:  # also reports a missing file before anything else
    if ext in _EXTENSIONS:
      return _EXTENSIONS[ext]
    try:
      head = f.read(_SNIFF_BYTES)
    except OSError as e:
      fail(path, f"cannot read: {e.strerror or common.describe(e)}")
  fmt = sniff(head)
  if fmt is None:
    fail(path, "cannot tell the sketch format from the name or the content; pass format= "
               f"({', '.join(FORMATS)})")
  return fmt


def load(path, format: Optional[str] = None, index: int = 0,
         split: Optional[str] = None) -> SketchOrImage:
  """The sketch at `index` (and, for sketch-rnn files, in `split`) of a sketch file.

  format: one of FORMATS (or an alias such as "quickdraw", "sketch-rnn", "png"); by default
  from the extension, else from the content. split: sketch-rnn only; None means "test" when
  present, else the only split. Raster files hold one image and give a float32 (H, W) array.
  """
  path, fmt = _resolve(path, format)
  if fmt == "npz":
    return npz.read(path, index=index, split=split)
  common.no_split(path, split)
  if fmt == "ndjson":
    return ndjson.read(path, index=index)
  common.pick_index(path, index, 1)
  if fmt == "svg":
    return svg.read(path)
  return raster.read(path)


def _resolve(path, format: Optional[str]):
  path = _path_text(path)
  if format is None:
    return path, detect_format(path)
  fmt = _named_format(path, format)
  common.open_binary(path).close()  # a missing file is reported the same way for every format
  return path, fmt


def load_all(path, format: Optional[str] = None, split: Optional[str] = None):
  """Every drawing of a file in order (an iterator): QuickDraw lines are streamed, a
  sketch-rnn split is unpickled once, and svg and raster files give their one drawing."""
  path, fmt = _resolve(path, format)
  if fmt == "npz":
    return iter(npz.read_all(path, split=split))
  common.no_split(path, split)
  if fmt == "ndjson":
    return ndjson.read_all(path)
  return iter([load(path, fmt)])


def count(path, format: Optional[str] = None, split: Optional[str] = None) -> int:
  """How many drawings `load` can pick from with `index`."""
  path, fmt = _resolve(path, format)
  if fmt == "npz":
    return npz.count(path, split=split)
  common.no_split(path, split)
  return ndjson.count(path) if fmt == "ndjson" else 1


def save(sketch: SketchOrImage, path, format: Optional[str] = None) -> None:
  """Write a Sketch as ndjson, npz or svg, or an ink image as png or jpg.

  ndjson keeps everything exactly (canvas, times, pressures, labels); svg keeps strokes and
  canvas exactly; npz keeps strokes and canvas (exactly for integer coordinates).
  """
  path = _path_text(path)
  if format is not None:
    fmt, sub = _named_format(path, format), str(format).lower().lstrip(".")
  else:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
      fail(path, f"cannot tell the format from the name; pass format= ({', '.join(FORMATS)})")
    fmt, sub = _EXTENSIONS[ext], ext[1:]
  if not isinstance(sketch, Sketch):
    if fmt != "raster":
      fail(path, f"a raster sketch (array) can only be saved as png or jpg, not {fmt}")
  elif fmt == "raster":
    fail(path, "a Sketch is strokes: rasterize it first and save the image")
  try:
    if fmt == "raster":
      raster.write(sketch, path, "JPEG" if sub in ("jpg", "jpeg") else "PNG")
    else:
      {"ndjson": ndjson.write, "npz": npz.write, "svg": svg.write}[fmt](sketch, path)
  except OSError as e:
    fail(path, f"cannot write: {e.strerror or common.describe(e)}")


def coerce(value, index: int = 0, split: Optional[str] = None) -> SketchOrImage:
  """A Sketch or ink image from a Sketch, an (H, W) array in [0, 1] or a sketch file path."""
  if isinstance(value, Sketch):
    return value
  if isinstance(value, (str, bytes, os.PathLike)):
    return load(value, index=index, split=split)
  if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
    return raster.check_image(value)
  raise SketchFormatError(
      f"expected a Sketch, an (H, W) ink image or a sketch file path, got {type(value).__name__}")
