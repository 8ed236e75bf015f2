"""Clipping polylines to an axis-aligned rectangle (Liang-Barsky, all segments of all strokes
in one vectorised pass: this runs per sample on the input hosts).

A stroke that leaves the rectangle and comes back becomes several pieces; per-point extras
(times, pressures) are interpolated at the cut points, and each piece remembers its stroke.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sketchseg_jax.sketch.types import Sketch


def _clip(points, stroke_id, rect, extras):
  """Clips the polylines packed in `points` (stroke_id[i] = which polyline point i is on).

  Returns (pieces, piece_stroke, piece_extras): a list of (K, 2) float64 arrays, the stroke
  index of each, and for each extra a list of (K,) arrays.
  """
  x0, y0, x1, y1 = (float(v) for v in rect)
  n = len(points)
  same = stroke_id[1:] == stroke_id[:-1]
  starts = np.flatnonzero(np.r_[True, ~same])
  lone = starts[np.r_[starts[1:], n] - starts == 1]  # one-point strokes: a zero-length segment
  seg = np.sort(np.r_[np.flatnonzero(same), lone])
  dot = np.isin(seg, lone)
  nxt = np.where(dot, seg, seg + 1)
  a, d = points[seg], points[nxt] - points[seg]
  t0 = np.zeros(len(seg))
  t1 = np.ones(len(seg))
  ok = np.ones(len(seg), bool)
  with np.errstate(divide="ignore", invalid="ignore"):
    for axis, lo, hi in ((0, x0, x1), (1, y0, y1)):
      start, step = a[:, axis], d[:, axis]
      moving = step != 0
      t_lo, t_hi = (lo - start) / step, (hi - start) / step
      enter = np.where(step > 0, t_lo, t_hi)
      leave = np.where(step > 0, t_hi, t_lo)
      t0 = np.where(moving, np.maximum(t0, enter), t0)
      t1 = np.where(moving, np.minimum(t1, leave), t1)
      # A segment parallel to this axis' borders is in or out as a whole.
      ok &= moving | ((start >= lo) & (start <= hi))
  ok &= t0 <= t1
  if not ok.any():
    return [], [], [[] for _ in extras]
  # A kept segment continues the previous piece only when both meet at an uncut vertex of
  # the same stroke.
  joined = np.zeros(len(seg), bool)
  joined[1:] = (ok[:-1] & (t1[:-1] == 1.0) & (t0[1:] == 0.0) & ~dot[1:] & ~dot[:-1]
                & (stroke_id[seg[1:]] == stroke_id[seg[:-1]]))
  begin = ok & ~joined
  emit = np.stack([begin, ok & ~dot], axis=1).reshape(-1)

  def cut(values):
    delta = values[nxt] - values[seg]
    shape = (-1,) + (1,) * (values.ndim - 1)
    ends = np.stack([values[seg] + t0.reshape(shape) * delta,
                     values[seg] + t1.reshape(shape) * delta], axis=1)
    return ends.reshape((-1,) + values.shape[1:])[emit]

  pts = cut(points)
  # Rounding in t can overshoot a border by an ulp; the pieces must stay inside.
  pts[:, 0] = np.clip(pts[:, 0], x0, x1)
  pts[:, 1] = np.clip(pts[:, 1], y0, y1)
  bounds = (np.cumsum(emit) - 1)[0::2][begin][1:]
  piece_stroke = stroke_id[seg[begin]]
  return (np.split(pts, bounds), [int(i) for i in piece_stroke],
          [np.split(cut(e), bounds) for e in extras])


def clip_polyline(points: np.ndarray, rect, extras: Sequence[np.ndarray] = ()) -> list:
  """Pieces of the (N, 2) polyline inside rect = (x0, y0, x1, y1), borders included.

  Returns a list of (piece_points, [piece_extra, ...]) in drawing order.
  """
  p = np.asarray(points, np.float64)
  pieces, _, ex = _clip(p, np.zeros(len(p), np.int64), rect,
                        [np.asarray(e, np.float64) for e in extras])
  return [(piece, [e[i] for e in ex]) for i, piece in enumerate(pieces)]


def clip_sketch(sketch: Sketch, rect) -> tuple:
  """(clipped sketch, source) where source[i] is the stroke that piece i came from.

  Labels, times and pressures follow their pieces; the canvas is unchanged.
  """
  if not sketch.strokes:
    return sketch, []
  counts = [len(s) for s in sketch.strokes]
  stroke_id = np.repeat(np.arange(len(counts)), counts)
  points = np.concatenate(sketch.strokes).astype(np.float64)
  extras = [np.concatenate(a).astype(np.float64) for a in (sketch.times, sketch.pressures)
            if a is not None]
  pieces, source, ex = _clip(points, stroke_id, rect, extras)
  ex = iter(ex)
  times = next(ex) if sketch.times is not None else None
  pressures = next(ex) if sketch.pressures is not None else None
  labels = None if sketch.labels is None else [sketch.labels[i] for i in source]
  return Sketch(pieces, sketch.canvas_size, times=times, pressures=pressures,
                labels=labels), source


def ink_length(sketch: Sketch) -> float:
  """Total polyline length, the measure of how much of a sketch a crop kept."""
  if not sketch.strokes:
    return 0.0
  pts = np.concatenate(sketch.strokes).astype(np.float64)
  step = np.linalg.norm(np.diff(pts, axis=0), axis=1)
  ends = np.cumsum([len(s) for s in sketch.strokes])[:-1] - 1  # steps between strokes
  step[ends] = 0.0
  return float(step.sum())
