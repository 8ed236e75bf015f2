"""QuickDraw: sketch-only records from a folder of `<class>.ndjson` or sketch-rnn `<class>.npz`.

The category is the file name: `The Eiffel Tower.ndjson` -> "The Eiffel Tower"; a sketch-rnn
`airplane.full.npz` -> "airplane"; a name saved from the bucket's web page as
`full%2Fsimplified%2Fcat.ndjson` -> "cat". Two files for one category raise (pass `format`).

ndjson (simplified or raw; the reader tells them apart): the index is built in one pass per
file that records the byte offset of each kept line and parses no JSON, so a class of
100,000 drawings costs a read of the file, not its decoding; with `max_per_class` the pass
stops as soon as the cap is reached. A line that is not one JSON object (a truncated download)
is a bad line. `recognized_only` keeps lines whose `"recognized"` field is true (lines without
the field are dropped too; both are counted). Split "train"/"test": a hash of the drawing's
`key_id` (the line number where it has none) with `test_fraction`.

npz (sketch-rnn stroke-3): the counts come from each split's .npy header, without unpickling.
Split "train"/"valid"/"test" is the file's own split, "all" is the three in that order;
`max_per_class` takes the first drawings. Reading a record loads its whole split (that is how
the format is stored), so each process keeps the last `cache_files` decoded splits; random
access over many classes is much faster from ndjson. These files carry no recognized flag.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import zipfile

import numpy as np
from numpy.lib import format as npy_format

from sketchseg_jax.data.sources import common
from sketchseg_jax.data.sources.common import BadFiles, Source, SourceError
from sketchseg_jax.sketch.formats import ndjson, npz
from sketchseg_jax.sketch.formats import common as format_common
from sketchseg_jax.sketch.types import SketchFormatError

QUICKDRAW_SPLITS = ("all", "train", "valid", "test")
_KINDS = {".ndjson": "ndjson", ".npz": "npz"}
_RECOGNIZED = re.compile(rb'"recognized"\s*:\s*(true|false)')
_KEY_ID = re.compile(rb'"key_id"\s*:\s*"?(\d+)')


def category_of(name: str) -> str:
  """The category a QuickDraw file name stands for (see the module docstring)."""
  stem = common.split_ext(name)[0]
  stem = re.split(r"%2[fF]", stem)[-1]
  return stem[:-len(".full")] if stem.endswith(".full") else stem


class QuickDraw(Source):
  """QuickDraw drawings, one record each; see the module docstring."""

  kind = "quickdraw"

  def __init__(self, root, format=None, split: str = "all", max_per_class=None,
               recognized_only: bool = False, test_fraction: float = 0.1, split_seed: int = 0,
               classes=None, heldout_classes=None, class_split: str = "all",
               skip_bad: bool = False, verify: bool = False, cache_files: int = 8):
    self.root = root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    common.require_dir(root, "QuickDraw folder")
    self.split = common.check_choice("split", split, QUICKDRAW_SPLITS)
    if format is not None:
      common.check_choice("format", format, ("ndjson", "npz"))
    test_fraction = common.check_fraction("test_fraction", test_fraction)
    cap = common.check_cap("max_per_class", max_per_class)
    self._cache_files = common.check_cap("cache_files", cache_files)

    files = {}
    for name in common.files_in(root):
      kind = _KINDS.get(common.split_ext(name)[1])
      if kind is None or (format is not None and kind != format):
        continue
      cat = category_of(name)
      if cat in files:
        raise SourceError(f"QuickDraw folder {root}: two files for category {cat!r} "
                          f"({files[cat][1]} and {name}); set format= or remove one")
      files[cat] = (kind, name)
    if not files:
      raise SourceError(f"QuickDraw folder {root} holds no .ndjson or .npz files"
                        + (f" of format {format!r}" if format else ""))
    self.categories = tuple(common.select_categories(
        sorted(files), root, classes, heldout_classes, class_split))
    kinds = {files[c][0] for c in self.categories}
    if "npz" in kinds and recognized_only:
      raise SourceError("recognized_only: sketch-rnn .npz files carry no recognized flag; "
                        "use the ndjson files or recognized_only=False")
    if "ndjson" in kinds and split == "valid":
      raise SourceError("split='valid' exists only in sketch-rnn .npz files; ndjson files "
                        "split into 'train' and 'test' by hash")

    bad = BadFiles()
    self._paths, self._kinds = [], []
    # one segment per run of records: (file index, npz split or "", offsets, line numbers)
    self._segments, counts = [], []
    self.num_unrecognized = 0
    for c, cat in enumerate(self.categories):
      kind, name = files[cat]
      path = os.path.join(root, name)
      self._paths.append(path)
      self._kinds.append(kind)
      if kind == "ndjson":
        offsets, lines, unrecognized = _index_ndjson(
            path, cat, split, test_fraction, split_seed, recognized_only, cap, verify, bad)
        self.num_unrecognized += unrecognized
        if len(offsets):
          self._segments.append((c, "", offsets, lines))
          counts.append(len(offsets))
      else:
        left = cap
        for key, n in _npz_segments(path, split, bad, verify):
          n = n if left is None else min(n, left)
          if n:
            self._segments.append((c, key, None, None))
            counts.append(n)
          if left is not None:
            left -= n
            if left == 0:
              break
    self._ends = np.cumsum(np.asarray(counts, np.int64)) if counts else np.zeros(0, np.int64)
    self._size = int(self._ends[-1]) if counts else 0
    self.num_skipped, self.skipped_examples = bad.settle("QuickDraw", root, skip_bad)
    self._facts_ = {"formats": sorted(kinds), "max_per_class": cap,
                    "recognized_only": bool(recognized_only),
                    "num_unrecognized_dropped": self.num_unrecognized,
                    "split_rule": _split_rule(split, kinds, test_fraction, split_seed)}
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()
    common.no_records(self, f"split={split!r}, recognized_only={recognized_only}")

  def __getstate__(self):
    state = super().__getstate__()
    state.pop("_cache")  # decoded splits stay in the process that read them
    state.pop("_lock")
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def _record(self, i: int) -> dict:
    s = int(np.searchsorted(self._ends, i, side="right"))
    local = i - (int(self._ends[s - 1]) if s else 0)
    c, key, offsets, lines = self._segments[s]
    path, cat = self._paths[c], self.categories[c]
    if key == "":
      line, lineno = _read_line(path, int(offsets[local]), int(lines[local]))
      sketch = ndjson.parse_line(path, line, lineno)
      m = _KEY_ID.search(line)
      sketch_id = f"{cat}/{m.group(1).decode()}" if m else f"{cat}/line{lineno}"
    else:
      sketch = _npz_sketch(path, key, local, self._split_array(path, key))
      sketch_id = f"{cat}/{key}/{local}"
    return {"sketch": sketch, "category": cat, "category_id": c, "sketch_id": sketch_id,
            "sketch_path": path}

  def _split_array(self, path: str, key: str):
    with self._lock:
      hit = self._cache.get((path, key))
      if hit is not None:
        self._cache.move_to_end((path, key))
        return hit
    value = _load_split(path, key)
    with self._lock:
      self._cache[(path, key)] = value
      while len(self._cache) > self._cache_files:
        self._cache.popitem(last=False)
    return value

  def _facts(self) -> dict:
    return dict(self._facts_)


def _split_rule(split, kinds, test_fraction, seed) -> str:
  rules = {"npz": "the .npz files' own splits",
           "ndjson": f"hash of key_id (test_fraction={test_fraction}, split_seed={seed})"}
  return "all" if split == "all" else "; ".join(f"{k}: {rules[k]}" for k in sorted(kinds))


def _index_ndjson(path, cat, split, test_fraction, seed, recognized_only, cap, verify, bad):
  """(offsets, line numbers, unrecognized count) of the lines this source keeps."""
  offsets, lines = [], []
  unrecognized = 0
  try:
    f = open(path, "rb")
  except OSError as e:
    bad.add(path, f"cannot open ({common.describe_exception(e)})")
    return np.zeros(0, np.int64), np.zeros(0, np.int32), 0
  longest = format_common.MAX_LINE_BYTES
  with f:
    pos, lineno = 0, 0
    while True:
      raw = f.readline(longest + 1)
      if not raw:
        break
      start, lineno = pos, lineno + 1
      pos += len(raw)
      if len(raw) > longest and not raw.endswith(b"\n"):
        while raw and not raw.endswith(b"\n"):  # skip the rest without holding it
          raw = f.readline(1 << 20)
          pos += len(raw)
        bad.add(f"{path} line {lineno}", f"longer than {longest >> 20} MiB")
        continue
      body = raw.strip()
      if not body:
        continue
      if not (body.startswith(b"{") and body.endswith(b"}")):
        bad.add(f"{path} line {lineno}", "not one JSON object (truncated or corrupt)")
        continue
      if recognized_only:
        m = _RECOGNIZED.search(body)
        if m is None or m.group(1) != b"true":
          unrecognized += 1
          continue
      if split != "all":
        m = _KEY_ID.search(body)
        key = f"{cat}/{m.group(1).decode()}" if m else f"{cat}/line{lineno}"
        if common.in_test(key, test_fraction, seed) != (split == "test"):
          continue
      if verify:
        try:
          ndjson.parse_line(path, body, lineno)
        except SketchFormatError as e:
          bad.add(f"{path} line {lineno}", str(e).removeprefix(f"{path}: "))
          continue
      offsets.append(start)
      lines.append(lineno)
      if cap is not None and len(offsets) >= cap:
        break
  return np.asarray(offsets, np.int64), np.asarray(lines, np.int32), unrecognized


def _read_line(path: str, offset: int, lineno: int):
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      line = f.readline(format_common.MAX_LINE_BYTES + 1)
  except OSError as e:
    raise SourceError(f"{path}: cannot read line {lineno} ({common.describe_exception(e)})") \
        from None
  return line, lineno


def _npz_segments(path, split, bad, verify):
  """[(split key, count)] of the file's splits this source reads, from the .npy headers."""
  wanted = ("train", "valid", "test") if split == "all" else (split,)
  found = {}
  try:
    with zipfile.ZipFile(path) as zf:
      for member in zf.namelist():
        key = member[:-4] if member.endswith(".npy") else None
        if key not in wanted:
          continue
        with zf.open(member) as f:
          version = npy_format.read_magic(f)
          read = (npy_format.read_array_header_1_0 if version == (1, 0)
                  else npy_format.read_array_header_2_0)
          shape, _, dtype = read(f)
        if dtype.hasobject and len(shape) == 1:
          found[key] = shape[0]
        elif dtype.kind in "iuf" and len(shape) == 2 and shape[1] == 3:
          found[key] = 1  # one sketch stored as a plain array
        else:
          bad.add(path, f"split {key!r} is {dtype} {shape}, not stroke-3 sketches")
          return []
  except Exception as e:  # noqa: BLE001  (zip and .npy headers fail in many types)
    bad.add(path, f"not a readable sketch-rnn .npz ({common.describe_exception(e)})")
    return []
  missing = [k for k in wanted if k not in found]
  if split != "all" and missing:
    bad.add(path, f"has no split {split!r}")
    return []
  if not found:
    bad.add(path, "holds none of the splits train, valid, test")
    return []
  out = [(k, found[k]) for k in wanted if k in found]
  if verify:
    for key, n in out:
      try:
        arr, canvas = _load_split(path, key)
        for i in range(n):
          _npz_sketch(path, key, i, (arr, canvas))
      except SketchFormatError as e:
        bad.add(path, str(e).removeprefix(f"{path}: "))
        return []
  return out


def _load_split(path, key):
  _, arr, canvas = npz._guarded(path, key)  # the sketch reader's restricted unpickler
  return npz._sketch_list(path, key, arr), canvas


def _npz_sketch(path, key, i, loaded):
  """Sketch i of a decoded split, with the conventions of the sketch-rnn reader."""
  sketches, canvas = loaded
  where = f"split {key!r}, sketch {i}"
  s3 = sketches[i]
  if not isinstance(s3, np.ndarray) or s3.dtype.kind not in "iuf" or s3.ndim != 2 \
      or s3.shape[1] != 3 or s3.shape[0] == 0:
    format_common.fail(path, f"{where}: expected a non-empty (N, 3) numeric stroke-3 array")
  if s3.shape[0] > format_common.MAX_POINTS:
    format_common.fail(path, f"{where}: {s3.shape[0]} points; more than the cap of "
                             f"{format_common.MAX_POINTS}")
  rows = s3.astype(np.float64)
  if not np.all(np.isfinite(rows)):
    format_common.fail(path, f"{where}: non-finite coordinate")
  pen = rows[:, 2]
  if not np.all((pen == 0) | (pen == 1)):
    format_common.fail(path, f"{where}: pen_lifted must be 0 or 1")
  with np.errstate(over="ignore", invalid="ignore"):
    points = np.cumsum(rows[:, :2], axis=0)
    if canvas is None:
      points, size = npz._fit_with_margin(points)
    else:
      size = npz._canvas(path, canvas)
    if not np.all(np.isfinite(points.astype(np.float32))):
      format_common.fail(path, f"{where}: non-finite coordinate (offsets sum beyond float32)")
  strokes = np.split(points, np.flatnonzero(pen[:-1]) + 1)
  return format_common.make_sketch(path, strokes, size)
