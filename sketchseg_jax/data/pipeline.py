"""The grain pipeline: one builder from config, from a record source to per-process batches.

  source -> shuffle (global, same seed on every process)
  -> augment + featurize (random_map: a pure function of (record, seed, position, epoch))
  -> this process's slice -> repeat -> iterator -> batch(drop_remainder)
  -> worker processes (mp_prefetch)

Every process shuffles the same global order and takes a strided slice of it, so the
processes' shards are disjoint and together complete in every epoch. The augmentation seed
depends on the global position, not on the process, so a record is augmented identically
whatever the number of hosts. Batches are dicts of
fixed-shape numpy arrays, ready for `jax.make_array_from_process_local_data`. The iterator's
`get_state()` / `set_state()` resume it exactly (the engine stores the state in checkpoints).

Config (a dict or ConfigDict):
  source:        {"name": ..., ...}: see `sketchseg_jax.data.sources.build_source`; "world"
                 streams the procedural world; "tfds" reads a dataset written by
                 `sketchseg data synth --format tfds`.
  augment:       list of augmentation steps for `build_augment` (may be empty)
  image_size:    photos are resized to this square size (uint8)
  raster_size:   sketches are rasterised at this square size
  sketch_width:  stroke width in raster pixels; sketch_fit: "canvas" or "fit"
  max_queries:   sketch slots per example (separate sketches of a group query); extra
                 sketches are merged into the last slot
  with_target:   include the ground-truth target (evaluation only; training is mask-free)
  proposals:     None, or region_proposals' settings ({} for its defaults): adds "proposals"
                 (count, S, S) uint8 candidate masks cut from the photo's colours alone and
                 "proposals_valid" (count,) (sketchseg_jax.data.proposals)
  regions:       0, or a colour threshold: adds "regions" (S, S) int32, the photo's regions
                 of near-constant colour (sketchseg_jax.data.proposals.colour_regions), over
                 which a segmenter with model.regions pools its logits
  batch_size:    global batch size (divided among processes)
  shuffle, seed, num_epochs (None = forever), worker_count, worker_buffer_size,
  read_threads, prefetch
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import grain
import numpy as np
from PIL import Image

from sketchseg_jax.data.proposals import (DEFAULTS as PROPOSAL_DEFAULTS, check_settings,
                                          colour_regions, region_proposals)
from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment import build_augment
from sketchseg_jax.sketch.raster import rasterize

GRANULARITIES = ("object", "part", "group", "instance", "category")
GROUND_TRUTH = ("masks", "mask_info", "target")

DEFAULTS = dict(source=None, augment=(), image_size=224, raster_size=224, sketch_width=3.0,
                sketch_fit="canvas", max_queries=1, with_target=False, proposals=None,
                regions=0.0, batch_size=8,
                shuffle=True, seed=0, num_epochs=None, worker_count=0, worker_buffer_size=2,
                read_threads=1, prefetch=4)


def _as_dict(cfg) -> dict:
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return dict(cfg)


def resolve_config(cfg) -> dict:
  """Defaults filled in; unknown keys are an error before any data is read."""
  d = _as_dict(cfg)
  unknown = sorted(set(d) - set(DEFAULTS))
  if unknown:
    raise UserError(f"unknown data config keys {unknown}; known: {sorted(DEFAULTS)}")
  out = {**DEFAULTS, **d}
  if not out["source"]:
    raise UserError("data config needs a source, e.g. {'name': 'world'}")
  if out["max_queries"] < 1:
    raise UserError("max_queries must be >= 1")
  if out["proposals"] is not None:
    given = _as_dict(out["proposals"])
    unknown = sorted(set(given) - set(PROPOSAL_DEFAULTS))
    if unknown:
      raise UserError(f"unknown data.proposals keys {unknown}; "
                      f"known: {sorted(PROPOSAL_DEFAULTS)}")
    out["proposals"] = {**PROPOSAL_DEFAULTS, **given}
    check_settings(**out["proposals"])
  out["regions"] = region_threshold(out["regions"], "data.regions")
  return out


def region_threshold(value, name: str) -> float:
  """A colour-region threshold setting as a float (0: no regions); UserError otherwise."""
  try:
    t = float(value or 0.0)
  except (TypeError, ValueError):
    t = float("nan")
  if not t >= 0:
    raise UserError(f"{name} is a colour threshold (> 0) or 0 for none, got {value!r}")
  return t


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  mask = np.asarray(mask).astype(np.uint8)
  if mask.shape == (size, size):
    return mask
  return np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.BILINEAR)) >= 128


@dataclasses.dataclass
class Featurize:
  """A sample dict -> fixed-shape arrays (picklable, so grain workers can run it)."""
  image_size: int
  raster_size: int
  sketch_width: float
  sketch_fit: str
  max_queries: int
  with_target: bool
  categories: tuple = ()
  proposals: Optional[dict] = None
  regions: float = 0.0

  def _raster(self, sketch, widths) -> np.ndarray:
    ink = rasterize(sketch, self.raster_size, width=self.sketch_width, fit=self.sketch_fit,
                    widths=None if widths is None or isinstance(sketch, np.ndarray) else
                    np.asarray(widths, np.float32) * self.sketch_width)
    return np.round(ink * 255).astype(np.uint8)

  def __call__(self, sample: dict) -> dict:
    queries = sample.get("queries") or [sample["sketch"]]
    widths = sample.get("query_stroke_widths") if sample.get("queries") else [sample.get("stroke_widths")]
    widths = list(widths or [None] * len(queries))
    rasters = [self._raster(q, w) for q, w in zip(queries, widths)]
    if len(rasters) > self.max_queries:
      # Too many separate sketches for the slots: the last slot shows the rest together.
      rasters = rasters[:self.max_queries - 1] + [np.max(rasters[self.max_queries - 1:], axis=0)]
    valid = np.zeros(self.max_queries, bool)
    valid[:len(rasters)] = True
    blank = np.zeros((self.raster_size, self.raster_size), np.uint8)
    out = {
        "sketch": np.stack(rasters + [blank] * (self.max_queries - len(rasters))),
        "sketch_valid": valid,
        "category_id": np.int32(self._category_id(sample)),
        "granularity": np.int32(GRANULARITIES.index(sample.get("granularity", "object"))),
    }
    image = sample.get("image")
    if image is not None:
      out["image"] = _resize_image(image, self.image_size)
      if self.proposals is not None:
        masks, valid = region_proposals(out["image"], **self.proposals)
        out["proposals"], out["proposals_valid"] = masks.astype(np.uint8), valid
      if self.regions:
        out["regions"] = colour_regions(out["image"], float(self.regions)).astype(np.int32)
    if self.with_target:
      target = sample.get("target")
      out["has_target"] = np.bool_(target is not None)
      out["target"] = (np.zeros((self.image_size, self.image_size), np.uint8) if target is None
                       else _resize_mask(target, self.image_size).astype(np.uint8))
    return out

  def _category_id(self, sample) -> int:
    if "category_id" in sample:
      return int(sample["category_id"])
    cat = sample.get("category")
    return self.categories.index(cat) if cat in self.categories else -1


@dataclasses.dataclass
class AugmentAndFeaturize(grain.transforms.RandomMap):
  """grain random_map transform: the chain's seed comes from grain's per-element rng, so each
  element (and each epoch of it) gets its own reproducible randomness in any worker."""
  augment: Any
  featurize: Featurize

  def random_map(self, sample, rng: np.random.Generator):
    # Ground truth leaves the sample before any augmentation sees it: the training path is
    # mask-free by construction, and evaluation keeps only the query's target.
    drop = GROUND_TRUTH if not self.featurize.with_target else ("masks", "mask_info")
    sample = {k: v for k, v in sample.items() if k not in drop}
    if self.augment is not None:
      sample = self.augment(sample, int(rng.integers(0, 2 ** 63 - 1)))
    return self.featurize(sample)


def _mark_flags_parsed():
  # grain's worker processes read absl flags; library callers may never have run absl.app.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def build_source(source_cfg, split: str):
  """The configured source; the pipeline's split applies unless the config names one."""
  from sketchseg_jax.data.sources import build_source as build, config_keys
  cfg = _as_dict(source_cfg)
  if "split" not in cfg and "split" in config_keys(cfg.get("name", "")):
    cfg["split"] = split
  return build(cfg)


def build_dataset(cfg, split: str = "train", *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, source=None):
  """A grain IterDataset of per-process batches. `source` overrides cfg.source (tests)."""
  import jax
  c = resolve_config(cfg)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if c["batch_size"] % process_count:
    raise UserError(f"batch_size {c['batch_size']} is not divisible by the {process_count} "
                    "processes")
  source = build_source(c["source"], split) if source is None else source
  if len(source) < process_count:
    raise UserError(f"source has {len(source)} records, fewer than {process_count} processes")
  ds = grain.MapDataset.source(source)
  if c["shuffle"]:
    ds = ds.shuffle(seed=c["seed"])
  featurize = Featurize(c["image_size"], c["raster_size"], c["sketch_width"], c["sketch_fit"],
                        c["max_queries"], c["with_target"],
                        tuple(getattr(source, "categories", ()) or ()), c["proposals"],
                        c["regions"])
  augment = build_augment(list(c["augment"])) if c["augment"] else None
  ds = ds.random_map(AugmentAndFeaturize(augment, featurize), seed=c["seed"] + 1)
  ds = ds[process_index::process_count]
  if c["num_epochs"] != 1:
    ds = ds.repeat(c["num_epochs"])
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c["read_threads"],
                                            prefetch_buffer_size=c["prefetch"]))
  it = it.batch(c["batch_size"] // process_count, drop_remainder=True)
  if c["worker_count"] > 0:
    _mark_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=c["worker_count"], per_worker_buffer_size=c["worker_buffer_size"]))
  return it
