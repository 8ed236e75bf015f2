"""Part geometry: outlines and thick lines in an object's own frame (x right, y down).

A `Part` is what a category builder returns for each named part: filled closed outlines
(`polys`), see-through cut-outs (`holes`, e.g. the inside of a bicycle wheel), thick lines
(`tubes`, e.g. a bicycle frame: filled in the photo, one centre-line stroke in the sketch) and
`details` (lines drawn on the part: dark lines in the photo, strokes in the sketch). `shape`
names the shape family; families such as "wheel" or "window" are built by the same function
in several categories, so a part sketch alone does not give the category away.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

Points = np.ndarray  # (N, 2) float64


@dataclasses.dataclass
class Part:
  name: str
  shape: str
  polys: List[Points] = dataclasses.field(default_factory=list)
  holes: List[Points] = dataclasses.field(default_factory=list)
  tubes: List[Tuple[Points, float]] = dataclasses.field(default_factory=list)
  details: List[Points] = dataclasses.field(default_factory=list)

  def transformed(self, matrix: np.ndarray, offset: np.ndarray) -> "Part":
    """The part under p -> p @ matrix.T + offset; tube widths scale by the mean stretch."""
    stretch = float(np.sqrt(abs(np.linalg.det(matrix))))
    move = lambda p: p @ matrix.T + offset
    return Part(self.name, self.shape, [move(p) for p in self.polys],
                [move(p) for p in self.holes],
                [(move(p), w * stretch) for p, w in self.tubes],
                [move(p) for p in self.details])

  def points(self) -> np.ndarray:
    """Every outline and line point (for bounding boxes)."""
    arrs = self.polys + self.holes + [p for p, _ in self.tubes] + self.details
    return np.concatenate(arrs, axis=0) if arrs else np.zeros((0, 2))

  def bbox(self) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the filled area, tube widths included (details excluded)."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for p in self.polys:
      lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0))
    for p, w in self.tubes:
      lo, hi = np.minimum(lo, p.min(0) - w / 2), np.maximum(hi, p.max(0) + w / 2)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def join(name: str, shape: str, pieces: Sequence[Part]) -> Part:
  """One part made of several pieces (two wheels, three windows)."""
  out = Part(name, shape)
  for p in pieces:
    out.polys += p.polys
    out.holes += p.holes
    out.tubes += p.tubes
    out.details += p.details
  return out


def objects_bbox(parts: Sequence[Part]) -> Tuple[float, float, float, float]:
  boxes = np.array([p.bbox() for p in parts if p.polys or p.tubes])
  return (float(boxes[:, 0].min()), float(boxes[:, 1].min()),
          float(boxes[:, 2].max()), float(boxes[:, 3].max()))


# ----------------------------------------------------------------------------- primitives

def pts(*xy) -> Points:
  return np.asarray(xy, np.float64).reshape(-1, 2)


def ellipse(cx, cy, rx, ry, n=28, rot=0.0, a0=0.0, a1=2 * np.pi, closed=True) -> Points:
  """Points on an ellipse; a partial arc from a0 to a1 when closed=False."""
  t = (np.linspace(a0, a1, n, endpoint=not closed) if not closed
       else a0 + np.arange(n) * (2 * np.pi / n))
  x, y = rx * np.cos(t), ry * np.sin(t)
  c, s = np.cos(rot), np.sin(rot)
  return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def rect(x0, y0, x1, y1) -> Points:
  return pts(x0, y0, x1, y0, x1, y1, x0, y1)


def rounded(vertices: Points, radius, n=4) -> Points:
  """A closed polygon with every corner cut by a quadratic curve reaching `radius` along
  both edges (clamped to 45% of the shorter edge), so boxes look made, not ruled."""
  v = np.asarray(vertices, np.float64)
  radii = np.broadcast_to(np.asarray(radius, np.float64), (len(v),))
  out = []
  t = np.linspace(0, 1, n)[:, None]
  for i in range(len(v)):
    prev, cur, nxt = v[i - 1], v[i], v[(i + 1) % len(v)]
    d0, d1 = np.linalg.norm(prev - cur), np.linalg.norm(nxt - cur)
    r = min(radii[i], 0.45 * d0, 0.45 * d1)
    if r <= 1e-9:
      out.append(cur[None])
      continue
    a = cur + (prev - cur) * (r / d0)
    b = cur + (nxt - cur) * (r / d1)
    out.append((1 - t) ** 2 * a + 2 * t * (1 - t) * cur + t ** 2 * b)
  return np.concatenate(out, 0)


def bezier(p0, p1, p2, n=10) -> Points:
  """Quadratic curve from p0 to p2 pulled towards p1."""
  t = np.linspace(0, 1, n)[:, None]
  p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
  return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2


def superellipse(cx, cy, rx, ry, power, n=40) -> Points:
  """|x/rx|^p + |y/ry|^p = 1: a circle at p=2, a rounded square as p grows."""
  t = np.arange(n) * (2 * np.pi / n)
  c, s = np.cos(t), np.sin(t)
  e = 2.0 / power
  return np.stack([cx + rx * np.sign(c) * np.abs(c) ** e, cy + ry * np.sign(s) * np.abs(s) ** e], 1)


def cloud(cx, cy, rx, ry, bumps, depth, phase, n=72) -> Points:
  """A scalloped blob (a tree crown): outward arcs meeting in shallow notches."""
  t = np.arange(n) * (2 * np.pi / n)
  r = 1.0 - depth + depth * np.abs(np.sin(bumps * t / 2 + phase))
  return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], 1)


def loop(cx, cy, r_out, r_in, a0, a1, n=14) -> Points:
  """A thick arc (annulus sector) from angle a0 to a1: a mug handle."""
  outer = ellipse(cx, cy, r_out, r_out, n, a0=a0, a1=a1, closed=False)
  inner = ellipse(cx, cy, r_in, r_in, n, a0=a0, a1=a1, closed=False)[::-1]
  return np.concatenate([outer, inner], 0)


def leaf(p0, p1, width, n=9) -> Points:
  """Two arcs from p0 to p1 bulging `width` to either side."""
  p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
  d = p1 - p0
  normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-12)
  mid = (p0 + p1) / 2
  side_a = bezier(p0, mid + normal * width, p1, n)
  side_b = bezier(p1, mid - normal * width, p0, n)
  return np.concatenate([side_a[:-1], side_b[:-1]], 0)


def closed_line(ring: Points) -> Points:
  """A closed outline as an open polyline (first point repeated), for details."""
  return np.concatenate([ring, ring[:1]], 0)


def clip_x(poly: Points, lo: float, hi: float) -> Points:
  """The part of a convex-ish polygon between x = lo and x = hi (Sutherland-Hodgman)."""
  def cut(p, keep, x_edge):
    out = []
    for i in range(len(p)):
      a, b = p[i - 1], p[i]
      ia, ib = keep(a[0]), keep(b[0])
      if ib:
        if not ia:
          out.append(a + (b - a) * ((x_edge - a[0]) / (b[0] - a[0])))
        out.append(b)
      elif ia:
        out.append(a + (b - a) * ((x_edge - a[0]) / (b[0] - a[0])))
    return np.asarray(out, np.float64).reshape(-1, 2)
  poly = cut(poly, lambda x: x >= lo, lo)
  return cut(poly, lambda x: x <= hi, hi) if len(poly) else poly


def shrink(poly: Points, margin: float) -> Points:
  """A polygon pulled towards its centroid so its extent loses about `margin` on each side."""
  c = poly.mean(0)
  ext = np.maximum(poly.max(0) - poly.min(0), 1e-9)
  return c + (poly - c) * np.maximum(1 - 2 * margin / ext, 0.05)


# ----------------------------------------------------------------------------- shared parts

def wheel(cx, cy, r, hub=0.4, rim=None, spokes=0, width=0.02) -> Part:
  """A wheel: a solid tyre with a hub circle (car, bus), or with `rim` set, a ring of that
  inner radius share with a hub and `spokes` thin spokes (bicycle)."""
  part = Part("wheel", "wheel", polys=[ellipse(cx, cy, r, r, 32)])
  if rim is None:
    part.details.append(closed_line(ellipse(cx, cy, r * hub, r * hub, 16)))
    return part
  part.holes.append(ellipse(cx, cy, r * rim, r * rim, 28))
  part.polys.append(ellipse(cx, cy, r * hub * 0.4, r * hub * 0.4, 10))
  for a in np.arange(spokes) * (2 * np.pi / max(spokes, 1)):
    tip = (cx + r * rim * np.cos(a), cy + r * rim * np.sin(a))
    part.tubes.append((pts(cx, cy, *tip), width))
  return part


def window(x0, y0, x1, y1, style: str, bars: bool) -> Part:
  """A window: "rect", "round" (a porthole) or "arch", with cross bars when `bars`."""
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  if style == "round":
    ring = ellipse(cx, cy, (x1 - x0) / 2, (y1 - y0) / 2, 22)
  elif style == "arch":
    r = (x1 - x0) / 2
    top = ellipse(cx, y0 + r, r, r, 12, a0=np.pi, a1=2 * np.pi, closed=False)
    ring = np.concatenate([top, pts(x1, y1, x0, y1)], 0)
  else:
    ring = rect(x0, y0, x1, y1)
  part = Part("window", "window", polys=[ring])
  if bars:
    part.details.append(pts(cx, y0, cx, y1))
    if style != "round":
      part.details.append(pts(x0, cy, x1, cy))
  return part


def eye(cx, cy, rx, ry, pupil: float, slit: bool) -> Part:
  """An eye: an ellipse with a round pupil or a slit (cat), as a detail."""
  part = Part("eye", "eye", polys=[ellipse(cx, cy, rx, ry, 16)])
  if slit:
    part.details.append(pts(cx, cy - ry * 0.8, cx, cy + ry * 0.8))
  elif pupil > 0:
    part.details.append(closed_line(ellipse(cx, cy, rx * pupil, ry * pupil, 10)))
  return part


def door(x0, y0, x1, y1, arched: bool, knob_side: int) -> Part:
  """A door with a knob (house, bus)."""
  if arched:
    r = (x1 - x0) / 2
    top = ellipse((x0 + x1) / 2, y0 + r, r, r, 10, a0=np.pi, a1=2 * np.pi, closed=False)
    ring = np.concatenate([top, pts(x1, y1, x0, y1)], 0)
  else:
    ring = rect(x0, y0, x1, y1)
  kx = x1 - (x1 - x0) * 0.2 if knob_side > 0 else x0 + (x1 - x0) * 0.2
  kr = (x1 - x0) * 0.07
  knob = closed_line(ellipse(kx, (y0 + y1) / 2 + (y1 - y0) * 0.08, kr, kr, 8))
  return Part("door", "door", polys=[ring], details=[knob])


def fin(base0, base1, tip, bend: float) -> Part:
  """A fin: a triangle from a base edge to a tip, its trailing edge curved by `bend`."""
  base0, base1, tip = (np.asarray(p, np.float64) for p in (base0, base1, tip))
  mid = (base1 + tip) / 2
  d = tip - base1
  pull = mid + np.array([-d[1], d[0]]) * bend
  return Part("fin", "fin", polys=[np.concatenate([base0[None], tip[None],
                                                   bezier(tip, pull, base1, 6)[1:]], 0)])
