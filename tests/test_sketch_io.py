"""Sketch readers and writers: real layouts, round trips, clear errors, and fuzzing."""

import datetime
import io
import os
import pickle
import resource
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy._core.multiarray import _reconstruct
from PIL import Image

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch import io as sio
from sketchseg_jax.sketch.formats import common, npz, svg
from sketchseg_jax.sketch.types import Sketch, SketchFormatError, StrokeLabel

FIX = Path(__file__).parent / "fixtures" / "sketches"
SIMPLIFIED = FIX / "quickdraw_simplified.ndjson"
RAW = FIX / "quickdraw_raw.ndjson"
SKETCHRNN = FIX / "sketchrnn.npz"
SKETCHY = FIX / "sketchy.svg"
TUBERLIN = FIX / "tuberlin.svg"
PNG = FIX / "sketch.png"


def _write(tmp_path, name, content):
  p = tmp_path / name
  p.write_bytes(content.encode() if isinstance(content, str) else content)
  return p


def _raises(path, *words):
  """Context manager: a SketchFormatError naming `path` and every word."""
  class _Check:
    def __enter__(self):
      self.ctx = pytest.raises(SketchFormatError)
      self.info = self.ctx.__enter__()
      return self.info

    def __exit__(self, *exc):
      handled = self.ctx.__exit__(*exc)
      msg = str(self.info.value)
      assert str(path) in msg, msg
      for w in words:
        assert w in msg, (w, msg)
      return handled
  return _Check()


def _svg(body, head='width="100" height="100"'):
  return f'<svg xmlns="http://www.w3.org/2000/svg" {head}>{body}</svg>'


def _distance_to_polyline(points, poly):
  """Distance of each point to the nearest segment of poly."""
  a, b = poly[:-1][None], poly[1:][None]
  p = points[:, None]
  ab = b - a
  t = np.clip(np.sum((p - a) * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
  nearest = a + t[..., None] * ab
  return np.min(np.linalg.norm(p - nearest, axis=-1), axis=1)


# ---------------------------------------------------------------- QuickDraw ndjson

def test_quickdraw_simplified_reads_every_drawing_on_a_256_canvas():
  cat = sio.load(SIMPLIFIED)
  assert cat.canvas_size == (256.0, 256.0)
  assert cat.num_strokes == 5 and cat.times is None
  np.testing.assert_array_equal(cat.strokes[1], [[55, 58], [47, 20], [66, 45]])
  assert cat.labels == (StrokeLabel(0, "cat", ""),) * 5
  house = sio.load(SIMPLIFIED, index=1)
  assert house.num_strokes == 3 and house.labels[0].category == "house"
  np.testing.assert_array_equal(house.strokes[0][2], [255, 96])
  dot = sio.load(SIMPLIFIED, index=2)
  assert dot.num_points == 1
  assert sio.load(SIMPLIFIED, index=-1) == dot
  assert sio.load(SIMPLIFIED, index=-3) == cat


def test_quickdraw_raw_keeps_times_and_fits_the_bounding_box():
  s = sio.load(RAW)
  # x spans 312..377 and y 380..441 in screen pixels: shifted to 0 with the box as canvas.
  assert s.canvas_size == (66.0, 62.0)
  np.testing.assert_array_equal(s.times[0], [0, 17, 33, 50, 66])
  np.testing.assert_array_equal(s.times[1], [512, 529, 546])
  np.testing.assert_array_equal(s.strokes[0][0], [0, 22])
  np.testing.assert_array_equal(s.strokes[1], [[28, 0], [29.5, 30], [31, 61]])
  star = sio.load(RAW, index=1)
  assert star.canvas_size == (101.0, 91.0) and star.times[0][-1] == 700


@pytest.mark.parametrize("index", [3, -4, 100])
def test_index_out_of_range_names_the_count(index):
  with _raises(SIMPLIFIED, f"index {index} out of range", "3 drawings"):
    sio.load(SIMPLIFIED, index=index)


@pytest.mark.parametrize("line, words", [
    ('{"word":"cat","drawing":[[[1,2,3],[4,5', ["truncated JSON"]),
    ('{"drawing":[[[1,2],[3]]]}', ["differ in length"]),
    ('{"drawing":[[[1,2],[3,4],[5]]]}', ["differ in length"]),
    ('{"drawing":[[[1,NaN],[3,4]]]}', ["non-finite"]),
    ('{"drawing":[[[1,1e999],[3,4]]]}', ["non-finite"]),
    ('{"drawing":[[[1,1e300],[3,4]]]}', ["non-finite"]),
    ('{"drawing":[[[1,true],[3,4]]]}', ["list of numbers"]),
    ('{"drawing":[[[1,"2"],[3,4]]]}', ["list of numbers"]),
    ('{"drawing":[]}', ["empty drawing"]),
    ('{"drawing":[[[],[]]]}', ["empty stroke"]),
    ('{"drawing":[[[1],[2],[0]],[[1],[2]]]}', ["some strokes have times"]),
    ('{"word":"cat"}', ["no 'drawing'"]),
    ('[1, 2]', ["expected a JSON object"]),
    ('{"drawing":[[[1],[2]]],"canvas_size":[0,5]}', ["canvas_size"]),
    ('{"drawing":[[[1],[2]]],"stroke_labels":[[0,"a"]]}', ["stroke_labels"]),
    ('{"drawing":[[[1],[2]]],"pressures":[[0.5,0.5]]}', ["one value per point"]),
    ('{"drawing":' + "[" * 100000 + "]" * 100000 + "}", ["malformed JSON"]),
])
def test_ndjson_errors_name_file_and_problem(tmp_path, line, words):
  p = _write(tmp_path, "bad.ndjson", line + "\n")
  with _raises(p, *words):
    sio.load(p)


def test_ndjson_empty_file_and_blank_lines(tmp_path):
  p = _write(tmp_path, "empty.ndjson", "\n\n")
  with _raises(p, "holds no drawings"):
    sio.load(p)
  p = _write(tmp_path, "gaps.ndjson", '\n{"drawing":[[[1],[2]]]}\n\n{"drawing":[[[3],[4]]]}\n')
  np.testing.assert_array_equal(sio.load(p, index=1).strokes[0], [[3, 4]])


def test_ndjson_only_parses_the_asked_line(tmp_path):
  p = _write(tmp_path, "mixed.ndjson", '{"drawing":[[[1],[2]]]}\nnot json at all\n')
  assert sio.load(p).num_points == 1
  with _raises(p, "line 2", "malformed"):
    sio.load(p, index=1)


def test_ndjson_overlong_line_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "MAX_LINE_BYTES", 64)
  long_line = '{"drawing":[[[' + "1," * 100 + '1],[2]]]}\n'
  p = _write(tmp_path, "long.ndjson", long_line + '{"drawing":[[[1],[2]]]}\n')
  with _raises(p, "longer than"):
    sio.load(p)
  assert sio.load(p, index=1).num_points == 1


# ---------------------------------------------------------------- sketch-rnn npz

def _trusted_points(stroke3):
  return np.cumsum(stroke3[:, :2].astype(np.float64), axis=0)


def test_sketchrnn_published_layout_reads_like_a_trusted_load():
  # The fixture holds Python 2 protocol-2 pickles; a trusted load shows what they contain.
  trusted = np.load(SKETCHRNN, allow_pickle=True, encoding="latin1")
  for split in ("train", "valid", "test"):
    for i, s3 in enumerate(trusted[split]):
      s = sio.load(SKETCHRNN, split=split, index=i)
      pts = _trusted_points(s3)
      lo, extent = pts.min(0), pts.max(0) - pts.min(0)
      margin = max(1.0, npz.MARGIN_FRACTION * extent.max())
      np.testing.assert_allclose(np.concatenate(s.strokes), pts - lo + margin)
      assert s.canvas_size == tuple(extent + 2 * margin)
      assert [len(x) for x in s.strokes] == list(np.diff(
          np.concatenate([[0], np.flatnonzero(s3[:, 2]) + 1])))


def test_sketchrnn_default_split_is_test_and_strokes_end_at_pen_lifts():
  s = sio.load(SKETCHRNN)
  assert s == sio.load(SKETCHRNN, split="test", index=0)
  assert [len(x) for x in s.strokes] == [3, 3, 1]
  # first row (25, 30) is the offset from the origin; bbox x 0..60, y 23..43, margin 3
  np.testing.assert_array_equal(s.strokes[0][0], [28, 10])
  assert s.canvas_size == (66.0, 26.0)
  assert sio.load(SKETCHRNN, split="test", index=-1).num_points == 4


def test_sketchrnn_missing_split_and_out_of_range(tmp_path):
  with _raises(SKETCHRNN, "no split 'validation'", "train", "valid", "test"):
    sio.load(SKETCHRNN, split="validation")
  with _raises(SKETCHRNN, "index 1 out of range", "split 'valid'", "1 drawing"):
    sio.load(SKETCHRNN, split="valid", index=1)
  obj = np.empty(1, dtype=object)
  obj[0] = np.array([[1, 1, 1]], np.int16)
  p = tmp_path / "two.npz"
  np.savez(p, train=obj, valid=obj)
  with _raises(p, "pass split="):
    sio.load(p)
  assert sio.load(p, split="valid").num_points == 1


@pytest.mark.parametrize("compress", [False, True])
def test_sketchrnn_written_by_modern_numpy(tmp_path, compress):
  obj = np.empty(2, dtype=object)
  obj[0] = np.array([[5, 5, 0], [10, 0, 1]], np.int16)
  obj[1] = np.array([[1.5, 2.0, 1.0]], np.float32)
  p = tmp_path / "modern.npz"
  (np.savez_compressed if compress else np.savez)(p, train=obj)
  a = sio.load(p)
  np.testing.assert_array_equal(a.strokes[0], [[1, 1], [11, 1]])
  assert sio.load(p, index=1).num_points == 1
  # a plain (N, 3) array is a one-sketch split, read without any pickle
  np.savez(p, test=np.array([[1, 2, 0], [3, 4, 1]], np.int16))
  assert sio.load(p).num_points == 2


_canary_calls = []


def _canary():
  _canary_calls.append(1)
  return np.zeros((1, 3), np.int16)


class _CallsCanary:
  def __reduce__(self):
    return (_canary, ())


class _HugeArray:
  """Pickles as numpy's own constructor, then a state claiming 10^10 objects."""
  def __reduce__(self):
    return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10 ** 10,), np.dtype(object), False, []))


def _npz_with_pickle(path, shape, payload):
  """An .npz whose test.npy declares an object array of `shape` and holds `payload`."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      header, {"descr": "|O", "fortran_order": False, "shape": shape})
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("test.npy", header.getvalue() + payload)
  return path


def test_pickle_with_forbidden_class_is_refused_without_running_it(tmp_path):
  arr = np.empty(1, dtype=object)
  arr[0] = _CallsCanary()
  p = _npz_with_pickle(tmp_path / "evil.npz", (1,), pickle.dumps(arr, protocol=2))
  with _raises(p, "forbidden class", "_canary", "only numpy arrays"):
    sio.load(p)
  system_true = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x85R."  # os.system("true")
  p = _npz_with_pickle(tmp_path / "sys.npz", (1,), system_true)
  with _raises(p, "forbidden class posix.system"):
    sio.load(p)
  assert _canary_calls == []


def test_pickled_array_claiming_a_huge_size_is_refused_before_allocation(tmp_path):
  p = _npz_with_pickle(tmp_path / "huge.npz", (10 ** 10,), pickle.dumps(_HugeArray(), protocol=2))
  with _raises(p, "does not match"):
    sio.load(p)


def _max_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@pytest.mark.parametrize("payload", [
    b"\x80\x02K\x00r\x00\xe1\xf5\x05.",                  # LONG_BINPUT at memo index 10^8
    b"\x80\x02cnumpy\nndarray\nJ\x00\xe1\xf5\x05\x85\x85R.",    # ndarray((10^8,))
    b"\x80\x02cnumpy\nndarray\nJ\x00\xe1\xf5\x05\x85\x85\x81.",  # ndarray.__new__(ndarray, 10^8)
], ids=["memo", "reduce", "newobj"])
def test_small_pickles_cannot_ask_for_large_memory(tmp_path, payload):
  # Each would take hundreds of MB (the C unpickler's memo table, or numpy's allocation).
  before = _max_rss_mib()
  p = _npz_with_pickle(tmp_path / "alloc.npz", (1,), payload)
  with _raises(p, "split 'test'"):
    sio.load(p)
  assert _max_rss_mib() - before < 200


def test_npz_member_over_the_cap_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "MAX_NPZ_MEMBER_BYTES", 1000)
  p = tmp_path / "big.npz"
  np.savez_compressed(p, test=np.zeros((5000, 3), np.int16))
  with _raises(p, "over the cap"):
    sio.load(p)


@pytest.mark.parametrize("rows, words", [
    (np.zeros((0, 3), np.int16), ["empty drawing"]),
    (np.array([[1, 2, 3]], np.int16), ["pen_lifted must be 0 or 1"]),
    (np.array([[1, np.inf, 1]], np.float64), ["non-finite"]),
    (np.array([[1e300, 0, 0], [1e300, 0, 1]], np.float64), ["non-finite"]),
    (np.zeros((2, 5), np.int16), ["(N, 3)"]),
    (np.array(["a"]), ["(N, 3)"]),
])
def test_npz_bad_sketches(tmp_path, rows, words):
  obj = np.empty(1, dtype=object)
  obj[0] = rows
  p = tmp_path / "bad.npz"
  np.savez(p, test=obj)
  with _raises(p, *words):
    sio.load(p)


# ---------------------------------------------------------------- SVG

def test_sketchy_svg_reads_paths_polylines_and_lines():
  s = sio.load(SKETCHY)
  assert s.canvas_size == (640.0, 480.0)  # width/height, no viewBox; defs and rect skipped
  assert s.num_strokes == 5
  first = s.strokes[0]
  np.testing.assert_array_equal(first[:3], [[200, 150], [210, 148], [222, 149]])
  np.testing.assert_array_equal(first[-2:], [[210, 180], [200, 150]])  # L then z
  # c then s: the s's first control point reflects the c's second one
  cubic_end = np.flatnonzero((first == [234, 158]).all(1))
  assert len(cubic_end) == 1
  assert any((first == [231, 174]).all(1))
  np.testing.assert_array_equal(
      s.strokes[1], [[320, 240], [360, 240], [360, 270], [320, 270], [320, 240]])
  np.testing.assert_array_equal(s.strokes[2][[0, -1]], [[330, 250], [350, 250]])
  assert s.strokes[2][:, 1].min() < 250 < s.strokes[2][:, 1].max()  # q bulges up, t down
  np.testing.assert_array_equal(s.strokes[3], [[100, 300], [120, 310], [140, 305], [160, 320]])
  np.testing.assert_array_equal(s.strokes[4], [[400, 100], [450, 130]])


def test_tuberlin_svg_applies_nested_transforms():
  s = sio.load(TUBERLIN)
  assert s.canvas_size == (800.0, 800.0)
  assert s.num_strokes == 3
  np.testing.assert_allclose(s.strokes[0][0], [227.5 - 10.5, 364.5 + 12])
  np.testing.assert_allclose(s.strokes[0][-1], [352.5 - 10.5, 370.5 + 12])
  # matrix(1,0,0,1,400,0) scale(2) inside translate(-10.5,12)
  np.testing.assert_allclose(s.strokes[2], [[409.5, 612], [509.5, 612], [509.5, 712]])


@pytest.mark.parametrize("tolerance, transform", [(0.1, ""), (0.02, ""), (0.1, "scale(7)")])
def test_curves_are_flattened_within_tolerance(tmp_path, tolerance, transform):
  p = _write(tmp_path, "c.svg", _svg(
      f'<g transform="{transform}"><path d="M 10 80 C 40 10 65 10 95 80 Q 120 140 140 80"/></g>',
      'viewBox="0 0 1000 1000"'))
  poly = svg.read(str(p), tolerance=tolerance).strokes[0].astype(np.float64)
  t = np.linspace(0, 1, 2001)[:, None]
  s = 1 - t
  p0, p1, p2, p3 = map(np.array, ([10, 80], [40, 10], [65, 10], [95, 80]))
  cubic = s ** 3 * p0 + 3 * s * s * t * p1 + 3 * s * t * t * p2 + t ** 3 * p3
  q0, q1, q2 = map(np.array, ([95, 80], [120, 140], [140, 80]))
  quad = s * s * q0 + 2 * s * t * q1 + t * t * q2
  scale = 7.0 if transform else 1.0
  truth = np.concatenate([cubic, quad]) * scale
  assert np.max(_distance_to_polyline(truth, poly)) <= tolerance * 1.01 + 1e-4
  # ...and not wastefully many points
  assert len(poly) < 4 * np.sqrt(scale / tolerance) * 10


def test_arcs_follow_the_ellipse_and_sweep_flag(tmp_path):
  arcs = "M 10 50 A 40 40 0 0 1 90 50 a 20 10 30 1 0 -20 0"
  p = _write(tmp_path, "a.svg", _svg(f'<path d="{arcs}"/>'))
  s = svg.read(str(p), tolerance=0.05).strokes[0]
  first = s[:np.flatnonzero((s == [90, 50]).all(1))[0] + 1]
  np.testing.assert_allclose(np.linalg.norm(first - [50, 50], axis=1), 40, atol=1e-3)
  assert first[:, 1].min() == pytest.approx(10, abs=0.05)  # sweep=1 goes over the top
  np.testing.assert_array_equal(s[-1], [70, 50])


@pytest.mark.parametrize("transform, expected", [
    ("translate(5)", [[5, 0], [15, 0]]),
    ("translate(5 6)", [[5, 6], [15, 6]]),
    ("scale(2, 3)", [[0, 0], [20, 0]]),
    ("rotate(90)", [[0, 0], [0, 10]]),
    ("rotate(90, 5, 5)", [[10, 0], [10, 10]]),
    ("matrix(0 1 -1 0 1 2)", [[1, 2], [1, 12]]),
    ("skewY(45)", [[0, 0], [10, 10]]),
    ("translate(1,1) scale(2)", [[1, 1], [21, 1]]),
])
def test_transforms(tmp_path, transform, expected):
  line = '<line x1="0" y1="0" x2="10" y2="0"/>'
  p = _write(tmp_path, "t.svg", _svg(f'<g transform="{transform}">{line}</g>'))
  np.testing.assert_allclose(sio.load(p).strokes[0], expected, atol=1e-5)


def test_path_grammar_details(tmp_path):
  d = ("m10-20.5.5 1e1 2E0,3 z l5 0 "  # relative start, packed numbers, implicit lineto
       "M 0 0 "                          # a lone moveto draws nothing
       "M 50 50 Z "                      # a dot
       "M1,1H9V9h-2v-2")
  p = _write(tmp_path, "g.svg", _svg(f'<path d="{d}"/>'))
  s = sio.load(p)
  # numbers: 10 -20.5 .5 1e1 2E0 3, so m(10,-20.5) then implicit l(.5,10) and l(2,3), then z
  np.testing.assert_allclose(s.strokes[0], [[10, -20.5], [10.5, -10.5], [12.5, -7.5], [10, -20.5]])
  np.testing.assert_allclose(s.strokes[1], [[10, -20.5], [15, -20.5]])
  np.testing.assert_array_equal(s.strokes[2], [[50, 50]])
  np.testing.assert_array_equal(s.strokes[3], [[1, 1], [9, 1], [9, 9], [7, 9], [7, 7]])
  assert s.num_strokes == 4


def test_polygon_display_none_and_unknown_elements(tmp_path):
  body = ('<polygon points="0,0 10,0 10,10"/><g display="none"><line x2="5"/></g>'
          '<path style="stroke:red; display: none" d="M0 0 L 5 5"/>'
          '<text>hi<tspan>there</tspan></text><circle r="5"/><image href="x.png"/>'
          '<ink:path xmlns:ink="http://example.com/ink" d="M0 0 L 9 9"/>')
  s = sio.load(_write(tmp_path, "p.svg", _svg(body)))
  assert s.num_strokes == 1
  np.testing.assert_array_equal(s.strokes[0], [[0, 0], [10, 0], [10, 10], [0, 0]])


@pytest.mark.parametrize("head, size", [
    ('viewBox="-10 -20 300 200" width="600" height="400"', (300, 200)),
    ('width="3in" height="72pt"', (288, 96)),
    ('width="100px" height="50"', (100, 50)),
])
def test_canvas_size_from_viewbox_or_width_height(tmp_path, head, size):
  s = sio.load(_write(tmp_path, "v.svg", _svg('<line x1="0" y1="0" x2="10" y2="0"/>', head)))
  assert s.canvas_size == pytest.approx(size)
  if "viewBox" in head:  # points are shifted by the viewBox origin
    np.testing.assert_array_equal(s.strokes[0][0], [10, 20])


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE svg [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><path d="M0 0 L1 1" id="&g;"/></svg>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">
<desc>&xxe;</desc><path d="M0 0 L1 1"/></svg>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE svg SYSTEM "file:///etc/passwd">
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><path d="M0 0 L1 1"/></svg>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_hostile_entities_are_refused(tmp_path, text):
  p = _write(tmp_path, "evil.svg", text)
  with _raises(p, "refused", "entity") as info:
    sio.load(p)
  assert "root:" not in str(info.value)


def test_external_dtd_is_never_fetched(tmp_path):
  # expat does not load external DTDs: the file parses as if the DOCTYPE were not there.
  assert sio.load(_write(tmp_path, "dtd.svg", EXTERNAL_DTD)).num_points == 2


@pytest.mark.parametrize("body, head, words", [
    ('<path d="M 0 0 X 5 5"/>', None, ["unknown path command 'X'"]),
    ('<path d="L 5 5"/>', None, ["must begin with a moveto"]),
    ('<path d="M 0 0 L 5"/>', None, ["missing number"]),
    ('<path d="M 0 0 Z 5 5"/>', None, ["after a closepath"]),
    ('<path d="M 0 0 L 5 # 5"/>', None, ["expected a number"]),
    ('<path d="M 0 0 A 5 5 0 2 0 9 9"/>', None, ["arc flag"]),
    ('<path d="M 0 0 L 1e999 0"/>', None, ["non-finite"]),
    ('<path d="M 0 0 L 1e39 0"/>', None, ["non-finite"]),  # beyond float32
    ('<g transform="scale(1e30)"><path d="M 0 0 L 1e20 0"/></g>', None, ["non-finite"]),
    ('<path d="M 0 0 C 0 0 1e12 1e12 0 0"/>', None, ["more than 1000000 points"]),
    ('<path d="M 0 0 C 1e300 0 -1e300 0 1e300 0"/>', None, ["more than 1000000 points"]),
    ('<path d="M 0 0 A 1e300 1e300 0 0 1 1e300 0"/>', None, ["points"]),
    ('<g transform="shear(2)"><path d="M0 0 L 1 1"/></g>', None, ["unsupported transform"]),
    ('<g transform="scale(1,2,3)"><path d="M0 0 L 1 1"/></g>', None, ["scale given 3"]),
    ('<polyline points="1,2 3"/>', None, ["odd count"]),
    ('<line x1="3em" x2="1"/>', None, ["not a number"]),
    ('<rect width="5" height="5"/>', None, ["empty drawing"]),
    ('', None, ["empty drawing"]),
    ('<line x2="1"/>', 'width="100%" height="100%"', ["no canvas size"]),
    ('<line x2="1"/>', '', ["no canvas size"]),
    ('<line x2="1"/>', 'viewBox="0 0 0 10"', ["viewBox"]),
    ('<line x2="1"/>', 'width="10furlong" height="1"', ["unknown unit"]),
    ('<svg width="5" height="5"><line x2="1"/></svg>', None, ["nested <svg>"]),
])
def test_svg_errors_name_file_and_problem(tmp_path, body, head, words):
  text = _svg(body) if head is None else _svg(body, head)
  p = _write(tmp_path, "bad.svg", text)
  with _raises(p, *words):
    sio.load(p)


@pytest.mark.parametrize("text, words", [
    ("<html><body/></html>", ["root element is <html>"]),
    ('<svg width="1" height="1"><path d="M0 0 L1 1"/>', ["malformed XML"]),
    ("", ["malformed XML"]),
    ('<?xml version="1.0" encoding="no-such-codec"?><svg/>', ["malformed XML"]),
])
def test_svg_malformed_xml(tmp_path, text, words):
  p = _write(tmp_path, "bad.svg", text)
  with _raises(p, *words):
    sio.load(p)


def test_svg_caps_on_elements_depth_and_commands(tmp_path, monkeypatch):
  deep = _write(tmp_path, "deep.svg", _svg("<g>" * 300 + '<line x2="1"/>' + "</g>" * 300))
  with _raises(deep, "nested deeper"):
    sio.load(deep)
  monkeypatch.setattr(common, "MAX_SVG_ELEMENTS", 50)
  many = _write(tmp_path, "many.svg", _svg('<line x2="1"/>' * 60))
  with _raises(many, "more than 50 elements"):
    sio.load(many)
  monkeypatch.setattr(common, "MAX_PATH_COMMANDS", 100)
  cmds = _write(tmp_path, "cmds.svg", _svg('<path d="M0 0' + " L1 1" * 200 + '"/>'))
  with _raises(cmds, "more than 100 path commands"):
    sio.load(cmds)
  monkeypatch.setattr(common, "MAX_SVG_BYTES", 100)
  with _raises(cmds, "larger than"):
    sio.load(cmds)


# ---------------------------------------------------------------- raster

def test_png_loads_as_float_ink_image():
  ink = sio.load(PNG)
  assert ink.dtype == np.float32 and ink.shape == (16, 24)
  assert ink.min() == 0.0 and ink.max() == 1.0
  assert ink[2, 2] == 1.0 and ink[0, 0] == 0.0 and ink[8, 8] == 0.0
  assert ink[13, 2] == pytest.approx(1 - 40 / 255)  # a grey stroke is partial ink


def test_ink_on_black_images_are_detected(tmp_path):
  gray = np.asarray(Image.open(PNG))
  inverted = tmp_path / "inverted.png"
  Image.fromarray(255 - gray).save(inverted)
  np.testing.assert_allclose(sio.load(inverted), sio.load(PNG), atol=1e-6)
  from sketchseg_jax.sketch.formats import raster
  assert raster.read(str(inverted), background="white").mean() > 0.5  # taken at its word


def test_transparent_background_counts_as_paper(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)  # transparent black everywhere
  rgba[3, :, 3] = 255                     # one opaque black row
  p = tmp_path / "alpha.png"
  Image.fromarray(rgba).save(p)
  ink = sio.load(p)
  assert ink[3].min() == 1.0 and ink[:3].max() == 0.0


def test_sixteen_bit_png(tmp_path):
  a = np.full((4, 6), 65535, np.uint16)
  a[1, :] = 0
  p = tmp_path / "deep.png"
  Image.fromarray(a).save(p)
  ink = sio.load(p)
  assert ink[1].min() == 1.0 and ink[0].max() == 0.0


@pytest.mark.parametrize("ext, atol", [(".png", 0.5 / 255 + 1e-7), (".jpg", 0.2)])
def test_raster_round_trip(tmp_path, ext, atol):
  rng = np.random.default_rng(0)
  ink = np.zeros((20, 30), np.float32)
  ink[5:7, 3:25] = rng.uniform(0.5, 1, (2, 22))
  p = tmp_path / f"ink{ext}"
  sio.save(ink, p)
  np.testing.assert_allclose(sio.load(p), ink, atol=atol)


def test_raster_errors(tmp_path):
  bad = _write(tmp_path, "bad.png", PNG.read_bytes()[:60])
  with _raises(bad, "image"):
    sio.load(bad)
  with _raises(PNG, "index 1 out of range"):
    sio.load(PNG, index=1)
  sketch = sio.load(SKETCHY)
  with _raises(tmp_path / "s.png", "rasterize it first"):
    sio.save(sketch, tmp_path / "s.png")
  with _raises(tmp_path / "s.svg", "only be saved as png or jpg"):
    sio.save(np.zeros((4, 4), np.float32), tmp_path / "s.svg")
  with pytest.raises(SketchFormatError, match=r"\[0, 1\]"):
    sio.save(np.full((4, 4), 2.0), tmp_path / "x.png")


# ---------------------------------------------------------------- dispatch

ALL_FIXTURES = [SIMPLIFIED, RAW, SKETCHRNN, SKETCHY, TUBERLIN, PNG]


def _same(a, b):
  if isinstance(a, np.ndarray):
    return np.array_equal(a, b)
  return a == b


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_format_is_sniffed_when_the_extension_says_nothing(tmp_path, fixture):
  blob = tmp_path / "sketch.bin"
  shutil.copy(fixture, blob)
  assert _same(sio.load(blob), sio.load(fixture))
  assert sio.detect_format(blob) == sio.detect_format(fixture)


def test_explicit_format_and_aliases(tmp_path):
  blob = tmp_path / "drawing.txt"
  shutil.copy(SIMPLIFIED, blob)
  assert sio.load(blob, format="quickdraw") == sio.load(SIMPLIFIED)
  with _raises(blob, "unknown format 'cad'"):
    sio.load(blob, format="cad")
  with _raises(blob, "malformed XML"):
    sio.load(blob, format="svg")


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_missing_file_and_directory(tmp_path, fixture):
  missing = tmp_path / ("nope" + fixture.suffix)
  with _raises(missing, "file not found"):
    sio.load(missing)
  fmt = sio.detect_format(fixture)
  with _raises(missing, "file not found"):
    sio.load(missing, format=fmt)
  folder = tmp_path / ("dir" + fixture.suffix)
  folder.mkdir()
  with _raises(folder, "directory"):
    sio.load(folder)


def test_unknown_content_and_misplaced_split(tmp_path):
  p = _write(tmp_path, "mystery", b"\x00\x01 nothing I know")
  with _raises(p, "cannot tell the sketch format"):
    sio.load(p)
  with _raises(SKETCHY, "split='test' applies only"):
    sio.load(SKETCHY, split="test")
  with _raises(tmp_path / "x.cad", "cannot tell the format from the name"):
    sio.save(sio.load(SKETCHY), tmp_path / "x.cad")


@pytest.mark.parametrize("fixture, n", [(SIMPLIFIED, 3), (RAW, 2), (SKETCHRNN, 2), (SKETCHY, 1),
                                        (PNG, 1)], ids=lambda v: getattr(v, "name", str(v)))
def test_count_and_load_all_agree_with_load(fixture, n):
  assert sio.count(fixture) == n
  every = list(sio.load_all(fixture))
  assert len(every) == n
  for i, item in enumerate(every):
    assert _same(item, sio.load(fixture, index=i))


def test_load_all_of_a_split_and_a_broken_line(tmp_path):
  assert sio.count(SKETCHRNN, split="train") == 2
  assert list(sio.load_all(SKETCHRNN, split="valid")) == [sio.load(SKETCHRNN, split="valid")]
  p = _write(tmp_path, "broken.ndjson", '{"drawing":[[[1],[2]]]}\n{"drawing":[[[1],[2]\n')
  drawings = sio.load_all(p)
  assert next(drawings).num_points == 1
  with _raises(p, "line 2", "truncated JSON"):
    next(drawings)


def test_errors_are_user_errors():
  assert issubclass(SketchFormatError, UserError)


def test_coerce_accepts_sketches_images_and_paths():
  s = sio.load(SKETCHY)
  assert sio.coerce(s) is s
  assert sio.coerce(str(SKETCHY)) == s
  img = sio.coerce(np.zeros((3, 4)))
  assert img.dtype == np.float32 and img.shape == (3, 4)
  with pytest.raises(SketchFormatError, match="got int"):
    sio.coerce(3)
  with pytest.raises(SketchFormatError, match=r"\(H, W\)"):
    sio.coerce(np.zeros((3, 4, 3)))


# ---------------------------------------------------------------- round trips

_coords32 = st.floats(-5000, 5000, width=32)


@st.composite
def sketches(draw, coords=_coords32, extras=True):
  n = draw(st.integers(1, 4))
  lengths = [draw(st.integers(1, 6)) for _ in range(n)]
  strokes = [np.array([[draw(coords), draw(coords)] for _ in range(k)], np.float32)
             for k in lengths]
  canvas = (draw(st.floats(1, 5000)), draw(st.floats(1, 5000)))
  kw = {}
  if extras and draw(st.booleans()):
    kw["times"] = [np.array([draw(st.floats(0, 1e6, width=32)) for _ in range(k)]) for k in lengths]
  if extras and draw(st.booleans()):
    kw["pressures"] = [np.array([draw(st.floats(0, 1, width=32)) for _ in range(k)])
                       for k in lengths]
  if extras and draw(st.booleans()):
    label = st.one_of(st.none(), st.builds(StrokeLabel, st.integers(-1, 9), st.text(max_size=5),
                                           st.text(max_size=5)))
    kw["labels"] = [draw(label) for _ in range(n)]
  return Sketch(strokes, canvas, **kw)


_ROUND_TRIP = settings(max_examples=60, deadline=datetime.timedelta(seconds=5),
                       suppress_health_check=[HealthCheck.function_scoped_fixture])


@_ROUND_TRIP
@given(sketch=sketches())
def test_ndjson_round_trip_is_exact(tmp_path, sketch):
  p = tmp_path / "rt.ndjson"
  sio.save(sketch, p)
  assert sio.load(p) == sketch


@_ROUND_TRIP
@given(sketch=sketches(extras=False))
def test_svg_round_trip_is_exact(tmp_path, sketch):
  p = tmp_path / "rt.svg"
  sio.save(sketch, p)
  assert sio.load(p) == sketch


@_ROUND_TRIP
@given(sketch=sketches(coords=st.integers(-3000, 3000).map(float), extras=False))
def test_npz_round_trip_is_exact_for_integer_coordinates(tmp_path, sketch):
  p = tmp_path / "rt.npz"
  sio.save(sketch, p)
  back = sio.load(p)
  assert back == sketch
  with np.load(p, allow_pickle=True) as z:  # our own file: trusted; published layout
    assert z["test"][0].dtype == np.int16


@_ROUND_TRIP
@given(sketch=sketches(extras=False))
def test_npz_round_trip_float_coordinates(tmp_path, sketch):
  p = tmp_path / "rt.npz"
  sio.save(sketch, p)
  back = sio.load(p)
  assert back.canvas_size == sketch.canvas_size
  assert [len(s) for s in back.strokes] == [len(s) for s in sketch.strokes]
  # float64 offsets summed back: at most a float32 rounding of the largest coordinate
  scale = max(1.0, max(np.abs(s).max() for s in sketch.strokes))
  for a, b in zip(back.strokes, sketch.strokes):
    np.testing.assert_allclose(a, b, rtol=0, atol=scale * 2 ** -23)


# ---------------------------------------------------------------- fuzzing

_FUZZ_DIR = tempfile.mkdtemp(prefix="sketch_fuzz_")
_FIXTURE_BYTES = {p: p.read_bytes() for p in ALL_FIXTURES}


@st.composite
def mangled(draw, data: bytes):
  kind = draw(st.sampled_from(["random", "truncate", "flip", "splice", "insert"]))
  if kind == "random":
    return draw(st.binary(max_size=2048))
  if kind == "truncate":
    return data[:draw(st.integers(0, len(data)))]
  b = bytearray(data)
  if kind == "flip":
    for _ in range(draw(st.integers(1, 8))):
      i = draw(st.integers(0, len(b) - 1))
      b[i] = draw(st.integers(0, 255))
    return bytes(b)
  i = draw(st.integers(0, len(b)))
  j = draw(st.integers(i, min(len(b), i + 64)))
  if kind == "splice":  # a piece of another file in place of a piece of this one
    other = _FIXTURE_BYTES[draw(st.sampled_from(ALL_FIXTURES))]
    k = draw(st.integers(0, len(other)))
    return bytes(b[:i]) + other[k:k + draw(st.integers(0, 64))] + bytes(b[j:])
  return bytes(b[:i]) + draw(st.binary(min_size=1, max_size=32)) + bytes(b[i:])  # insert


def _load_fuzzed(path, index):
  try:
    out = sio.load(path, index=index)
  except SketchFormatError as e:
    assert path in str(e)
  else:
    assert isinstance(out, (Sketch, np.ndarray))


_FUZZ = settings(max_examples=200, deadline=datetime.timedelta(seconds=5),
                 suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
@_FUZZ
@given(data=st.data())
def test_fuzzed_files_raise_only_sketch_format_error(fixture, data):
  content = data.draw(mangled(_FIXTURE_BYTES[fixture]))
  sniff = data.draw(st.booleans())
  path = os.path.join(_FUZZ_DIR, "fuzz" + ("" if sniff else fixture.suffix))
  with open(path, "wb") as f:
    f.write(content)
  # svg and png hold one drawing, and any other index is refused before parsing
  several = fixture.suffix in (".ndjson", ".npz")
  _load_fuzzed(path, data.draw(st.sampled_from([0, 1, -1])) if several else 0)


_NPZ_MEMBERS = {}
with zipfile.ZipFile(SKETCHRNN) as _zf:
  for _name in _zf.namelist():
    _NPZ_MEMBERS[_name] = _zf.read(_name)


@_FUZZ
@given(data=st.data())
def test_fuzzed_pickles_in_a_sound_zip_raise_only_sketch_format_error(data):
  # Mangling the .npz itself mostly trips the zip CRC; this reaches the restricted unpickler.
  name = data.draw(st.sampled_from(sorted(_NPZ_MEMBERS)))
  path = os.path.join(_FUZZ_DIR, "fuzz_member.npz")
  with zipfile.ZipFile(path, "w") as zf:
    for other, content in _NPZ_MEMBERS.items():
      zf.writestr(other, data.draw(mangled(content)) if other == name else content)
  _load_fuzzed(path, data.draw(st.integers(-2, 2)))


_path_token = st.one_of(
    st.sampled_from(list("MmLlHhVvCcSsQqTtAaZzXe,. -+01")),
    st.floats(allow_nan=True).map(str), st.integers(-10 ** 6, 10 ** 6).map(str),
    st.sampled_from(["1e308", "-1e308", "1e-320", "1e39", ".5.5", "1e5e5"]))
_transform = st.tuples(
    st.sampled_from(["matrix", "translate", "scale", "rotate", "skewX", "skewY", "shear"]),
    st.lists(st.sampled_from(["0", "1", "-2.5", "90", "1e300", "1e-300"]), max_size=7),
).map(lambda t: f"{t[0]}({','.join(t[1])})")


@_FUZZ
@given(d=st.lists(_path_token, max_size=60), transforms=st.lists(_transform, max_size=2))
@example(d=["Q", "0", "0", "0.0", "0.0"], transforms=["matrix(0,0,0,1e300,0,0)"])
@example(d=["S", "0", "0", "0.0", "0.0"], transforms=["matrix(0,0,0,1e300,0,0)"])
def test_random_path_data_and_transforms_raise_only_sketch_format_error(d, transforms):
  # Mangled files rarely get past the XML parser; this drives the path and transform parsers.
  path = os.path.join(_FUZZ_DIR, "fuzz_path.svg")
  with open(path, "w") as f:
    f.write(_svg(f'<g transform="{" ".join(transforms)}"><path d="M 1 2 {" ".join(d)}"/></g>'))
  _load_fuzzed(path, 0)

