"""Evaluating a segmenter: mIoU per granularity on the config's evaluation queries (or an
evaluation folder), with the trivial and zero-shot baselines on the same queries, robustness
to unseen sketch styles, and a PNG grid.

Evaluation data (config.eval):
  split, num          world queries of the seen categories (data.source with kind "query")
  granularities       which granularities the world draws (equal weights)
  heldout             also `num` queries of the held-out categories (split "test")
  styles              names of sketch styles the model was not trained on (STYLES: each a
                      list of augmentation steps applied to the first set's sketches): the
                      report's "styles"; [] for none
  batch_size, seed, grid (rows of the PNG grid), quick_num (queries of the in-training eval)
  data                an evaluation folder to use instead of the world sets ("" = the world
                      sets): how a config on real data (Sketchy: no masks) is evaluated, in
                      training (its first quick_num queries) and by `sketchseg eval`
`--data PATH` replaces both by an evaluation folder (sketchseg data synth --format
folder, or the user's own in that layout); its manifest says which queries are held out.
IoU is computed at the evaluation image size (photos and masks resized to data.image_size).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from sketchseg_jax.data.pipeline import GRANULARITIES, Featurize, resolve_config
from sketchseg_jax.errors import UserError

log = logging.getLogger(__name__)

STYLES = {
    "thick": [dict(name="width_jitter", scale=(2.5, 2.5))],
    "sparse": [dict(name="stroke_dropout", p=0.4)],
    "wobbly": [dict(name="elastic", amplitude=(0.04, 0.06)), dict(name="point_jitter", sigma=0.01)],
}
EVAL_DEFAULTS = dict(split="val", num=200, granularities=list(GRANULARITIES), heldout=True,
                     styles=("thick", "sparse", "wobbly"), batch_size=32, seed=0, grid=12, quick_num=64,
                     data="")


def eval_config(stage) -> dict:
  e = stage.config.get("eval", {})
  e = e.to_dict() if hasattr(e, "to_dict") else dict(e)
  unknown = sorted(set(e) - set(EVAL_DEFAULTS))
  if unknown:
    raise UserError(f"unknown eval keys {unknown}; known: {sorted(EVAL_DEFAULTS)}")
  out = {**EVAL_DEFAULTS, **e}
  unknown = sorted(set(out["styles"]) - set(STYLES))
  if unknown:
    raise UserError(f"unknown eval styles {unknown}; known: {sorted(STYLES)}")
  return out


def world_sets(stage, num: int, e: dict) -> dict:
  """{name: source}: seen-category queries, and held-out ones when asked and defined."""
  from sketchseg_jax.data.sources import build_source
  base = dict(stage.config.data.source.to_dict())
  if base.get("name") != "world":
    raise UserError(f"the evaluation needs world data, config.eval.data or --data PATH (an "
                    f"evaluation folder); this config's data source is {base.get('name')!r}")
  base.update(kind="query", num=int(num), granularities=list(e["granularities"]),
              aligned_share=0.0)
  seen = build_source({**base, "split": e["split"]})
  sets = {"seen": seen}
  heldout = tuple(seen.heldout_categories)
  if heldout and e["heldout"]:
    sets["heldout"] = build_source({**base, "split": "test", "categories": heldout})
  return sets


def folder_sets(path: str) -> dict:
  from sketchseg_jax.data.sources import build_source
  if not Path(path).exists():
    raise UserError(f"evaluation folder {path} (--data or config.eval.data) does not exist")
  return {"data": build_source({"name": "eval_folder", "root": str(path)})}


def _featurizer(stage, source) -> Featurize:
  d = resolve_config(stage.data_config("eval"))
  return Featurize(d["image_size"], d["raster_size"], d["sketch_width"], d["sketch_fit"],
                   d["max_queries"], True, tuple(getattr(source, "categories", ()) or ()),
                   regions=d["regions"])


def batches(stage, source, batch_size: int, augment=None, seed: int = 0, limit=None):
  """Featurized evaluation batches of `source` (the last one padded; "n" = real rows), each
  with the records' granularity names and held-out flags."""
  feat = _featurizer(stage, source)
  n = len(source) if limit is None else min(limit, len(source))
  for lo in range(0, n, batch_size):
    rows, names, held = [], [], []
    for i in range(lo, min(lo + batch_size, n)):
      sample = source[i]
      sample = {k: v for k, v in sample.items() if k not in ("masks", "mask_info")}
      if augment is not None:
        sample = augment(sample, (seed, i))
      rows.append(feat(sample))
      names.append(str(sample.get("granularity", "object")))
      held.append(bool(sample.get("heldout", False)))
    real = len(rows)
    rows += [rows[-1]] * (batch_size - real)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    yield batch, names, held, real


def predict_batches(stage, params, stream) -> Iterable:
  """(batch, names, heldout, real rows, (B, H, W) probabilities) for each batch of `stream`."""
  fn = stage.predict_fn
  for batch, names, held, real in stream:
    probs = np.asarray(fn(params, batch["image"], batch["sketch"], batch["sketch_valid"],
                          batch.get("regions")))
    yield batch, names, held, real, probs


def accumulate(stage, params, stream):
  from sketchseg_jax.evaluate.segmentation import SegmentationAccumulator
  acc = SegmentationAccumulator()
  kept = []
  for batch, names, held, real, probs in predict_batches(stage, params, stream):
    for i in range(real):
      if not batch["has_target"][i]:
        continue
      acc.add(probs[i], batch["target"][i].astype(bool), names[i], held[i])
    kept.append((batch, names, real, probs))
  return acc, kept


def _plain_params(params):
  import jax
  from sketchseg_jax.param_tree import plain
  return jax.device_get(plain(params))


def quick_eval(stage, params) -> dict:
  """In-training evaluation: mIoU at 0.5 and at the best threshold on quick_num seen queries."""
  e = eval_config(stage)
  if e["data"]:
    source, limit = folder_sets(e["data"])["data"], int(e["quick_num"])
  else:
    source, limit = world_sets(stage, int(e["quick_num"]), {**e, "heldout": False})["seen"], None
  acc, _ = accumulate(stage, _plain_params(params),
                      batches(stage, source, int(e["batch_size"]), limit=limit))
  r = acc.result()
  out = {f"miou/{g}": v for g, v in r["miou"].items()}
  out.update({f"miou_best/{g}": v for g, v in r["miou_best_threshold"].items()})
  return out


def full_report(stage, params, data: Optional[str] = None, out_dir=None) -> dict:
  """The segmenter's evaluation report (see sketchseg_jax.evaluate.segmentation for the
  metrics); with out_dir, also out_dir/grid.png."""
  from sketchseg_jax.sketch.augment import build_augment
  e = eval_config(stage)
  params = _plain_params(params)
  data = data or e["data"] or None
  sets = folder_sets(data) if data else world_sets(stage, int(e["num"]), e)
  bs = int(e["batch_size"])
  stream = itertools.chain.from_iterable(batches(stage, s, bs) for s in sets.values())
  acc, kept = accumulate(stage, params, stream)
  report = acc.result()
  report["data"] = str(data) if data else {k: s.describe() for k, s in sets.items()}
  # Zero-shot: the segmenter as it starts (backbone and head from the towers), same queries.
  try:
    zs_params = stage.zero_shot_params(params)
  except (UserError, OSError) as e:  # init_from names weights that are no longer there
    report["baselines"]["zero_shot"] = {"skipped": str(e)}
  else:
    stream = itertools.chain.from_iterable(batches(stage, s, bs) for s in sets.values())
    zs, _ = accumulate(stage, zs_params, stream)
    zr = zs.result()
    report["baselines"]["zero_shot"] = {"miou": zr["miou"],
                                        "miou_best_threshold": zr["miou_best_threshold"]}
  first = next(iter(sets.values()))
  styles = {}
  for name in e["styles"]:
    aug = build_augment(list(STYLES[name]))
    sacc, _ = accumulate(stage, params, batches(stage, first, bs, augment=aug,
                                                seed=int(e["seed"])))
    sr = sacc.result()
    styles[name] = {"miou": sr["miou"], "miou_best_threshold": sr["miou_best_threshold"]}
  if styles:
    report["styles"] = styles
  if out_dir is not None and int(e["grid"]) > 0:
    report["grid"] = str(write_grid(kept, Path(out_dir) / "grid.png", int(e["grid"])))
  return report


def write_grid(kept, path: Path, count: int) -> Path:
  """PNG of the first `count` queries, rotating through the granularities present."""
  from sketchseg_jax.evaluate.segmentation import render_grid
  by_g = {}
  for batch, names, real, probs in kept:
    for i in range(real):
      by_g.setdefault(names[i], []).append((batch, i, probs))
  order = [g for g in GRANULARITIES if g in by_g] + sorted(set(by_g) - set(GRANULARITIES))
  rows = []
  for j in range(max((len(v) for v in by_g.values()), default=0)):
    for g in order:
      if j < len(by_g[g]) and len(rows) < count:
        batch, i, probs = by_g[g][j]
        valid = batch["sketch_valid"][i]
        target = batch["target"][i].astype(bool) if batch["has_target"][i] else None
        rows.append(dict(image=batch["image"][i], sketch=batch["sketch"][i][valid],
                         pred=probs[i], target=target, label=g))
  path.parent.mkdir(parents=True, exist_ok=True)
  return Path(render_grid(rows, path))
