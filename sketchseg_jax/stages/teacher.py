"""Training and evaluating the SBIR teacher (METHOD.md, "Three models", 1).

Losses, each weighted in config.loss (a weight of 0 turns a term off):
  triplet   max(0, m + d(s, p+) - d(s, p-)) with d = 1 - cos; negatives from the batch, the
            hardest ("hard") or a random one ("random"); same_category=True draws negatives
            from the query's own category where the batch has any (fine-grained)
  infonce   symmetric InfoNCE of sketches against photos at temperature tau
  category  category-level InfoNCE: every photo of the sketch's category in the batch is a
            positive (a supervised-contrastive term; category labels, no masks): a fast,
            strong signal while the fine-grained terms are still slow to start
  shuffle   patch-shuffle: a 2x2-shuffled sketch must match its photo shuffled the same way
            more than the photo shuffled another way (a triplet with margin m)
Partition-aware pairs (a partial sketch with the photo blanked outside the same region) and
grouped pairs come from the data config's augmentations (partition with blank_photo, group).

Pretrained weights (config.model.init_from): "" starts from random weights; a path (a Hugging
Face CLIP folder, an OpenAI / open_clip state dict, a `backbones.save` folder: anything
`sketchseg_jax.backbones.load` reads) fills the backbone, and with separate towers the sketch
backbone too, with the file's weights. Every backbone weight must be in the file with the
configured shape, and the file's architecture (heads, MLP kind, LayerNorm epsilon, ...) must
be the one model.vit describes.

Evaluation (`eval_report`, also every eval_every_steps on the "full" set): fine-grained
acc@1/5/10 of each sketch against the gallery of the evaluation photos and category mAP@all,
on full sketches, partial sketches (partitioned with a fixed seed, the gallery unchanged) and
held-out categories, for the trained towers and the same towers untrained. eval.galleries=K
(default 1) evaluates K independent galleries of eval.num photos at once, each query ranked
in its own gallery: K times the queries at the same difficulty, so acc@k rests on K times
the hits.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sketchseg_jax.data.pipeline import Featurize, resolve_config
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.sbir import SBIRTeacher, trainable_patterns
from sketchseg_jax.models.vit_config import from_config
from sketchseg_jax.sketch.augment import partition
from sketchseg_jax.train.stage import Stage

LOSS_DEFAULTS = dict(triplet=1.0, infonce=1.0, category=0.0, shuffle=0.0, margin=0.2,
                     negatives="hard", same_category=False, tau=0.07)


def _cosine_distance(a, b):
  return 1.0 - a @ b.T


def triplet_loss(s, p, margin, rng, negatives="hard", labels=None, same_category=False):
  """Mean triplet loss of sketches s (B, E) against photos p (B, E), pair i positive."""
  d = _cosine_distance(s, p)
  b = d.shape[0]
  pos = jnp.diagonal(d)
  valid = ~jnp.eye(b, dtype=bool)
  if same_category and labels is not None:
    same = (labels[:, None] == labels[None, :]) & valid
    # Rows whose category has no other member in the batch fall back to every negative.
    valid = jnp.where(jnp.any(same, axis=1, keepdims=True), same, valid)
  if negatives == "hard":
    neg = jnp.min(jnp.where(valid, d, jnp.inf), axis=1)
  else:
    noise = jax.random.uniform(rng, d.shape)
    pick = jnp.argmax(jnp.where(valid, noise, -1.0), axis=1)
    neg = d[jnp.arange(b), pick]
  return jnp.mean(jax.nn.relu(margin + pos - neg))


def infonce_loss(s, p, tau):
  logits = (s @ p.T) / tau
  labels = jnp.arange(s.shape[0])
  return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def category_infonce_loss(s, p, labels, tau):
  """Symmetric InfoNCE where the positives of a row are all items of its category (log of the
  summed probability of the positives); rows of unknown category (-1) count only their pair."""
  logits = (s @ p.T) / tau
  eye = jnp.eye(s.shape[0], dtype=bool)
  pos = ((labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)) | eye

  def one(lg):
    return jnp.mean(jax.nn.logsumexp(lg, axis=1) - jax.nn.logsumexp(jnp.where(pos, lg, -jnp.inf), axis=1))
  return 0.5 * (one(logits) + one(logits.T))


def shuffle_tiles(x, perm):
  """Rearranges the 2x2 tiles of (B, H, W, ...) images by perm (4,): tile k <- tile perm[k]."""
  h, w = x.shape[1] // 2, x.shape[2] // 2
  x = x[:, :2 * h, :2 * w]
  tiles = [x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]]
  stacked = jnp.stack(tiles)[perm]
  top = jnp.concatenate([stacked[0], stacked[1]], axis=2)
  bottom = jnp.concatenate([stacked[2], stacked[3]], axis=2)
  return jnp.concatenate([top, bottom], axis=1)


def _derangement_pair(rng):
  """Two different permutations of the 4 tiles."""
  k1, k2 = jax.random.split(rng)
  a = jax.random.permutation(k1, 4)
  offset = jax.random.randint(k2, (), 1, 4)
  b = jnp.roll(a, offset)  # a cyclic shift of a permutation differs from it everywhere
  return a, b


class _Subset:
  """The first `num` records of a source in an order shuffled by `seed` (a fixed evaluation
  sample of a large split)."""

  def __init__(self, source, num: int, seed: int):
    self.source = source
    order = np.random.default_rng(seed).permutation(len(source))
    self.index = np.sort(order[:min(num, len(source))])
    self.categories = getattr(source, "categories", ())
    self.heldout_categories = getattr(source, "heldout_categories", ())

  def __len__(self):
    return len(self.index)

  def __getitem__(self, i):
    return self.source[int(self.index[i])]


class _Galleries:
  """A source read as `galleries` equal consecutive galleries (eval.galleries): each query is
  ranked against its own gallery only."""

  def __init__(self, source, galleries: int):
    self.source = source
    self.galleries = galleries
    self.categories = getattr(source, "categories", ())
    self.heldout_categories = getattr(source, "heldout_categories", ())

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.source[i]


def _gallery_count(e) -> int:
  k = e.get("galleries", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise UserError(f"eval.galleries must be a positive integer, got {k!r}")
  return k


class TeacherStage(Stage):

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.vit = from_config(m.vit)
    if m.get("pool", "cls") == "mean":
      self.vit = self.vit.replace(dense_projection=True)
    self.model = SBIRTeacher(self.vit, num_prompts=int(m.num_prompts),
                             deep_prompts=bool(m.deep_prompts),
                             separate_towers=bool(m.separate_towers),
                             pool=str(m.get("pool", "cls")))
    unknown = sorted(set(config.loss.keys()) - set(LOSS_DEFAULTS))
    if unknown:
      raise UserError(f"unknown teacher loss keys {unknown}; known: {sorted(LOSS_DEFAULTS)}")
    self.loss_cfg = {**LOSS_DEFAULTS, **config.loss.to_dict()}
    if self.loss_cfg["negatives"] not in ("hard", "random"):
      raise UserError(f"loss.negatives must be 'hard' or 'random', got {self.loss_cfg['negatives']!r}")
    self.init_from = str(m.get("init_from", "") or "")
    self._init_values = None  # flat backbone weights of init_from, read by prepare_training

  def frozen(self):
    try:
      return trainable_patterns(self.config.model.tune, self.model.separate_towers)
    except ValueError as e:
      raise UserError(str(e)) from e

  @staticmethod
  def _ink(batch):
    return batch["sketch"][:, 0]

  def prepare_training(self):
    if self.init_from and self._init_values is None:
      from sketchseg_jax import backbones
      self._init_values = backbones.load_weights(self.init_from, self.vit)

  def init(self, rng, batch):
    params = self.model.init(rng, batch["image"], self._ink(batch))["params"]
    if not self.init_from:
      return params
    from sketchseg_jax.param_tree import graft
    # The engine has read the file in prepare_training; a caller that has not (the untrained
    # baseline of eval_report) reads it here, at trace time.
    self.prepare_training()
    params = dict(params)
    towers = ("backbone", "sketch_backbone") if self.model.separate_towers else ("backbone",)
    for tower in towers:
      params[tower], _ = graft(params[tower], self._init_values,
                               f"model.init_from={self.init_from!r}", strict=True)
    return params

  def loss(self, params, batch, rng):
    c = self.loss_cfg
    k_trip, k_shuffle, k_rand = jax.random.split(rng, 3)
    p, s = self.model.apply({"params": params}, batch["image"], self._ink(batch))
    labels = batch["category_id"]
    terms = {}
    if c["triplet"]:
      terms["triplet"] = triplet_loss(s, p, c["margin"], k_trip, c["negatives"], labels,
                                      c["same_category"])
    if c["infonce"]:
      terms["infonce"] = infonce_loss(s, p, c["tau"])
    if c["category"]:
      terms["category"] = category_infonce_loss(s, p, labels, c["tau"])
    if c["shuffle"]:
      same, other = _derangement_pair(k_shuffle)
      photos = batch["image"]
      ink = self._ink(batch)[..., None]
      s_a = self.model.apply({"params": params}, shuffle_tiles(ink, same)[..., 0],
                             method=SBIRTeacher.sketch)
      p_a = self.model.apply({"params": params}, shuffle_tiles(photos, same), method=SBIRTeacher.photo)
      p_b = self.model.apply({"params": params}, shuffle_tiles(photos, other), method=SBIRTeacher.photo)
      d_pos = 1.0 - jnp.sum(s_a * p_a, -1)
      d_neg = 1.0 - jnp.sum(s_a * p_b, -1)
      terms["shuffle"] = jnp.mean(jax.nn.relu(c["margin"] + d_pos - d_neg))
    total = sum(c[k] * v for k, v in terms.items())
    top1 = jnp.mean(jnp.argmax(s @ p.T, axis=1) == jnp.arange(s.shape[0]))
    return total, {**terms, "batch_acc@1": top1}

  # ------------------------------------------------------------------ evaluation

  @functools.cached_property
  def _encoders(self):
    photo = jax.jit(lambda prm, x: self.model.apply({"params": prm}, x, method=SBIRTeacher.photo))
    sketch = jax.jit(lambda prm, x: self.model.apply({"params": prm}, x, method=SBIRTeacher.sketch))
    return photo, sketch

  def _eval_sets(self, data: Optional[str]):
    """{name: (source, partial?)}: the evaluation sets of config.eval: eval.galleries
    independent galleries of eval.num photos each (one for --data)."""
    from sketchseg_jax.data.sources import build_source
    e = self.config.eval
    if data is not None:
      src = build_source({"name": "tfds", "path": data, "split": e.split})
      return {"full": (src, False), "partial": (src, True)}
    base = {k: v for k, v in self.config.data.source.to_dict().items()}
    if base.get("name") != "world":
      return self._real_eval_sets(base, e)
    k = _gallery_count(e)
    base.update(num=int(e.num) * k, aligned_share=0.0)
    seen = _Galleries(build_source({**base, "split": e.split}), k)
    sets = {"full": (seen, False), "partial": (seen, True)}
    heldout = tuple(seen.heldout_categories)
    if heldout and e.heldout:
      held = build_source({**base, "split": "test", "categories": heldout})
      sets["heldout"] = (_Galleries(held, k), False)
    return sets

  def _real_eval_sets(self, base: dict, e) -> dict:
    """A real source's evaluation split (the first eval.num records in a fixed shuffled
    order), and its held-out classes where the source has a zero-shot split."""
    from sketchseg_jax.data.sources import build_source, config_keys
    keys = config_keys(base["name"])
    seen_cfg = {**base, "split": e.split}
    if "class_split" in keys and base.get("heldout_classes"):
      seen_cfg["class_split"] = "seen"
    k = _gallery_count(e)
    seen = _Galleries(_Subset(build_source(seen_cfg), int(e.num) * k, int(e.seed)), k)
    sets = {"full": (seen, False), "partial": (seen, True)}
    if e.heldout and "class_split" in keys and base.get("heldout_classes"):
      held = build_source({**base, "split": e.split, "class_split": "heldout"})
      sets["heldout"] = (_Galleries(_Subset(held, int(e.num) * k, int(e.seed)), k), False)
    return sets

  def _embed_set(self, params, source, partial: bool):
    """(sketch embeddings (Q, E), gallery photo embeddings (G, E), each sketch's photo index in
    the gallery (Q,), sketch labels (Q,), gallery labels (G,), query gallery groups (Q,),
    gallery groups (G,)). Records that share a photo (Sketchy's several sketches per photo:
    the same "photo_id") share one gallery entry, in the group of its first record."""
    d = resolve_config(self.data_config("eval"))
    feat = Featurize(d["image_size"], d["raster_size"], d["sketch_width"], d["sketch_fit"], 1, False)
    photo_fn, sketch_fn = self._encoders
    bs = int(self.config.eval.batch_size)
    photos, sketches, labels, keys = [], [], [], []
    for lo in range(0, len(source), bs):
      images, inks = [], []
      for i in range(lo, min(lo + bs, len(source))):
        sample = source[i]
        sample = {k: v for k, v in sample.items() if k not in ("masks", "mask_info", "target")}
        keys.append(str(sample.get("photo_id", f"#{i}")))
        if partial:
          sample = partition(sample, (int(self.config.eval.seed), i), mode=["grid", "box"])
        f = feat(sample)
        images.append(f["image"])
        inks.append(f["sketch"][0])
        labels.append(int(f["category_id"]))
      photos.append(np.asarray(photo_fn(params, np.stack(images))))
      sketches.append(np.asarray(sketch_fn(params, np.stack(inks))))
    photos, labels = np.concatenate(photos), np.asarray(labels)
    first = {}
    for i, k in enumerate(keys):
      first.setdefault(k, i)
    rows = np.asarray(sorted(first.values()))
    where = {k: j for j, k in enumerate(keys[r] for r in rows)}
    positive = np.asarray([where[k] for k in keys])
    count = getattr(source, "galleries", 1)
    record_groups = np.arange(len(keys)) * count // max(len(keys), 1)
    g_groups = record_groups[rows]
    q_groups = g_groups[positive]
    return (np.concatenate(sketches), photos[rows], positive, labels, labels[rows], q_groups,
            g_groups)

  def _retrieval(self, params, sets) -> dict:
    from sketchseg_jax.evaluate.retrieval import retrieval_metrics
    out = {}
    for name, (source, partial) in sets.items():
      s, p, positive, q_labels, g_labels, q_groups, g_groups = self._embed_set(params, source,
                                                                              partial)
      out[name] = retrieval_metrics(s, p, positive, q_labels, g_labels,
                                    query_groups=q_groups, gallery_groups=g_groups)
    return out

  def evaluate(self, params, step):
    sets = self._eval_sets(None)
    return {k: v for k, v in self._retrieval(params, {"full": sets["full"]})["full"].items()
            if k.startswith(("acc@", "mAP"))}

  def eval_report(self, params, data=None) -> dict:
    sets = self._eval_sets(data)
    report = self._retrieval(params, sets)
    d = resolve_config(self.data_config("eval"))
    example = {"image": np.zeros((1, d["image_size"], d["image_size"], 3), np.uint8),
               "sketch": np.zeros((1, 1, d["raster_size"], d["raster_size"]), np.uint8)}
    untrained = jax.jit(self.init)(jax.random.key(int(self.config.seed)), example)
    untrained = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, untrained,
                             is_leaf=lambda x: hasattr(x, "value"))
    report["untrained"] = self._retrieval(untrained, sets)
    return report
