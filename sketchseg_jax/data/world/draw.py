"""Freehand sketches from part outlines.

An object is drawn once, in its own normalised frame (longer side 1); `place` then maps that
drawing onto any canvas by a uniform scale and a shift, so the object-centred and the aligned
sketch of one object are the same drawing. The hand: outlines are resampled, wobbled at a slow
and a faster wavelength, jittered, drift so closed shapes do not meet, overshoot or stop short,
break in two now and then, and boxy shapes are often drawn side by side with overshooting
corners. Big parts come first and details (holes, inner lines, thin spokes) last; small parts
and details are sometimes left out. Every stroke keeps the name of the part it draws.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sketchseg_jax.data.world.shapes import Part
from sketchseg_jax.sketch.types import Sketch, StrokeLabel


@dataclasses.dataclass(frozen=True)
class Style:
  """How the hand draws; lengths are shares of the object's longer side."""
  step: float = 0.03                 # spacing of stroke points
  wobble: Tuple[float, float] = (0.003, 0.012)
  wavelength: Tuple[float, float] = (0.3, 1.0)
  jitter: float = 0.002
  drift: float = 0.012
  overshoot: Tuple[float, float] = (-0.03, 0.06)   # extra length at stroke ends
  close: Tuple[float, float] = (-0.05, 0.14)      # extra share of a closed outline's length
  side_by_side: float = 0.5          # boxy outlines drawn edge by edge
  broken: float = 0.15               # a stroke breaks in two
  retrace: float = 0.05              # a stroke is drawn twice
  omit_small: float = 0.15           # a small part (bbox diagonal < 0.2) is left out
  omit_detail: float = 0.3           # a detail line is left out
  width_spread: float = 0.18         # log-normal spread of per-stroke widths


@dataclasses.dataclass(frozen=True, eq=False)
class Drawing:
  """Strokes in the object's frame, the part each draws, per-stroke width multipliers and the
  object's box (x0, y0, x1, y1) in that frame (from the geometry, not the wobbly ink)."""
  strokes: Tuple[np.ndarray, ...]
  parts: Tuple[str, ...]
  widths: np.ndarray
  box: Tuple[float, float, float, float]

  def drawn_parts(self) -> List[str]:
    """Names of the parts with at least one stroke, in first-stroke order."""
    seen: List[str] = []
    for p in self.parts:
      if p not in seen:
        seen.append(p)
    return seen


def draw_object(parts: Sequence[Part], box, rng: np.random.Generator,
                style: Style = Style()) -> Drawing:
  """Draws the parts of one object (frame with longer side about 1) in a freehand style.

  Outline stretches hidden behind parts painted later (in front) are not drawn, as a person
  drawing from the photo would leave them out."""
  size = max(box[2] - box[0], box[3] - box[1])
  outlines, details = [], []
  for k, p in enumerate(parts):
    pts = p.points()
    if pts.shape[0] == 0:
      continue
    extent = float(np.hypot(*(pts.max(0) - pts.min(0)))) / size
    if extent < 0.2 and rng.random() < style.omit_small:
      continue
    key = -extent + rng.normal(0, 0.08)
    for ring in p.polys:
      outlines.append((key, k, ring, True))
    for line, w in p.tubes:
      thin = w < 0.01 * size
      if thin and rng.random() < style.omit_detail:
        continue
      (details if thin else outlines).append((key, k, line, False))
    for ring in p.holes:
      if rng.random() >= style.omit_detail * 0.5:
        details.append((key, k, ring, True))
    for line in p.details:
      if rng.random() >= style.omit_detail:
        details.append((key, k, line, False))
  fronts = [_Cover(parts[k + 1:]) for k in range(len(parts))]
  strokes: List[np.ndarray] = []
  names: List[str] = []
  widths: List[float] = []
  for group, scale in ((outlines, 1.0), (details, 0.8)):
    order = sorted(range(len(group)), key=lambda i: (group[i][0], i))
    for i in order:
      _, k, path, closed = group[i]
      for clean in _paths(path, closed, size, rng, style):
        for run in fronts[k].visible_runs(clean):
          for s in _stroke(run, size, rng, style):
            strokes.append(s)
            names.append(parts[k].name)
            widths.append(scale * float(np.exp(rng.normal(0, style.width_spread))))
  return Drawing(tuple(strokes), tuple(names), np.asarray(widths, np.float32),
                 tuple(float(v) for v in box))


def place(drawing: Drawing, scale: float, offset, canvas_size, object_id: int, category: str,
          keep_parts: Optional[Sequence[str]] = None) -> Tuple[Sketch, np.ndarray]:
  """The drawing as a Sketch on `canvas_size`, canvas = frame * scale + offset, each stroke
  labelled StrokeLabel(object_id, category, part); only `keep_parts` when given. Returns the
  sketch and its per-stroke width multipliers."""
  idx = [i for i, p in enumerate(drawing.parts) if keep_parts is None or p in keep_parts]
  if not idx:
    return Sketch([], canvas_size, labels=[]), np.zeros(0, np.float32)
  counts = [drawing.strokes[i].shape[0] for i in idx]
  allp = np.concatenate([drawing.strokes[i] for i in idx], 0) * scale + np.asarray(offset)
  strokes = np.split(allp.astype(np.float32), np.cumsum(counts)[:-1])
  labels = [StrokeLabel(int(object_id), category, drawing.parts[i]) for i in idx]
  return Sketch(strokes, canvas_size, labels=labels), drawing.widths[idx]


def centred(box, canvas: float, margin: float, shift=(0.0, 0.0)) -> Tuple[float, np.ndarray]:
  """(scale, offset) fitting `box` into a canvas x canvas square less `margin` (a share of
  the canvas on each side), centred, then moved by `shift` canvas units."""
  w, h = box[2] - box[0], box[3] - box[1]
  scale = canvas * (1 - 2 * margin) / max(w, h)
  centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
  return scale, canvas / 2 - centre * scale + np.asarray(shift, np.float64)


# ----------------------------------------------------------------------------- the hand

def _paths(path: np.ndarray, closed: bool, size: float, rng, st: Style) -> List[np.ndarray]:
  """Clean resampled lines a hand would follow for one outline or line."""
  if closed and len(path) <= 8 and rng.random() < st.side_by_side:
    runs, cur = [], [path[0]]
    for k in range(1, len(path) + 1):
      cur.append(path[k % len(path)])
      if k < len(path) and rng.random() < 0.55:
        runs.append(np.asarray(cur))
        cur = [path[k]]
    runs.append(np.asarray(cur))
    return [_open(run, size, rng, st) for run in runs]
  if closed:
    return [_ring(path, size, rng, st)]
  return [_open(path, size, rng, st)]


class _Cover:
  """The filled area of the parts in front of a part (their polygons less their holes)."""

  def __init__(self, parts: Sequence[Part]):
    self.polys = [(p, p.min(0), p.max(0)) for q in parts for p in q.polys]
    self.holes = [(p, p.min(0), p.max(0)) for q in parts for p in q.holes]

  def visible_runs(self, line: np.ndarray) -> List[np.ndarray]:
    if not self.polys:
      return [line]
    lo, hi = line.min(0), line.max(0)
    hidden = np.zeros(len(line), bool)
    for poly, plo, phi in self.polys:
      if np.all(plo <= hi) and np.all(lo <= phi):
        hidden |= _inside(line, poly)
    if not hidden.any():
      return [line]
    for hole, plo, phi in self.holes:
      if np.all(plo <= hi) and np.all(lo <= phi):
        hidden &= ~_inside(line, hole)
    # a lone hidden point is a boundary coincidence, not occlusion
    lone = hidden.copy()
    lone[1:] &= ~hidden[:-1]
    lone[:-1] &= ~hidden[1:]
    hidden &= ~lone
    cuts = np.flatnonzero(np.diff(hidden.astype(np.int8))) + 1
    runs = np.split(line, cuts)
    first_hidden = bool(hidden[0])
    return [r for i, r in enumerate(runs) if (i % 2 == 1) == first_hidden and len(r) >= 2]


def _inside(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
  """Even-odd point-in-polygon for every point of p (N, 2)."""
  x, y = p[:, :1], p[:, 1:]
  x0, y0 = poly[:, 0], poly[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  crosses = (y0 > y) != (y1 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    xs = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
  return ((crosses & (x < xs)).sum(1) % 2) == 1


def _arclength(path: np.ndarray) -> np.ndarray:
  seg = np.sqrt(((path[1:] - path[:-1]) ** 2).sum(1))
  return np.concatenate([[0.0], np.cumsum(seg)])


def _count(length: float, size: float, st: Style) -> int:
  return max(4, int(np.ceil(length / (size * st.step))) + 1)


def _ring(path, size, rng, st):
  """A closed outline from a random start, going round 1 + `close` times."""
  loop = np.concatenate([path, path[:1]], 0)
  cum = _arclength(loop)
  total = cum[-1]
  extent = total * (1 + rng.uniform(*st.close))
  n = _count(extent, size, st)
  t = (rng.uniform(0, total) + np.linspace(0, extent, n)) % total
  return np.stack([np.interp(t, cum, loop[:, 0]), np.interp(t, cum, loop[:, 1])], 1)


def _open(path, size, rng, st):
  """An open line, each end extended (overshoot) or cut short along its end direction."""
  cum = _arclength(path)
  total = cum[-1]
  if total <= 1e-9:
    return np.repeat(path[:1], 2, 0)
  e0, e1 = rng.uniform(*st.overshoot, 2) * size
  e0, e1 = max(e0, -0.3 * total), max(e1, -0.3 * total)
  n = _count(total + e0 + e1, size, st)
  t = np.linspace(-e0, total + e1, n)
  out = np.stack([np.interp(t, cum, path[:, 0]), np.interp(t, cum, path[:, 1])], 1)
  d0 = path[1] - path[0]
  d1 = path[-1] - path[-2]
  d0 /= np.linalg.norm(d0) + 1e-12
  d1 /= np.linalg.norm(d1) + 1e-12
  before, after = t < 0, t > total
  out[before] += d0 * t[before, None]
  out[after] += d1 * (t[after, None] - total)
  return out


def _stroke(p, size, rng, st) -> List[np.ndarray]:
  """Wobble, drift and jitter on a resampled line; sometimes broken or retraced."""
  n = p.shape[0]
  tangent = np.empty_like(p)
  tangent[1:-1] = p[2:] - p[:-2]
  tangent[0], tangent[-1] = p[1] - p[0], p[-1] - p[-2]
  tangent /= np.sqrt((tangent ** 2).sum(1, keepdims=True)) + 1e-12
  normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
  u = np.linspace(0.0, 1.0, n)
  length = float(_arclength(p)[-1]) / size
  cycles = length / rng.uniform(*st.wavelength)
  ph = rng.uniform(0, 2 * np.pi, 2)
  amp = rng.uniform(*st.wobble) * size
  wob = amp * (np.sin(2 * np.pi * cycles * u + ph[0])
               + 0.4 * np.sin(5.3 * np.pi * cycles * u + ph[1]))
  out = p + normal * wob[:, None] + np.outer(u, rng.normal(0, st.drift * size, 2))
  out += rng.normal(0, st.jitter * size, out.shape)
  pieces = [out]
  if n >= 8 and rng.random() < st.broken:
    k = int(rng.integers(n // 4, 3 * n // 4))
    second = out[k + int(rng.integers(-1, 2)):] + rng.normal(0, 0.006 * size, 2)
    pieces = [out[:k], second]
  if rng.random() < st.retrace:
    pieces.append(out + normal * (rng.normal(0, 0.008) * size)
                  + rng.normal(0, st.jitter * size, out.shape))
  return [q for q in pieces if q.shape[0] >= 2]
