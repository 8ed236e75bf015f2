"""sketch-rnn `.npz`: stroke-3 sketches under `train` / `valid` / `test`.

Each sketch is an (N, 3) array of (dx, dy, pen_lifted) rows, pen_lifted = 1 on the last point
of a stroke. Convention for the absolute start: the first row is the first point's offset from
the origin (0, 0), so points are the running sum of the rows.

The published files hold object arrays, which numpy stores as pickles written by Python 2.
They are read with a restricted unpickler that admits numpy arrays and dtypes and nothing
else, and that checks every array's size before numpy allocates it; never `allow_pickle=True`.
It is the pure-Python unpickler: the C one grows its memo table to whatever index a
LONG_BINPUT names, so a few bytes could take gigabytes; the Python one keeps a dict.
A plain numeric (N, 3) array under a split key is read as a one-sketch split.

split=None means `test` when present, else the only split the file holds.

Canvas: a `canvas_size` key ([width, height], written by `write`) when present, with points
kept where they are. Otherwise the canvas is the bounding box plus a margin on each side of
MARGIN_FRACTION of its longer side (at least one unit), and the strokes are shifted so the
bounding box starts at (margin, margin).

`write` stores one sketch under `test` as an object array, int16 when every coordinate is an
integer in int16 range (the published layout, exact), else float64 offsets (read back within
a float32 rounding, 2^-23, of the largest coordinate's magnitude). Times, pressures and labels
are not kept.
"""

from __future__ import annotations

import codecs
import io
import pickle
import struct
import tokenize
import zipfile
import zlib
from typing import Optional

import numpy as np
from numpy.lib import format as npy_format

try:  # numpy >= 2
  from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
  from numpy.core.multiarray import _reconstruct

from sketchseg_jax.sketch.formats import common
from sketchseg_jax.sketch.formats.common import fail
from sketchseg_jax.sketch.types import Sketch, SketchFormatError

CANVAS_KEY = "canvas_size"
MARGIN_FRACTION = 0.05
_MAX_HEADER = 10_000


class _Forbidden(Exception):
  pass


class _CheckedArray(np.ndarray):
  """What unpickled arrays are built as: checks the state's size before numpy allocates.

  numpy's own __setstate__ allocates shape-many elements before it looks at the data, so a
  tiny pickle could ask for terabytes; here the state must carry the data it claims.
  """

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise _Forbidden("an array state that is not (version, shape, dtype, fortran, data)")
    shape, dtype, data = state[-4], state[-3], state[-1]
    if (not isinstance(shape, tuple) or len(shape) > 32
        or not all(type(d) is int and d >= 0 for d in shape)
        or not isinstance(dtype, np.dtype) or dtype.shape != () or dtype.names is not None):
      raise _Forbidden("an array state with a bad shape or dtype")
    n = int(np.prod(shape, dtype=object))
    if dtype.hasobject:
      ok = (dtype.itemsize == _OBJECT_ITEMSIZE and isinstance(data, list) and len(data) == n)
    else:
      ok = isinstance(data, (bytes, str)) and len(data) == n * dtype.itemsize
    if not ok:
      raise _Forbidden(f"an array of shape {shape} whose data does not match it")
    super().__setstate__(state)


_OBJECT_ITEMSIZE = np.dtype(object).itemsize


class _NdarrayName:
  """Stands for numpy.ndarray in a pickle: a name to pass to _reconstruct and not a callable,
  since ndarray(shape) or ndarray.__new__ (REDUCE, NEWOBJ) would allocate any size asked."""


_NDARRAY = _NdarrayName()


def _checked_reconstruct(subtype, shape, typecode):
  # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') followed by its state.
  if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
    raise _Forbidden("an array constructor call other than numpy's own")
  return _reconstruct(_CheckedArray, (0,), b"b")


def _latin1_encode(text, encoding="utf-8", errors="strict"):
  # Protocol-2 pickles made by Python 3 spell bytes as _codecs.encode(text, 'latin1').
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
    raise _Forbidden("_codecs.encode other than text to latin1 bytes")
  return codecs.encode(text, "latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _NumpyOnlyUnpickler(pickle._Unpickler):  # pure Python: see the module docstring
  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _Forbidden(f"forbidden class {module}.{name}") from None

  def persistent_load(self, pid):
    raise _Forbidden("a persistent id")


def _unpickle(path: str, key: str, stream) -> object:
  try:
    return _NumpyOnlyUnpickler(stream, encoding="latin1").load()
  except _Forbidden as e:
    fail(path, f"split {key!r}: the pickle holds {e}; only numpy arrays are allowed")
  # The unpickler is an interpreter for the file's bytes: whatever it raises on a corrupt
  # stream (there is no fixed list) is a format error, reported as one.
  except Exception as e:  # noqa: BLE001
    fail(path, f"split {key!r}: corrupt pickled array ({common.describe(e)})")


def _read_member(path: str, zf: zipfile.ZipFile, key: str) -> np.ndarray:
  info = zf.getinfo(key + ".npy")
  cap = common.MAX_NPZ_MEMBER_BYTES
  if info.file_size > cap:
    fail(path, f"split {key!r} is {info.file_size} bytes uncompressed; over the cap of {cap}")
  with zf.open(info) as f:
    raw = f.read(cap + 1)  # the size in the directory may lie
  if len(raw) > cap:
    fail(path, f"split {key!r} is over the cap of {cap} bytes uncompressed")
  fp = io.BytesIO(raw)
  try:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
      shape, _, dtype = npy_format.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
    elif version == (2, 0):
      shape, _, dtype = npy_format.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
    else:
      shape = dtype = None
  # the header is a Python literal parsed by ast; damage surfaces as any of these
  except (ValueError, SyntaxError, tokenize.TokenError, TypeError, RecursionError,
          MemoryError) as e:
    fail(path, f"split {key!r}: corrupt .npy header ({common.describe(e)})")
  if dtype is None:
    fail(path, f"split {key!r}: unsupported .npy version {version}")
  if dtype.hasobject:
    if dtype != np.dtype(object):
      fail(path, f"split {key!r}: structured arrays with objects are not supported")
    arr = _unpickle(path, key, fp)
    if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.shape != shape:
      fail(path, f"split {key!r}: pickled data is not the object array its header announces")
    return arr
  fp.seek(0)
  return npy_format.read_array(fp, allow_pickle=False, max_header_size=_MAX_HEADER)


def _open_split(path: str, split: Optional[str]):
  """(key, array) of the asked split, and the stored canvas size or None."""
  with zipfile.ZipFile(path) as zf:
    keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
    data_keys = [k for k in keys if k != CANVAS_KEY]
    if split is None:
      if "test" in data_keys:
        key = "test"
      elif len(data_keys) == 1:
        key = data_keys[0]
      elif not data_keys:
        fail(path, "holds no arrays (empty drawing)")
      else:
        fail(path, f"holds splits {data_keys}; pass split= to pick one")
    elif not isinstance(split, str) or split not in data_keys:
      fail(path, f"no split {split!r}; the file holds {data_keys}")
    else:
      key = split
    arr = _read_member(path, zf, key)
    canvas = _read_member(path, zf, CANVAS_KEY) if CANVAS_KEY in keys else None
  return key, arr, canvas


def count(path: str, split: Optional[str] = None) -> int:
  """How many sketches the split holds."""
  key, arr, _ = _guarded(path, split)
  return len(_sketch_list(path, key, arr))


def _guarded(path: str, split: Optional[str]):
  with common.open_binary(path):  # file-not-found and friends, in one wording
    pass
  try:
    return _open_split(path, split)
  except SketchFormatError:
    raise
  except zipfile.BadZipFile as e:
    fail(path, f"not a valid .npz (zip) archive ({e})")
  except (OSError, EOFError, zlib.error, ValueError, KeyError, NotImplementedError,
          RuntimeError, OverflowError, MemoryError, struct.error) as e:
    # zip, numpy header and array reading report damage with all of these
    fail(path, f"corrupt .npz archive ({common.describe(e)})")


def _sketch_list(path: str, key: str, arr: np.ndarray):
  if arr.dtype == object and arr.ndim == 1:
    return arr
  if arr.dtype.kind in "iuf" and arr.ndim == 2:
    return [arr]
  fail(path, f"split {key!r}: expected an object array of (N, 3) stroke-3 arrays, "
             f"got {arr.dtype} {arr.shape}")


def read(path: str, index: int = 0, split: Optional[str] = None) -> Sketch:
  key, arr, canvas = _guarded(path, split)
  sketches = _sketch_list(path, key, arr)
  i = common.pick_index(path, index, len(sketches), holder=f"split {key!r}")
  return _to_sketch(path, f"split {key!r}, sketch {i}", sketches[i], canvas)


def read_all(path: str, split: Optional[str] = None) -> list:
  """Every sketch of a split, unpickling the file once (load(index=...) unpickles per call)."""
  key, arr, canvas = _guarded(path, split)
  return [_to_sketch(path, f"split {key!r}, sketch {i}", s3, canvas)
          for i, s3 in enumerate(_sketch_list(path, key, arr))]


def _to_sketch(path: str, where: str, s3, canvas) -> Sketch:
  if not isinstance(s3, np.ndarray):
    fail(path, f"{where}: expected an array, got {type(s3).__name__}")
  s3 = np.asarray(s3)
  if s3.dtype.kind not in "iuf" or s3.ndim != 2 or s3.shape[1] != 3:
    fail(path, f"{where}: expected an (N, 3) numeric stroke-3 array, got {s3.dtype} {s3.shape}")
  if s3.shape[0] == 0:
    fail(path, f"{where}: empty drawing")
  if s3.shape[0] > common.MAX_POINTS:
    fail(path, f"{where}: {s3.shape[0]} points; more than the cap of {common.MAX_POINTS}")
  rows = s3.astype(np.float64)
  if not np.all(np.isfinite(rows)):
    fail(path, f"{where}: non-finite coordinate")
  pen = rows[:, 2]
  if not np.all((pen == 0) | (pen == 1)):
    fail(path, f"{where}: pen_lifted must be 0 or 1")
  with np.errstate(over="ignore", invalid="ignore"):
    points = np.cumsum(rows[:, :2], axis=0)
    if canvas is None:
      points, size = _fit_with_margin(points)
    else:
      size = _canvas(path, canvas)
    if not np.all(np.isfinite(points.astype(np.float32))):
      fail(path, f"{where}: non-finite coordinate (offsets sum beyond float32)")
  ends = np.flatnonzero(pen[:-1]) + 1
  return common.make_sketch(path, np.split(points, ends), size)


def _canvas(path: str, canvas: np.ndarray):
  c = np.asarray(canvas)
  if c.dtype.kind not in "iuf" or c.shape != (2,):
    fail(path, f"{CANVAS_KEY} must be [width, height]")
  w, h = float(c[0]), float(c[1])
  if not (np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0):
    fail(path, f"{CANVAS_KEY} must be positive and finite, got {w}, {h}")
  return w, h


def _fit_with_margin(points: np.ndarray):
  lo, hi = points.min(axis=0), points.max(axis=0)
  extent = hi - lo
  margin = max(1.0, MARGIN_FRACTION * float(extent.max()))
  size = extent + 2 * margin
  return points - lo + margin, (float(size[0]), float(size[1]))


def to_stroke3(sketch: Sketch) -> np.ndarray:
  """(N, 3) rows (dx, dy, pen_lifted); int16 when exact, else float64."""
  points = np.concatenate(sketch.strokes, axis=0).astype(np.float64)
  rows = np.zeros((points.shape[0], 3), np.float64)
  rows[:, :2] = np.diff(points, axis=0, prepend=np.zeros((1, 2)))
  rows[np.cumsum([len(s) for s in sketch.strokes]) - 1, 2] = 1
  if np.all(rows == np.rint(rows)) and np.all(np.abs(rows) <= np.iinfo(np.int16).max):
    return rows.astype(np.int16)
  return rows


def write(sketch: Sketch, path: str) -> None:
  if not sketch.strokes:
    raise SketchFormatError(f"{path}: cannot write an empty sketch as stroke-3")
  test = np.empty(1, dtype=object)
  test[0] = to_stroke3(sketch)
  with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
    np.savez(f, test=test, **{CANVAS_KEY: np.array(sketch.canvas_size, np.float64)})
