"""Stroke-level augmentations: they change the query sketch and nothing it is paired with.

Each applies to sample["sketch"] and, in order, to every sketch of sample["queries"]. Targets and
masks stay as they are: a noisier drawing of the same thing depicts the same thing.
"""

from __future__ import annotations

import numpy as np

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment.sample import (
    as_rng, draw, draw_int, map_sketches, transform_points)


def _check_prob(p, name):
  if not 0.0 <= float(p) <= 1.0:
    raise UserError(f"{name} must be in [0, 1], got {p!r}")


def _select(sketch, widths, keep):
  keep = [int(i) for i in keep]
  return sketch.select(keep), None if widths is None else np.asarray(widths, np.float32)[keep]


def stroke_dropout(sample: dict, rng, p: float = 0.1) -> dict:
  """Drops each stroke with probability p; at least one stroke always stays."""
  _check_prob(p, "stroke_dropout p")
  rng = as_rng(rng)

  def one(sketch, widths, rng):
    n = sketch.num_strokes
    if n == 0:
      return sketch, widths
    keep = np.flatnonzero(rng.random(n) >= p)
    if keep.size == 0:
      keep = [int(rng.integers(n))]
    return _select(sketch, widths, keep)
  return map_sketches(sample, rng, one)


def first_n_strokes(sample: dict, rng, n=None, fraction=(0.3, 1.0)) -> dict:
  """A coarse sketch: the first n strokes in drawing order (n an int or an int range), or,
  when n is None, the first ceil(fraction * strokes) (fraction a number or a range); >= 1."""
  rng = as_rng(rng)

  def one(sketch, widths, rng):
    total = sketch.num_strokes
    if total == 0:
      return sketch, widths
    if n is not None:
      k = draw_int(rng, n, "first_n_strokes n")
    else:
      f = draw(rng, fraction, "first_n_strokes fraction")
      k = int(np.ceil(f * total))
    return _select(sketch, widths, range(min(max(k, 1), total)))
  return map_sketches(sample, rng, one)


def point_jitter(sample: dict, rng, sigma=0.004) -> dict:
  """Adds Gaussian noise to every point; sigma (number or range) is a fraction of the
  canvas' longer side, so the same setting means the same on any canvas."""
  rng = as_rng(rng)

  def one(sketch, widths, rng):
    if sketch.num_strokes == 0:
      return sketch, widths
    s = draw(rng, sigma, "point_jitter sigma") * max(sketch.canvas_size)
    noise = rng.normal(0.0, 1.0, size=(sketch.num_points, 2)) * s
    return transform_points(sketch, lambda pts: pts + noise), widths
  return map_sketches(sample, rng, one)


def width_jitter(sample: dict, rng, scale=(0.6, 1.6)) -> dict:
  """Multiplies each stroke's width by a factor drawn log-uniformly from `scale`; the factors
  go to sample["stroke_widths"] (per stroke, multiplying any already there; the rasterizer's
  base width times these is the drawn width)."""
  rng = as_rng(rng)
  lo, hi = (float(scale), float(scale)) if np.isscalar(scale) else (float(v) for v in scale)
  if not 0 < lo <= hi:
    raise UserError(f"width_jitter scale must be positive with low <= high, got {scale!r}")

  def one(sketch, widths, rng):
    n = sketch.num_strokes
    factors = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)).astype(np.float32)
    base = np.ones(n, np.float32) if widths is None else np.asarray(widths, np.float32)
    return sketch, base * factors
  return map_sketches(sample, rng, one)


def affine_matrix(scale=1.0, rotation=0.0, shear=0.0, translate=(0.0, 0.0),
                  canvas_size=(1.0, 1.0)) -> np.ndarray:
  """2x3 matrix of scale, then shear (degrees, along x), then rotation (degrees, clockwise on
  a y-down canvas), about the canvas centre, then translation in canvas fractions."""
  cw, ch = canvas_size
  c = np.array([cw / 2.0, ch / 2.0])
  th, sh = np.deg2rad(rotation), np.deg2rad(shear)
  rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  shr = np.array([[1.0, np.tan(sh)], [0.0, 1.0]])
  lin = rot @ shr @ (np.eye(2) * scale)
  shift = c - lin @ c + np.array([translate[0] * cw, translate[1] * ch])
  return np.concatenate([lin, shift[:, None]], axis=1)


def affine(sample: dict, rng, scale=(0.8, 1.2), rotation=(-15.0, 15.0), shear=(-10.0, 10.0),
           translate=((-0.1, 0.1), (-0.1, 0.1))) -> dict:
  """Random scale, rotation, shear (degrees) and translation (canvas fractions, per axis)
  about the canvas centre. Each parameter is a fixed number or a (low, high) range;
  translate is a number, one (low, high) range of numbers shared by both axes, or a pair
  of such specs ((x spec), (y spec)).

  On an aligned pair this moves the sketch off its photo, so the result is marked
  aligned=False (the photo, masks, target and region are left as they are: the sketch still
  depicts the same thing, only no longer at the same place). Put geometric photo
  augmentations and partitioning before it in a chain.
  """
  rng = as_rng(rng)
  tx_spec, ty_spec = _translate_specs(translate)
  identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  moved = []

  def one(sketch, widths, rng):
    m = affine_matrix(draw(rng, scale, "affine scale"), draw(rng, rotation, "affine rotation"),
                      draw(rng, shear, "affine shear"),
                      (draw(rng, tx_spec, "affine translate x"),
                       draw(rng, ty_spec, "affine translate y")),
                      sketch.canvas_size)
    if np.array_equal(m, identity):
      return sketch, widths
    moved.append(True)
    return transform_points(sketch, lambda pts: pts @ m[:, :2].T + m[:, 2]), widths
  out = map_sketches(sample, rng, one)
  if moved and out.get("aligned"):
    out["aligned"] = False
  return out


def _translate_specs(translate):
  if np.isscalar(translate):
    return translate, translate
  t = list(translate)
  if len(t) == 2 and all(np.isscalar(v) for v in t):
    return tuple(t), tuple(t)  # one (low, high) range shared by both axes
  if len(t) == 2:
    return t[0], t[1]
  raise UserError(f"affine translate must be a number, a (low, high) range or a pair of "
                  f"them, got {translate!r}")


def elastic(sample: dict, rng, amplitude=(0.01, 0.03), waves: int = 4,
            max_frequency: float = 2.0) -> dict:
  """A smooth wobble: each point moves by a random field made of `waves` plane sine waves
  per axis, with frequencies up to `max_frequency` cycles per canvas side. `amplitude`
  (number or range, a fraction of the canvas' longer side) is the field's root mean square
  per axis; no point moves more than amplitude * sqrt(2 * waves) along an axis."""
  rng = as_rng(rng)
  if int(waves) < 1 or not float(max_frequency) > 0:
    raise UserError(f"elastic needs waves >= 1 and max_frequency > 0, got {waves}, "
                    f"{max_frequency}")

  def one(sketch, widths, rng):
    if sketch.num_strokes == 0:
      return sketch, widths
    cw, ch = sketch.canvas_size
    amp = draw(rng, amplitude, "elastic amplitude") * max(cw, ch)
    freq = rng.uniform(-max_frequency, max_frequency, size=(2, waves, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=(2, waves))
    weight = rng.normal(size=(2, waves))
    # sin over a random phase has mean square 1/2: scale so the field's RMS is amp.
    weight *= amp * np.sqrt(2.0) / np.sqrt(np.sum(weight ** 2, axis=1, keepdims=True) + 1e-12)

    def move(pts):
      uv = pts / np.array([cw, ch])
      field = np.sin(2 * np.pi * np.einsum("nd,awd->naw", uv, freq) + phase[None])
      return pts + np.einsum("naw,aw->na", field, weight)
    return transform_points(sketch, move), widths
  return map_sketches(sample, rng, one)
