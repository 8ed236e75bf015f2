"""The Sketch value type: ordered polylines on the canvas they were drawn on."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from sketchseg_jax.errors import UserError


class SketchFormatError(UserError):
  """A sketch file or value is malformed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class StrokeLabel:
  """What a stroke depicts: which object of the scene, and which part of it."""
  object_id: int = -1
  category: str = ""
  part: str = ""


def _frozen(a: np.ndarray) -> np.ndarray:
  a = np.ascontiguousarray(a)
  a.setflags(write=False)
  return a


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Sketch:
  """An immutable freehand sketch.

  strokes: ordered tuple of (N, 2) float32 polylines in canvas units, x right, y down.
  canvas_size: (width, height) of the canvas the strokes live on.
  times / pressures: optional per-stroke (N,) float32 arrays aligned with the points.
  labels: optional per-stroke StrokeLabel (which object and part a stroke depicts).

  Arrays are read-only, so copies share memory; the class pickles as plain numpy, which is
  what grain worker processes need.
  """
  strokes: tuple
  canvas_size: tuple
  times: Optional[tuple] = None
  pressures: Optional[tuple] = None
  labels: Optional[tuple] = None

  def __init__(self, strokes: Iterable[Any], canvas_size: Sequence[float],
               times: Optional[Iterable[Any]] = None,
               pressures: Optional[Iterable[Any]] = None,
               labels: Optional[Iterable[Optional[StrokeLabel]]] = None):
    pts = []
    for i, s in enumerate(strokes):
      a = np.asarray(s, dtype=np.float32)
      if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
        raise SketchFormatError(f"stroke {i} must be an (N>=1, 2) array, got shape {a.shape}")
      if not np.all(np.isfinite(a)):
        raise SketchFormatError(f"stroke {i} has a non-finite coordinate")
      pts.append(_frozen(a))
    if len(canvas_size) != 2:
      raise SketchFormatError(f"canvas_size must be (width, height), got {canvas_size!r}")
    w, h = float(canvas_size[0]), float(canvas_size[1])
    if not (np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0):
      raise SketchFormatError(f"canvas_size must be positive and finite, got {canvas_size!r}")
    object.__setattr__(self, "strokes", tuple(pts))
    object.__setattr__(self, "canvas_size", (w, h))
    object.__setattr__(self, "times", self._per_point("times", times, pts))
    object.__setattr__(self, "pressures", self._per_point("pressures", pressures, pts))
    if labels is not None:
      labels = tuple(labels)
      if len(labels) != len(pts):
        raise SketchFormatError(f"{len(labels)} labels for {len(pts)} strokes")
    object.__setattr__(self, "labels", labels)

  @staticmethod
  def _per_point(name, values, pts):
    if values is None:
      return None
    out = tuple(_frozen(np.asarray(v, dtype=np.float32).reshape(-1)) for v in values)
    if len(out) != len(pts) or any(v.shape[0] != p.shape[0] for v, p in zip(out, pts)):
      raise SketchFormatError(f"{name} must give one value per point of every stroke")
    return out

  @property
  def num_strokes(self) -> int:
    return len(self.strokes)

  @property
  def num_points(self) -> int:
    return sum(s.shape[0] for s in self.strokes)

  def replace(self, **changes) -> "Sketch":
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields.update(changes)
    return Sketch(**fields)

  def select(self, indices: Sequence[int]) -> "Sketch":
    """The sketch made of the strokes at `indices`, in that order, with their extras."""
    pick = lambda xs: None if xs is None else tuple(xs[i] for i in indices)
    return Sketch([self.strokes[i] for i in indices], self.canvas_size,
                  times=pick(self.times), pressures=pick(self.pressures),
                  labels=pick(self.labels))

  def bounds(self) -> tuple:
    """(xmin, ymin, xmax, ymax) of all points; raises on an empty sketch."""
    if not self.strokes:
      raise SketchFormatError("empty sketch has no bounds")
    allp = np.concatenate(self.strokes, axis=0)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

  def __eq__(self, other):
    if not isinstance(other, Sketch):
      return NotImplemented
    def same(a, b):
      if a is None or b is None:
        return a is None and b is None
      return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    return (self.canvas_size == other.canvas_size and same(self.strokes, other.strokes)
            and same(self.times, other.times) and same(self.pressures, other.pressures)
            and self.labels == other.labels)

  __hash__ = None

  def __repr__(self):
    return (f"Sketch({self.num_strokes} strokes, {self.num_points} points, "
            f"canvas={self.canvas_size[0]:g}x{self.canvas_size[1]:g})")
