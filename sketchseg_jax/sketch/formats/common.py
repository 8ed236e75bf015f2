"""What every reader shares: size caps, error wording, checked file access, exact number text."""

from __future__ import annotations

from typing import Any, NoReturn, Optional

import numpy as np

from sketchseg_jax.sketch.types import Sketch, SketchFormatError

# Caps that keep a hostile or broken file from eating memory or time. Real files are far
# smaller: a Sketchy or TU-Berlin SVG is tens of KB, a QuickDraw drawing a few hundred points.
MAX_POINTS = 1_000_000          # points in one sketch
MAX_SVG_BYTES = 16 << 20        # one SVG file
MAX_SVG_ELEMENTS = 200_000      # elements in one SVG file
MAX_SVG_DEPTH = 256             # element nesting
MAX_PATH_COMMANDS = 1_000_000   # path commands (explicit or implied) in one SVG file
MAX_LINE_BYTES = 16 << 20       # one ndjson line (one drawing)
MAX_NPZ_MEMBER_BYTES = 512 << 20  # one uncompressed .npy inside an .npz (a whole split)
MAX_IMAGE_PIXELS = 16 << 20     # one raster image (4096 x 4096)


def fail(path: str, problem: str) -> NoReturn:
  raise SketchFormatError(f"{path}: {problem}")


def describe(exc: BaseException) -> str:
  """An exception as short text for a message; MemoryError has no text of its own."""
  text = str(exc).strip()
  return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def size_text(n: int) -> str:
  return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def open_binary(path: str):
  """The file opened for reading; a missing, unreadable or non-file path is a SketchFormatError."""
  try:
    return open(path, "rb")
  except FileNotFoundError:
    fail(path, "file not found")
  except IsADirectoryError:
    fail(path, "is a directory, not a sketch file")
  except OSError as e:
    fail(path, f"cannot open: {e.strerror or describe(e)}")


def read_capped(path: str, cap: int, what: str) -> bytes:
  with open_binary(path) as f:
    try:
      data = f.read(cap + 1)
    except OSError as e:
      fail(path, f"cannot read: {e.strerror or describe(e)}")
  if len(data) > cap:
    fail(path, f"{what} larger than {size_text(cap)}; refusing to read it")
  return data


def pick_index(path: str, index: Any, count: int, holder: str = "the file") -> int:
  """index as a position in [0, count), Python-style negatives allowed."""
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    fail(path, f"index must be an integer, got {index!r}")
  index = int(index)
  if not -count <= index < count:
    index_error(path, index, count, holder)
  return index % count


def index_error(path: str, index: int, count: int, holder: str = "the file") -> NoReturn:
  if count == 0:
    fail(path, f"{holder} holds no drawings (empty drawing)")
  plural = "" if count == 1 else "s"
  fail(path, f"index {index} out of range: {holder} holds {count} drawing{plural}")


def no_split(path: str, split: Optional[str]) -> None:
  if split is not None:
    fail(path, f"split={split!r} applies only to sketch-rnn .npz files")


def make_sketch(path: str, strokes, canvas_size, **extras) -> Sketch:
  """Sketch(...) with its own complaints (non-finite values, bad shapes) prefixed by the path."""
  if not strokes:
    fail(path, "empty drawing: no strokes")
  points = sum(len(s) for s in strokes)
  if points > MAX_POINTS:
    fail(path, f"{points} points in one sketch; more than the cap of {MAX_POINTS}")
  try:
    return Sketch(strokes, canvas_size, **extras)
  except SketchFormatError as e:
    fail(path, str(e))


def format_number(v: float) -> str:
  """Shortest text that reads back as exactly the same float32, via float64 parsing.

  numpy's float32 repr is the shortest text for the float32, but parsing it as a float64
  and then rounding to float32 can, very rarely, land one ulp away; the float64 repr of
  the float32 value never does, so that is the fallback.
  """
  v32 = np.float32(v)
  if v32 == np.rint(v32) and abs(v32) < 2 ** 24:
    return str(int(v32))
  text = str(v32)
  if np.float32(float(text)) != v32:
    text = repr(float(v32))
  return text
