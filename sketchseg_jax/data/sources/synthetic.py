"""Sources over the procedural world (streamed on the fly) and over datasets that
`sketchseg data synth --format tfds` wrote."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from sketchseg_jax.data.sources.common import SourceError
from sketchseg_jax.data.tfds_store import TFDSSource

KINDS = ("query", "sbir")


def _weights(granularities) -> tuple:
  if isinstance(granularities, str):
    granularities = {g.strip(): 1.0 for g in granularities.split(",") if g.strip()}
  elif not isinstance(granularities, Mapping):
    granularities = {g: 1.0 for g in granularities}
  names = tuple(granularities)
  w = np.asarray([float(granularities[n]) for n in names])
  if not names or np.any(w < 0) or w.sum() <= 0:
    raise SourceError(f"granularities need positive weights, got {dict(granularities)}")
  return names, tuple(float(x) for x in w / w.sum())


class WorldSource:
  """The procedural world as a grain random-access source of `num` samples a pass.

  kind="query": scene photos with a query of a granularity drawn by weight from
  `granularities` (a dict name -> weight, or a list / comma string for equal weights);
  kind="sbir": single-object photo-sketch pairs (the teacher's data). aligned_share: the
  share of queries whose sketch sits where the object is in the photo (Sketchy-style).
  Which granularity and alignment a record gets is a pure function of (seed, index).
  """

  def __init__(self, split: str = "train", kind: str = "query", num: int = 10000,
               size: Union[int, Sequence[int]] = 224, seed: int = 0,
               granularities: Union[str, Mapping, Sequence] = ("object", "part", "group"),
               aligned_share: float = 0.0, heldout: Optional[Sequence[str]] = None,
               categories: Optional[Sequence[str]] = None, plain_background_share: float = 0.3,
               max_objects: int = 4, canvas: int = 256):
    from sketchseg_jax.data.world import DEFAULT_HELDOUT, World
    if kind not in KINDS:
      raise SourceError(f"world kind must be one of {KINDS}, got {kind!r}")
    if num < 1:
      raise SourceError(f"world num must be >= 1, got {num}")
    self.kind, self.num, self.seed = kind, int(num), int(seed)
    self.split = split
    self.granularities, self.probs = _weights(granularities)
    self.aligned_share = float(aligned_share)
    self.world = World(size=size, split=split, seed=seed, canvas=canvas,
                       heldout=tuple(DEFAULT_HELDOUT if heldout is None else heldout),
                       plain_background_share=plain_background_share, max_objects=max_objects,
                       categories=None if categories is None else tuple(categories))
    # Ids over every category of the table, so seen and held-out splits number them alike.
    self.categories = tuple(self.world.all_categories)
    self.heldout_categories = tuple(self.world.heldout_categories)

  def __len__(self):
    return self.num

  def _choices(self, index: int):
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED, index]))
    g = self.granularities[int(rng.choice(len(self.granularities), p=self.probs))]
    return g, bool(rng.random() < self.aligned_share)

  def __getitem__(self, index: int) -> dict:
    if not -self.num <= index < self.num:
      raise IndexError(f"index {index} out of range for {self.num} records")
    index %= self.num
    granularity, aligned = self._choices(index)
    if self.kind == "sbir":
      sample = self.world.sbir_pair(index, aligned=aligned)
      sample["granularity"] = "object"
    else:
      sample = self.world.query(index, granularity, aligned=aligned)
    sample["category_id"] = (self.categories.index(sample["category"])
                             if sample.get("category") in self.categories else -1)
    # A group query is held out when any of its objects' categories is.
    cats = sample.get("categories") or [sample.get("category")]
    sample["heldout"] = any(c in self.heldout_categories for c in cats)
    return sample

  def describe(self) -> dict:
    return {"source": "world", "kind": self.kind, "split": self.split, "records": self.num,
            "granularities": dict(zip(self.granularities, self.probs)),
            "categories": list(self.world.categories),
            "heldout": list(self.heldout_categories)}


def tfds_source(path: str, split: str = "train") -> TFDSSource:
  return TFDSSource(path, split)
