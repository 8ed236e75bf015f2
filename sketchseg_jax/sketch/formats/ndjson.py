"""QuickDraw `.ndjson`: a JSON drawing per line, simplified [[xs], [ys]] or raw [[xs], [ys], [ts]].

Canvas: a `canvas_size` field ([width, height], written by `write`) when present; otherwise
256 x 256 for simplified drawings (QuickDraw scales them into 0..255) and, for raw drawings
(screen pixels), the bounding box: strokes are shifted so it starts at (0, 0) and the canvas
is its extent plus one, counting pixels inclusively as 0..255 makes 256. The drawing's `word`
becomes every stroke's label category (object_id 0) unless a `stroke_labels` field says more.

`write` keeps everything a Sketch holds, so it is the lossless format: float coordinates are
written as the shortest text that reads back as the same float32, times as the third stroke
list, and `pressures` and `stroke_labels` as extra fields that QuickDraw tools ignore.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

from sketchseg_jax.sketch.formats import common
from sketchseg_jax.sketch.formats.common import fail, format_number
from sketchseg_jax.sketch.types import Sketch, StrokeLabel

SIMPLIFIED_CANVAS = (256.0, 256.0)


def _lines(f, path):
  """(line number, bytes) of every non-blank line; bytes is None for a line over the cap."""
  cap = common.MAX_LINE_BYTES
  lineno = 0
  while True:
    try:
      chunk = f.readline(cap + 1)
    except OSError as e:
      fail(path, f"cannot read: {e.strerror or common.describe(e)}")
    if not chunk:
      return
    lineno += 1
    if len(chunk) > cap and not chunk.endswith(b"\n"):
      while chunk and not chunk.endswith(b"\n"):  # skip the rest of the overlong line
        chunk = f.readline(1 << 20)
      yield lineno, None
    elif chunk.strip():
      yield lineno, chunk


def count(path: str) -> int:
  """How many drawings (non-blank lines) the file holds."""
  with common.open_binary(path) as f:
    return sum(1 for _ in _lines(f, path))


def read_all(path: str):
  """Every drawing of the file, in order, read as a stream (a generator)."""
  with common.open_binary(path) as f:
    for lineno, line in _lines(f, path):
      if line is None:
        fail(path, f"line {lineno}: longer than {common.size_text(common.MAX_LINE_BYTES)}")
      yield parse_line(path, line, lineno)


def read(path: str, index: int = 0) -> Sketch:
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    fail(path, f"index must be an integer, got {index!r}")
  index = int(index)
  if index < 0:
    index = common.pick_index(path, index, count(path))
  seen = 0
  with common.open_binary(path) as f:
    for lineno, line in _lines(f, path):
      if seen == index:
        if line is None:
          fail(path, f"line {lineno}: longer than {common.size_text(common.MAX_LINE_BYTES)}")
        return parse_line(path, line, lineno)
      seen += 1
  common.index_error(path, index, seen)


def parse_line(path: str, line: bytes, lineno: int = 1) -> Sketch:
  where = f"line {lineno}"
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    fail(path, f"{where}: malformed or truncated JSON ({e.msg} at column {e.colno})")
  except (ValueError, RecursionError) as e:  # bad UTF-8, too many digits, absurd nesting
    fail(path, f"{where}: malformed JSON ({common.describe(e)})")
  if not isinstance(record, dict):
    fail(path, f"{where}: expected a JSON object, got {type(record).__name__}")
  drawing = record.get("drawing")
  if drawing is None:
    fail(path, f"{where}: no 'drawing' field")
  if not isinstance(drawing, list):
    fail(path, f"{where}: 'drawing' must be a list of strokes")
  if not drawing:
    fail(path, f"{where}: empty drawing")

  strokes, times = [], []
  for k, stroke in enumerate(drawing):
    at = f"{where}, stroke {k}"
    if not isinstance(stroke, list) or len(stroke) not in (2, 3):
      fail(path, f"{at}: expected [[x...], [y...]] or [[x...], [y...], [t...]]")
    cols = [_numbers(path, f"{at}, {name}", values) for name, values in zip("xyt", stroke)]
    if len({len(c) for c in cols}) != 1:
      fail(path, f"{at}: x, y{', t' if len(cols) == 3 else ''} lists differ in length "
                 f"({', '.join(str(len(c)) for c in cols)})")
    if len(cols[0]) == 0:
      fail(path, f"{at}: empty stroke")
    strokes.append(np.stack(cols[:2], axis=1))
    times.append(cols[2] if len(cols) == 3 else None)
  if any(t is None for t in times):
    if any(t is not None for t in times):
      fail(path, f"{where}: some strokes have times and some do not")
    times = None

  canvas = record.get("canvas_size")
  if canvas is not None:
    canvas = _numbers(path, f"{where}, canvas_size", canvas)
    if canvas.shape != (2,) or not np.all(canvas > 0):
      fail(path, f"{where}: canvas_size must be [width, height], both positive")
    canvas = (float(canvas[0]), float(canvas[1]))
  elif times is None:
    canvas = SIMPLIFIED_CANVAS
  else:
    strokes, canvas = _fit_bounding_box(strokes)

  pressures = record.get("pressures")
  if pressures is not None:
    if not isinstance(pressures, list) or len(pressures) != len(strokes):
      fail(path, f"{where}: 'pressures' must hold one list per stroke")
    pressures = [_numbers(path, f"{where}, pressures {k}", p) for k, p in enumerate(pressures)]

  labels = _labels(path, where, record, len(strokes))
  return common.make_sketch(path, strokes, canvas, times=times, pressures=pressures,
                            labels=labels)


def _numbers(path: str, where: str, values) -> np.ndarray:
  # bool is an int in Python, and QuickDraw never writes one: refuse it like a string.
  if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
    fail(path, f"{where}: expected a list of numbers")
  try:
    a = np.array(values, dtype=np.float64)
  except OverflowError:
    fail(path, f"{where}: number too large")
  with np.errstate(over="ignore"):
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(a.astype(np.float32)))):
      fail(path, f"{where}: non-finite coordinate (NaN, infinity or beyond float32)")
  return a


def _fit_bounding_box(strokes):
  allp = np.concatenate(strokes, axis=0)
  lo, hi = allp.min(axis=0), allp.max(axis=0)
  size = hi - lo + 1.0
  return [s - lo for s in strokes], (float(size[0]), float(size[1]))


def _labels(path: str, where: str, record: dict, n: int) -> Optional[list]:
  raw = record.get("stroke_labels")
  if raw is None:
    word = record.get("word")
    return [StrokeLabel(0, word, "")] * n if isinstance(word, str) and word else None
  if not isinstance(raw, list) or len(raw) != n:
    fail(path, f"{where}: 'stroke_labels' must hold one entry per stroke")
  out = []
  for k, item in enumerate(raw):
    if item is None:
      out.append(None)
      continue
    ok = (isinstance(item, list) and len(item) == 3 and type(item[0]) is int
          and isinstance(item[1], str) and isinstance(item[2], str))
    if not ok:
      fail(path, f"{where}, stroke_labels {k}: expected [object_id, category, part] or null")
    out.append(StrokeLabel(item[0], item[1], item[2]))
  return out


def _list(values) -> str:
  return "[" + ",".join(format_number(v) for v in values) + "]"


def encode(sketch: Sketch) -> str:
  """One ndjson line (without the newline) holding the whole sketch."""
  parts = []
  if sketch.labels is not None:
    cats = {lab.category for lab in sketch.labels if lab is not None}
    parts.append(f'"word":{json.dumps(cats.pop() if len(cats) == 1 else "")}')
  strokes = []
  for k, s in enumerate(sketch.strokes):
    cols = [_list(s[:, 0]), _list(s[:, 1])]
    if sketch.times is not None:
      cols.append(_list(sketch.times[k]))
    strokes.append("[" + ",".join(cols) + "]")
  parts.append('"drawing":[' + ",".join(strokes) + "]")
  parts.append(f'"canvas_size":{json.dumps(list(sketch.canvas_size))}')
  if sketch.pressures is not None:
    parts.append('"pressures":[' + ",".join(_list(p) for p in sketch.pressures) + "]")
  if sketch.labels is not None:
    labs = [None if lab is None else [int(lab.object_id), lab.category, lab.part]
            for lab in sketch.labels]
    parts.append(f'"stroke_labels":{json.dumps(labs)}')
  return "{" + ",".join(parts) + "}"


def write(sketch: Sketch, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(encode(sketch) + "\n")
