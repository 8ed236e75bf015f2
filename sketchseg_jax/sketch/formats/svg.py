"""Sketchy / TU-Berlin `.svg`: each subpath of a path, polyline, polygon or line is a stroke.

Parsing goes through defusedxml with entity declarations and external references refused, and
the document is streamed into a small handler rather than built as a tree, with caps on bytes,
elements, nesting, path commands and points, so a hostile file can neither hang, nor eat
memory, nor read local files.

- `path` data: M/L/H/V/C/S/Q/T/A/Z, absolute and relative; curves and arcs are flattened to
  polylines whose distance from the true curve is at most `tolerance` canvas units.
- `g`, `a` and `switch` nest, each with its own `transform` (matrix, translate, scale, rotate,
  skewX, skewY); `display="none"` (attribute or style) hides a subtree; other elements (defs,
  text, image, rect, circle, other namespaces' metadata, ...) are not strokes and are skipped
  with their children.
- Canvas: the root's viewBox (width, height) with points shifted by its origin; without a
  viewBox, its absolute width and height (px, pt, pc, mm, cm, in). A file with neither raises:
  the canvas size is never guessed.

`write` emits one `M x y L x y ...` path per stroke with width, height and viewBox set; numbers
are written so they read back as the same float32, making save/load exact. Times, pressures and
labels are not kept.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from xml.etree.ElementTree import ParseError

from sketchseg_jax.sketch.formats import common
from sketchseg_jax.sketch.formats.common import fail, format_number
from sketchseg_jax.sketch.types import Sketch

FLATTEN_TOLERANCE = 0.1  # canvas units

# Unambiguous alternations (no \d+\.?\d*), so a failed match cannot backtrack quadratically.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SEPARATORS = re.compile(r"[\x20\x09\x0a\x0c\x0d,]*")
_LENGTH = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-z%]*)\s*$")
_TRANSFORM = re.compile(r"[\s,]*(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^()]*)\)")
_UNITS_PX = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54,
             "in": 96.0}
_ARITY = {"M": 2, "L": 2, "T": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "A": 7, "Z": 0}
_CONTAINERS = frozenset({"g", "a", "switch"})
_SHAPES = frozenset({"path", "polyline", "polygon", "line"})


class _Budget:
  """Counts points and path commands across the file and stops at the caps."""

  def __init__(self, path: str):
    self.path = path
    self.points = 0
    self.commands = 0

  def take_points(self, n: float) -> int:
    if not n <= common.MAX_POINTS - self.points:  # also refuses NaN
      fail(self.path, f"more than {common.MAX_POINTS} points once curves are flattened")
    self.points += int(n)
    return int(n)

  def take_command(self) -> None:
    self.commands += 1
    if self.commands > common.MAX_PATH_COMMANDS:
      fail(self.path, f"more than {common.MAX_PATH_COMMANDS} path commands")


class _Scanner:
  """Numbers and flags, one at a time, from SVG attribute text."""

  def __init__(self, path: str, where: str, text: str):
    self.path, self.where, self.text, self.pos = path, where, text, 0

  def at_end(self) -> bool:
    self.pos = _SEPARATORS.match(self.text, self.pos).end()
    return self.pos >= len(self.text)

  def error(self, problem: str):
    snippet = self.text[self.pos:self.pos + 20]
    fail(self.path, f"{self.where}: {problem} at character {self.pos} ({snippet!r})")

  def number(self) -> float:
    if self.at_end():
      self.error("missing number")
    m = _NUMBER.match(self.text, self.pos)
    if m is None:
      self.error("expected a number")
    self.pos = m.end()
    v = float(m.group())
    if not math.isfinite(v):
      fail(self.path, f"{self.where}: non-finite coordinate {m.group()[:20]!r}")
    return v

  def flag(self) -> bool:
    self.at_end()
    ch = self.text[self.pos:self.pos + 1]
    if ch not in ("0", "1") or not ch:
      self.error("expected an arc flag (0 or 1)")
    self.pos += 1
    return ch == "1"

  def numbers(self) -> list:
    out = []
    while not self.at_end():
      out.append(self.number())
    return out


def _affine(a, b, c, d, e, f) -> np.ndarray:
  return np.array([[a, c, e], [b, d, f], [0.0, 0.0, 1.0]])


def parse_transform(path: str, text: str) -> np.ndarray:
  """The 3x3 matrix of an SVG transform list."""
  m = np.eye(3)
  pos = 0
  while True:
    item = _TRANSFORM.match(text, pos)
    if item is None:
      rest = text[pos:].strip(" \t\r\n\f,")
      if rest:
        fail(path, f"unsupported transform {rest[:40]!r}")
      return m
    pos = item.end()
    name = item.group(1)
    args = _Scanner(path, f"transform {name}", item.group(2)).numbers()
    n = len(args)
    ok = {"matrix": n == 6, "translate": n in (1, 2), "scale": n in (1, 2),
          "rotate": n in (1, 3), "skewX": n == 1, "skewY": n == 1}[name]
    if not ok:
      fail(path, f"transform {name} given {n} numbers")
    if name == "matrix":
      t = _affine(*args)
    elif name == "translate":
      t = _affine(1, 0, 0, 1, args[0], args[1] if n == 2 else 0.0)
    elif name == "scale":
      t = _affine(args[0], 0, 0, args[1] if n == 2 else args[0], 0, 0)
    elif name == "rotate":
      r = math.radians(args[0])
      t = _affine(math.cos(r), math.sin(r), -math.sin(r), math.cos(r), 0, 0)
      if n == 3:
        cx, cy = args[1], args[2]
        t = _affine(1, 0, 0, 1, cx, cy) @ t @ _affine(1, 0, 0, 1, -cx, -cy)
    elif name == "skewX":
      t = _affine(1, 0, math.tan(math.radians(args[0])), 1, 0, 0)
    else:
      t = _affine(1, math.tan(math.radians(args[0])), 0, 1, 0, 0)
    m = m @ t


def _length(path: str, name: str, text: Optional[str]) -> Optional[float]:
  """An absolute length in px, or None when absent or relative (%, em, ex)."""
  if text is None:
    return None
  m = _LENGTH.match(text)
  if m is None:
    fail(path, f"<svg> {name}={text[:40]!r} is not a length")
  unit = m.group(2)
  if unit in ("%", "em", "ex"):
    return None
  if unit not in _UNITS_PX:
    fail(path, f"<svg> {name}={text[:40]!r} has an unknown unit")
  v = float(m.group(1)) * _UNITS_PX[unit]
  if not (math.isfinite(v) and v > 0):
    fail(path, f"<svg> {name}={text[:40]!r} must be positive and finite")
  return v


def _viewport(path: str, attrib: dict):
  """(canvas size, matrix from the root's user space to canvas units)."""
  box = attrib.get("viewBox")
  if box is not None:
    vals = _Scanner(path, "viewBox", box).numbers()
    if len(vals) != 4 or not (vals[2] > 0 and vals[3] > 0):
      fail(path, f"viewBox {box[:60]!r} must be 'min-x min-y width height' with positive size")
    size = (vals[2], vals[3])
    m = _affine(1, 0, 0, 1, -vals[0], -vals[1])
  else:
    w = _length(path, "width", attrib.get("width"))
    h = _length(path, "height", attrib.get("height"))
    if w is None or h is None:
      fail(path, "no canvas size: the <svg> element has neither a viewBox nor absolute "
                 "width and height")
    size = (w, h)
    m = np.eye(3)
  return size, m


def _max_scale(m: np.ndarray) -> float:
  """Largest factor by which the matrix stretches a length (its top singular value)."""
  a, c, b, d = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
  p = (a * a + b * b + c * c + d * d) / 2
  q = math.hypot((a * a + b * b - c * c - d * d) / 2, a * c + b * d)
  return math.sqrt(p + q)


def _segment_count(budget: _Budget, n: float) -> int:
  n = max(1.0, math.ceil(n)) if math.isfinite(n) else math.inf
  return budget.take_points(n)


def _over(d: float, tol: float) -> float:
  """d / tol for segment counts: 0 for a straight piece, inf for a zero tolerance (a transform
  so large that it overflowed), never a division error."""
  if d == 0:
    return 0.0
  return d / tol if tol > 0 else math.inf


def _quadratic(budget, p0, p1, p2, tol):
  # Chords of 1/n of the parameter stray at most |P0 - 2 P1 + P2| / (4 n^2) from the curve.
  d = math.hypot(p0[0] - 2 * p1[0] + p2[0], p0[1] - 2 * p1[1] + p2[1])
  n = _segment_count(budget, math.sqrt(_over(d, 4 * tol)))
  t = np.arange(1, n + 1)[:, None] / n
  s = 1 - t
  return s * s * np.asarray(p0) + 2 * s * t * np.asarray(p1) + t * t * np.asarray(p2)


def _cubic(budget, p0, p1, p2, p3, tol):
  # |B''| <= 6 max(|P0 - 2 P1 + P2|, |P1 - 2 P2 + P3|), and chords stray |B''| / (8 n^2).
  d = max(math.hypot(p0[0] - 2 * p1[0] + p2[0], p0[1] - 2 * p1[1] + p2[1]),
          math.hypot(p1[0] - 2 * p2[0] + p3[0], p1[1] - 2 * p2[1] + p3[1]))
  n = _segment_count(budget, math.sqrt(_over(0.75 * d, tol)))
  t = np.arange(1, n + 1)[:, None] / n
  s = 1 - t
  return (s ** 3 * np.asarray(p0) + 3 * s * s * t * np.asarray(p1)
          + 3 * s * t * t * np.asarray(p2) + t ** 3 * np.asarray(p3))


def _arc(budget, p0, rx, ry, angle, large, sweep, p1, tol):
  """Points after p0 of an SVG elliptical arc (endpoint form, SVG 1.1 appendix F.6)."""
  if p0 == p1:
    return np.empty((0, 2))
  rx, ry = abs(rx), abs(ry)
  if rx == 0 or ry == 0:
    budget.take_points(1)
    return np.array([p1])
  phi = math.radians(angle % 360)
  cos, sin = math.cos(phi), math.sin(phi)
  hx, hy = (p0[0] - p1[0]) / 2, (p0[1] - p1[1]) / 2
  x1, y1 = cos * hx + sin * hy, -sin * hx + cos * hy
  # Products, not **: float ** raises OverflowError where * gives inf (caught later).
  ux, uy = x1 / rx, y1 / ry
  grow = ux * ux + uy * uy
  if grow > 1:  # radii too small to reach: scale them up just enough
    rx, ry = rx * math.sqrt(grow), ry * math.sqrt(grow)
  a, b = rx * y1, ry * x1
  num = rx * ry * rx * ry - a * a - b * b
  den = a * a + b * b
  k = math.sqrt(max(0.0, num / den)) if den > 0 else 0.0
  if large == sweep:
    k = -k
  cxp, cyp = k * rx * y1 / ry, -k * ry * x1 / rx
  cx = cos * cxp - sin * cyp + (p0[0] + p1[0]) / 2
  cy = sin * cxp + cos * cyp + (p0[1] + p1[1]) / 2
  t0 = math.atan2((y1 - cyp) / ry, (x1 - cxp) / rx)
  t1 = math.atan2((-y1 - cyp) / ry, (-x1 - cxp) / rx)
  dt = t1 - t0
  if sweep and dt < 0:
    dt += 2 * math.pi
  elif not sweep and dt > 0:
    dt -= 2 * math.pi
  r = max(rx, ry)
  # A chord spanning angle s strays r (1 - cos(s / 2)) from a circle of radius r.
  step = 2 * math.acos(1 - tol / r) if tol < r else math.pi / 2
  n = _segment_count(budget, abs(dt) / step if step > 0 else math.inf)
  t = t0 + dt * np.arange(1, n + 1) / n
  ex, ey = rx * np.cos(t), ry * np.sin(t)
  pts = np.stack([cx + cos * ex - sin * ey, cy + sin * ex + cos * ey], axis=1)
  pts[-1] = p1
  return pts


def path_subpaths(path: str, d: str, tol: float, budget: _Budget) -> list:
  """The subpaths of SVG path data as (N, 2) float64 arrays in the path's user space.

  A moveto followed by nothing draws nothing in SVG and is dropped; `M x y Z` is a dot.
  """
  sc = _Scanner(path, "path data", d)
  subpaths, current = [], None  # current: flat [x0, y0, x1, y1, ...] of the open subpath
  drawn = set()  # ids of subpaths that got a segment or a closepath
  x = y = 0.0
  start = (0.0, 0.0)
  cmd = None
  ctrl, ctrl_kind = None, None  # last control point, for S and T reflections

  def begin(px, py):
    nonlocal current
    current = [px, py]
    subpaths.append(current)
    budget.take_points(1)

  while not sc.at_end():
    ch = sc.text[sc.pos]
    if ch.isalpha():
      if ch.upper() not in _ARITY:
        sc.error(f"unknown path command {ch!r}")
      if cmd is None and ch not in "Mm":
        sc.error("path data must begin with a moveto (M or m)")
      cmd = ch
      sc.pos += 1
    elif cmd is None:
      sc.error("path data must begin with a moveto (M or m)")
    elif cmd in "Zz":
      sc.error("numbers after a closepath (Z)")
    budget.take_command()
    rel = cmd.islower()
    kind = cmd.upper()
    ox, oy = (x, y) if rel else (0.0, 0.0)
    if kind == "Z":
      if current is not None:
        drawn.add(id(current))
        if (x, y) != start:
          current.extend(start)
          budget.take_points(1)
      current = None
      x, y = start
      ctrl_kind = None
      continue
    args = [sc.number() if not (kind == "A" and i in (3, 4)) else sc.flag()
            for i in range(_ARITY[kind])]
    if kind == "M":
      x, y = ox + args[0], oy + args[1]
      start = (x, y)
      begin(x, y)
      cmd = "l" if rel else "L"  # further pairs are implicit linetos
      ctrl_kind = None
      continue
    if current is None:  # drawing right after Z starts a new subpath at its start
      begin(x, y)
    drawn.add(id(current))
    p0 = (x, y)
    if kind in "LHV":
      if kind == "L":
        x, y = ox + args[0], oy + args[1]
      elif kind == "H":
        x = ox + args[0]
      else:
        y = oy + args[0]
      budget.take_points(1)
      current.extend((x, y))
      ctrl_kind = None
      continue
    if kind in "CS":
      if kind == "C":
        c1 = (ox + args[0], oy + args[1])
        rest = args[2:]
      else:
        c1 = (2 * x - ctrl[0], 2 * y - ctrl[1]) if ctrl_kind == "C" else p0
        rest = args
      c2 = (ox + rest[0], oy + rest[1])
      x, y = ox + rest[2], oy + rest[3]
      current.extend(_cubic(budget, p0, c1, c2, (x, y), tol).ravel().tolist())
      ctrl, ctrl_kind = c2, "C"
    elif kind in "QT":
      if kind == "Q":
        c = (ox + args[0], oy + args[1])
        x, y = ox + args[2], oy + args[3]
      else:
        c = (2 * x - ctrl[0], 2 * y - ctrl[1]) if ctrl_kind == "Q" else p0
        x, y = ox + args[0], oy + args[1]
      current.extend(_quadratic(budget, p0, c, (x, y), tol).ravel().tolist())
      ctrl, ctrl_kind = c, "Q"
    else:
      x, y = ox + args[5], oy + args[6]
      arc = _arc(budget, p0, args[0], args[1], args[2], args[3], args[4], (x, y), tol)
      current.extend(arc.ravel().tolist())
      ctrl_kind = None
  return [np.array(flat, dtype=np.float64).reshape(-1, 2)
          for flat in subpaths if id(flat) in drawn]


def _point_list(path: str, where: str, text: str) -> np.ndarray:
  vals = _Scanner(path, where, text).numbers()
  if len(vals) % 2:
    fail(path, f"{where}: odd count of numbers ({len(vals)})")
  return np.array(vals, dtype=np.float64).reshape(-1, 2)


def _coordinate(path: str, where: str, text: Optional[str]) -> float:
  if text is None:
    return 0.0
  m = _LENGTH.match(text)
  if m is None or m.group(2) not in ("", "px"):
    fail(path, f"{where}={text[:40]!r} is not a number")
  v = float(m.group(1))
  if not math.isfinite(v):
    fail(path, f"{where}: non-finite coordinate")
  return v


_SVG_NAMESPACE = "{http://www.w3.org/2000/svg}"
_HIDDEN_STYLE = re.compile(r"(?:^|;)\s*display\s*:\s*none\s*(?:;|$)")


def _local(tag: str) -> str:
  """The element name in the SVG namespace (or none); "" for other namespaces' elements."""
  if tag.startswith("{"):
    return tag[len(_SVG_NAMESPACE):] if tag.startswith(_SVG_NAMESPACE) else ""
  return tag


def _hidden(attrib: dict) -> bool:
  return (attrib.get("display", "").strip() == "none"
          or _HIDDEN_STYLE.search(attrib.get("style", "")) is not None)


class _StrokeCollector:
  """Target for the XML parser: turns shape elements into strokes as they stream past."""

  def __init__(self, path: str, tolerance: float):
    self.path, self.tolerance = path, tolerance
    self.stack = []  # per open element: matrix to canvas units, or None inside a skipped one
    self.strokes = []
    self.canvas = None
    self.elements = 0
    self.budget = _Budget(path)

  def start(self, tag, attrib):
    self.elements += 1
    if self.elements > common.MAX_SVG_ELEMENTS:
      fail(self.path, f"more than {common.MAX_SVG_ELEMENTS} elements")
    if len(self.stack) >= common.MAX_SVG_DEPTH:
      fail(self.path, f"elements nested deeper than {common.MAX_SVG_DEPTH}")
    name = _local(tag)
    if not self.stack:
      if name != "svg":
        fail(self.path, f"the root element is <{tag[:60]}>, not <svg>")
      self.canvas, m = _viewport(self.path, attrib)
      self.stack.append(self._with_transform(m, attrib))
      return
    parent = self.stack[-1]
    if parent is None or _hidden(attrib):
      self.stack.append(None)
      return
    if name == "svg":
      fail(self.path, "nested <svg> elements are not supported")
    if name in _CONTAINERS:
      self.stack.append(self._with_transform(parent, attrib))
      return
    if name in _SHAPES:
      self._shape(name, attrib, self._with_transform(parent, attrib))
    self.stack.append(None)  # children of shapes and of unknown elements draw nothing

  def end(self, tag):
    self.stack.pop()

  def close(self):
    return None

  def _with_transform(self, m, attrib):
    text = attrib.get("transform")
    return m if text is None else m @ parse_transform(self.path, text)

  def _shape(self, name, attrib, m):
    scale = _max_scale(m)
    tol = self.tolerance / scale if scale > 0 else math.inf
    where = f"<{name}>"
    if name == "path":
      parts = path_subpaths(self.path, attrib.get("d", ""), tol, self.budget)
    elif name == "line":
      pts = [[_coordinate(self.path, f"{where} {k}", attrib.get(k)) for k in ks]
             for ks in (("x1", "y1"), ("x2", "y2"))]
      self.budget.take_points(2)
      parts = [np.array(pts, dtype=np.float64)]
    else:
      pts = _point_list(self.path, f"{where} points", attrib.get("points", ""))
      self.budget.take_points(len(pts) + 1)
      if name == "polygon" and len(pts) > 1 and not np.array_equal(pts[0], pts[-1]):
        pts = np.concatenate([pts, pts[:1]], axis=0)
      parts = [pts] if len(pts) else []
    for p in parts:
      q = (p @ m[:2, :2].T + m[:2, 2]).astype(np.float32)
      if not np.all(np.isfinite(q)):
        fail(self.path, f"{where}: non-finite coordinate after transforms")
      self.strokes.append(q)


def _parse(path: str, data: bytes, collector: "_StrokeCollector") -> None:
  try:
    parser = DefusedXMLParser(target=collector, forbid_dtd=False, forbid_entities=True,
                              forbid_external=True)
    parser.feed(data)
    parser.close()
  except DefusedXmlException as e:
    fail(path, f"refused: {e}; entity declarations and external references are not allowed")
  except ParseError as e:
    fail(path, f"malformed XML ({e})")
  except (LookupError, UnicodeError, RecursionError) as e:  # odd encodings in the declaration
    fail(path, f"malformed XML ({common.describe(e)})")


def read(path: str, tolerance: float = FLATTEN_TOLERANCE) -> Sketch:
  data = common.read_capped(path, common.MAX_SVG_BYTES, "SVG file")
  collector = _StrokeCollector(path, tolerance)
  # Overflow in hostile numbers shows up as inf/NaN, refused where strokes are made.
  with np.errstate(all="ignore"):
    _parse(path, data, collector)
  if collector.canvas is None:
    fail(path, "no <svg> element")
  if not collector.strokes:
    fail(path, "empty drawing: no path, polyline, polygon or line")
  return common.make_sketch(path, collector.strokes, collector.canvas)


def _size(v: float) -> str:
  return str(int(v)) if float(v).is_integer() and abs(v) < 2 ** 53 else repr(float(v))


def encode(sketch: Sketch) -> str:
  w, h = (_size(v) for v in sketch.canvas_size)
  width = format_number(max(1.0, 0.01 * max(sketch.canvas_size)))
  out = ['<?xml version="1.0" encoding="UTF-8"?>',
         f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" '
         f'viewBox="0 0 {w} {h}">',
         f'<g fill="none" stroke="#000000" stroke-width="{width}" stroke-linecap="round" '
         'stroke-linejoin="round">']
  for s in sketch.strokes:
    pts = [f"{format_number(px)} {format_number(py)}" for px, py in s]
    # A lone moveto draws nothing; "M x y Z" is the SVG spelling of a dot.
    d = "M" + pts[0] + ("L" + " ".join(pts[1:]) if len(pts) > 1 else "Z")
    out.append(f'<path d="{d}"/>')
  out += ["</g>", "</svg>", ""]
  return "\n".join(out)


def write(sketch: Sketch, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(encode(sketch))
