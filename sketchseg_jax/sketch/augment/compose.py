"""Augmentation chains from a config list, with a registry of names.

    aug = build_augment([{"name": "stroke_dropout", "prob": 0.3, "p": 0.1},
                         {"name": "partition", "prob": 0.5, "mode": "grid"}])
    out = aug(sample, seed)  # seed: int, tuple of ints (e.g. (epoch, index)), SeedSequence

Each step draws from its own generator, seeded by the call's seed and the step's key: its
name and how many steps of that name come before it. So adding, removing or reordering steps
of other names leaves a step's randomness as it was. The coin for `prob` comes from the same
generator, first.

A chain with a "group" step may be called on a list of 1-4 samples: the steps before it run
on each sample (seeded apart by position), the group step makes one mosaic sample of them,
and the steps after it run on the mosaic. When the group step's coin says no, the first
sample goes on alone. Called on one sample, the group step makes a one-tile mosaic.
"""

from __future__ import annotations

import inspect
import numbers
import zlib
from typing import Mapping, Sequence

import numpy as np

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment import grouping, partitioning, photo, stroke
from sketchseg_jax.sketch.augment.sample import _entropy

REGISTRY = {
    "partition": partitioning.partition,
    "group": grouping.group,
    "stroke_dropout": stroke.stroke_dropout,
    "point_jitter": stroke.point_jitter,
    "width_jitter": stroke.width_jitter,
    "affine": stroke.affine,
    "first_n_strokes": stroke.first_n_strokes,
    "elastic": stroke.elastic,
    "crop": photo.crop,
    "zoom_out": photo.zoom_out,
    "hflip": photo.hflip,
    "colour_jitter": photo.colour_jitter,
}
MULTI_SAMPLE = frozenset({"group"})


def parameters(name: str) -> dict:
  """The parameters a registered augmentation takes, with their defaults."""
  if name not in REGISTRY:
    raise UserError(f"unknown augmentation {name!r}; known: {', '.join(sorted(REGISTRY))}")
  sig = inspect.signature(REGISTRY[name])
  return {p.name: p.default for p in list(sig.parameters.values())[2:]}


class Augment:
  """A picklable `(sample or samples, seed) -> sample` chain; build it with build_augment."""

  def __init__(self, steps: Sequence[tuple]):
    self.steps = tuple(steps)  # (name, prob, params, key) each; plain data, so it pickles

  def __call__(self, sample, seed):
    root = _root(seed)
    names = [s[0] for s in self.steps]
    cut = names.index("group") if "group" in names else None
    if not isinstance(sample, Mapping):
      if cut is None:
        raise UserError("a list of samples needs a chain with a 'group' step")
      samples = list(sample)
      for step in self.steps[:cut]:
        samples = [_run(step, s, root, (k,)) for k, s in enumerate(samples)]
      sample = _run(self.steps[cut], samples, root, ())
      rest = self.steps[cut + 1:]
    else:
      rest = self.steps
    for step in rest:
      sample = _run(step, sample, root, ())
    return sample

  def __repr__(self):
    inner = ", ".join(f"{n}(prob={p:g}{''.join(f', {k}={v!r}' for k, v in kw.items())})"
                      for n, p, kw, _ in self.steps)
    return f"Augment([{inner}])"

  def __eq__(self, other):
    return isinstance(other, Augment) and self.steps == other.steps

  __hash__ = None


def build_augment(config: Sequence) -> Augment:
  """An Augment from a list of steps: {"name": ..., "prob": p (default 1), **params} or a
  bare name. Unknown names and parameters raise UserError naming them."""
  if isinstance(config, (str, Mapping)):
    raise UserError("an augmentation config is a list of steps, not a single step")
  steps, seen = [], {}
  for i, entry in enumerate(config):
    entry = {"name": entry} if isinstance(entry, str) else dict(entry)
    name = entry.pop("name", None)
    if name not in REGISTRY:
      raise UserError(f"augmentation step {i}: unknown name {name!r}; known: "
                      f"{', '.join(sorted(REGISTRY))}")
    prob = entry.pop("prob", 1.0)
    if not isinstance(prob, numbers.Real) or not 0.0 <= float(prob) <= 1.0:
      raise UserError(f"augmentation step {i} ({name}): prob must be in [0, 1], got {prob!r}")
    known = parameters(name)
    unknown = sorted(set(entry) - set(known))
    if unknown:
      raise UserError(f"augmentation step {i} ({name}): unknown parameter(s) "
                      f"{', '.join(unknown)}; it takes {', '.join(known) or 'none'} and prob")
    if name == "group" and "group" in seen:
      raise UserError(f"augmentation step {i}: a chain may hold one 'group' step")
    occurrence = seen.get(name, 0)
    seen[name] = occurrence + 1
    key = (zlib.crc32(name.encode()), occurrence)
    steps.append((name, float(prob), _plain(entry), key))
  return Augment(steps)


def _plain(params):
  """Params with lists turned into tuples, so steps compare equal after a config round trip."""
  def fix(v):
    if isinstance(v, (list, tuple)):
      return tuple(fix(x) for x in v)
    return v
  return {k: fix(v) for k, v in params.items()}


def _root(seed) -> np.random.SeedSequence:
  if isinstance(seed, np.random.SeedSequence):
    return seed
  if isinstance(seed, np.random.Generator):
    raise UserError("an Augment is called with a seed (int, tuple of ints or SeedSequence), "
                    "not a Generator: each step derives its own")
  return np.random.SeedSequence(_entropy(seed))


def _run(step, sample, root, extra):
  name, prob, params, key = step
  ss = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + key + extra)
  rng = np.random.default_rng(ss)
  if rng.random() >= prob:
    if name in MULTI_SAMPLE and not isinstance(sample, Mapping):
      return sample[0]
    return sample
  return REGISTRY[name](sample, rng, **params)
