"""Mask-free training of the segmenter against the frozen SBIR teacher (METHOD.md, "Mask-free
loss: the sketch in the loop"), and its supervised upper bound.

Parameters: {"segmenter": ..., "teacher": ..., ["student": ...]}: the segmenter
(sketchseg_jax.models.segmenter) and the frozen towers of config.teacher.workdir (a teacher
run, or a distillation run whose compact photo tower then stands in for the teacher's; see
sketchseg_jax.stages.towers). The towers enter the loss under stop_gradient, so no gradient
with respect to their weights is ever computed; gradients flow through the photo tower into
the masks only.

For a batch of photos I_i with queries S_i (the sketch tower's q_i, several separate sketches
averaged) and masks M_i (max over a query's sketches):
  X_i+ = M_i I_i + (1 - M_i) fill,   X_i- = (1 - M_i) I_i + M_i fill
  f_i+ = E_p(X_i+),  f_i- = E_p(X_i-)
  in    InfoNCE of q_i over {f_j+}: positive f_i+; negatives f_j+ (j != i) under stop_gradient
        (METHOD.md: with gradients through the negatives the masks invert); with
        drop_same_category, negatives of the query's own category leave the denominator;
        same_photo_negatives=K adds photo i masked by the queries of K other photos of the
        batch (forward only; skipped where that query has the query's category): a mask
        that ignores its query cannot beat those
  out   mean max(0, margin + d(q_i, f_i+) - d(q_i, f_i-)), d = 1 - cos
  area  band: max(0, mean(M) - high) + max(0, low - mean(M)); plus linear * mean(M)
  tv    total variation of the low-resolution mask
  edge_tv  total variation of the full-size mask weighted by the photo's colour similarity
        (edge_sigma, over pixel offsets edge_offsets): boundaries snap to the photo's edges
  bin   mean(M (1 - M)), its weight ramped linearly from 0 over bin_ramp=(start, end) steps
zoom=s (0: off) shows the teacher the masked photo cropped to a square around the mask (its
centroid, half side s x its spatial standard deviation, at least zoom_min of the photo; the
complement over the same box): SBIR teachers know object-centred photos, and a small object
masked in a wide scene is not one. The box is differentiable in the mask.
pseudo (a second round, METHOD.md's "confident masks as pseudo-labels"; still mask-free):
config.pseudo.workdir names a finished mask-free segmenter run of the same architecture; its
parameters sit frozen under "round1", this run starts from them (pseudo.start="round1") or
from model.init_from ("init"), and adds pseudo.weight x the BCE of the masks against round 1's
confident masks (probability >= high: 1, <= low: 0, the pixels between left out).
proposals (config.proposals, weight 0 = off; still mask-free): the pipeline cuts candidate
masks from each training photo's colours alone (sketchseg_jax.data.proposals); the frozen
teacher scores the photo masked by each candidate (zoomed to its box, as `zoom` above)
against the query, and proposals.weight x BCE + Dice pulls the mask towards the best one.
The teacher only has to rank masks it is shown, where the loss above needs it to guide a
gradient through every pixel. proposals.keep < 1 trains on the picks of only that share of
the batch, those the teacher scores highest: its picks are right more often where it
matches them better to the query (on objects and groups; see `confident_picks`).
model.regions (a colour threshold, 0 = off; part of the model, so the supervised bound has it
too): the mask's logits are averaged over the photo's regions of near-constant colour (the
pipeline's "regions", colour_regions of the photo alone) before every term and in
prediction, so masks follow the photo's edges at any patch size and a region's pixels share
one gradient. model.min_component (0 = off; prediction only, so evaluation, the Predictor
and the PyTorch export): the mask's 4-connected components at 0.5 smaller than that share of
its largest are dropped.
Total: in_weight L_in + out L_out + area L_area + tv L_tv + bin L_bin + edge_tv L_edge_tv
(+ proposals.weight L_proposal + pseudo.weight L_pseudo).
straight_through=True uses hard masks (M > 0.5) in the forward pass with the soft masks'
gradients. Fill (config loss.fill): "mean" (each photo's mean colour, the teacher's blanking
fill), "norm" (the normalisation mean), "blur" (a blurred copy of the photo) or a grey level
0-255.

The batch never holds a ground-truth mask: the pipeline drops them before augmentation (its
with_target is False here) and this loss reads only image, sketch, sketch_valid, category_id,
and the proposals and regions cut from the image. The supervised stage (SupervisedStage,
config.stage="supervised") is the same model trained on the true masks with BCE + Dice: the
upper bound of the evaluation table.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sketchseg_jax.data import proposals as proposals_lib
from sketchseg_jax.data.pipeline import region_threshold
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.segmenter import (Segmenter, combine_logits, drop_small_components,
                                            frozen_patterns, head_values_from_tower,
                                            pool_over_regions, upsample)
from sketchseg_jax.models.sbir import l2_normalize
from sketchseg_jax.models.vit_config import from_config
from sketchseg_jax.stages import towers as towers_lib
from sketchseg_jax.param_tree import flat, graft, plain, shapes
from sketchseg_jax.stages.distill import fill_values
from sketchseg_jax.train.stage import Stage

log = logging.getLogger(__name__)

LOSS_DEFAULTS = dict(in_weight=1.0, tau=0.07, drop_same_category=False, same_photo_negatives=0,
                     zoom=0.0, zoom_min=0.15,
                     out=0.5, margin=0.1,
                     area=1.0, area_low=0.02, area_high=0.6, area_linear=0.05, tv=0.05, bin=0.1,
                     bin_ramp=(0, 1000), straight_through=False, fill="mean", blur_sigma=3.0,
                     edge_tv=0.0, edge_sigma=0.1, edge_offsets=(1, 2, 4))
SUPERVISED_DEFAULTS = dict(bce=1.0, dice=1.0)
PSEUDO_DEFAULTS = dict(workdir="", step=-1, weight=0.0, high=0.7, low=0.3, start="round1")
# The data pipeline's region settings (data.proposals) and how the loss uses them.
PROPOSAL_DEFAULTS = dict(weight=0.0, **proposals_lib.DEFAULTS, zoom=1.5, zoom_min=0.15, keep=1.0)
MODEL_DEFAULTS = dict(vit=None, init_from="teacher", head="linear", head_hidden=0, adapter=False,
                      num_prompts=-1, alpha_init=10.0, beta_init=-2.0, tune="full", last_k=None,
                      regions=0.0, min_component=0.0)


def _merge(defaults, given, what):
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserError(f"unknown {what} keys {unknown}; known: {sorted(defaults)}")
  return {**defaults, **given}


# ------------------------------------------------------------------------------ loss terms

def infonce_rows(q, fp, tau, same_category=None, extra_sim=None):
  """Per-query InfoNCE of q_i against f_j+ where only the positive f_i+ carries gradient;
  extra_sim (B, K): further negatives of row i (similarities, already without gradient)."""
  b = q.shape[0]
  eye = jnp.eye(b, dtype=bool)
  sim = q @ jax.lax.stop_gradient(fp).T
  pos = jnp.sum(q * fp, axis=-1)
  sim = jnp.where(eye, pos[:, None], sim)
  if same_category is not None:
    sim = jnp.where(same_category & ~eye, -jnp.inf, sim)
  if extra_sim is not None:
    sim = jnp.concatenate([sim, extra_sim], axis=1)
  return optax.softmax_cross_entropy_with_integer_labels(sim / tau, jnp.arange(b))


def infonce_positive_only(q, fp, tau, same_category=None, extra_sim=None):
  return jnp.mean(infonce_rows(q, fp, tau, same_category, extra_sim))


def bce_dice(z, t):
  """Per-example ((B,) mean BCE, (B,) soft Dice loss) of (B, H, W) logits against targets."""
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(z, t), axis=(1, 2))
  p = jax.nn.sigmoid(z)
  inter = jnp.sum(p * t, axis=(1, 2))
  dice = 1.0 - (2 * inter + 1.0) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(t, axis=(1, 2)) + 1.0)
  return bce, dice


def total_variation(m):
  """Mean absolute difference of neighbouring pixels of (..., h, w) masks."""
  return (jnp.mean(jnp.abs(m[..., 1:, :] - m[..., :-1, :]))
          + jnp.mean(jnp.abs(m[..., :, 1:] - m[..., :, :-1])))


def edge_aware_tv(m, photos, sigma: float, offsets=(1, 2, 4)):
  """Total variation of (B, H, W) masks weighted by photo similarity: each pair of pixels
  `d` apart along a row or a column costs |m_i - m_j| x exp(-|I_i - I_j|^2 / (2 sigma^2)),
  colours in [0, 1]. A mask may change freely across an edge of the (B, H, W, C) photo, not
  inside a region of one colour: a mask-free prior that snaps boundaries to the photo's
  edges (a local form of the dense-CRF loss of weakly-supervised segmentation). Mean over
  pairs, averaged over the offsets."""
  img = jax.lax.stop_gradient(jnp.asarray(photos, jnp.float32)) / 255.0
  total = 0.0
  for d in offsets:
    for axis in (1, 2):
      n = m.shape[axis]
      dm = jnp.abs(jax.lax.slice_in_dim(m, d, n, axis=axis)
                   - jax.lax.slice_in_dim(m, 0, n - d, axis=axis))
      di = jnp.sum(jnp.square(jax.lax.slice_in_dim(img, d, n, axis=axis)
                              - jax.lax.slice_in_dim(img, 0, n - d, axis=axis)), axis=-1)
      total = total + jnp.mean(dm * jnp.exp(-di / (2.0 * sigma ** 2)))
  return total / (2 * len(offsets))


def mask_box(m, scale: float, min_half: float):
  """Square boxes around (B, H, W) soft masks: centre = the mask-weighted centroid, half side
  = scale x the larger mask-weighted standard deviation (in pixels), at least min_half x the
  photo's side; (cy, cx, half), all differentiable in m."""
  b, h, w = m.shape
  ys = jnp.arange(h, dtype=jnp.float32) + 0.5
  xs = jnp.arange(w, dtype=jnp.float32) + 0.5
  total = jnp.sum(m, axis=(1, 2)) + 1e-3
  cy = jnp.sum(m * ys[None, :, None], axis=(1, 2)) / total
  cx = jnp.sum(m * xs[None, None, :], axis=(1, 2)) / total
  vy = jnp.sum(m * jnp.square(ys[None, :, None] - cy[:, None, None]), axis=(1, 2)) / total
  vx = jnp.sum(m * jnp.square(xs[None, None, :] - cx[:, None, None]), axis=(1, 2)) / total
  half = scale * jnp.sqrt(jnp.maximum(vy, vx) + 1e-6)
  half = jnp.clip(half, min_half * max(h, w), 0.5 * max(h, w))
  return cy, cx, half


def zoom(x, cy, cx, half, size: int):
  """(B, size, size, C) bilinear crops of (B, H, W, C) images over the square boxes
  (cy, cx, half) in pixels; beyond the photo the edge pixels repeat (the fill, where the
  mask is off there). Differentiable in x and in the boxes."""
  t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0

  def one(img, y0, x0, hf):
    gy, gx = jnp.meshgrid(y0 + hf * t - 0.5, x0 + hf * t - 0.5, indexing="ij")
    return jnp.stack([jax.scipy.ndimage.map_coordinates(img[..., c], [gy, gx], order=1,
                                                        mode="nearest")
                      for c in range(img.shape[-1])], axis=-1)
  return jax.vmap(one)(x, cy, cx, half)


def gaussian_blur(x, sigma: float):
  """(B, H, W, C) separable Gaussian blur with edge padding."""
  radius = max(1, int(3 * sigma))
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (t / sigma) ** 2)
  k = k / k.sum()
  xp = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
  h = sum(k[i] * xp[:, i:i + x.shape[1], :, :] for i in range(2 * radius + 1))
  return sum(k[i] * h[:, :, i:i + x.shape[2], :] for i in range(2 * radius + 1))


def confident_picks(best_score, has, keep: float):
  """(B,) bool: the samples with a pick (`has`) whose pick's score is among the highest
  ceil(keep x their count) of the batch. Batch-relative rather than a fixed cosine, since
  the scores' scale moves with the teacher and over training."""
  if keep >= 1.0:
    return has
  score = jnp.where(has, best_score, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-score))
  n_keep = jnp.ceil(keep * jnp.sum(has)).astype(rank.dtype)
  return has & (rank < n_keep)


# ------------------------------------------------------------------------------ the stage

class SegmenterStage(Stage):
  supervised = False

  def __init__(self, config):
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy: towers resolve into it
    resolved = towers_lib.resolve(config.teacher)
    config.teacher.model = resolved["model"]
    config.teacher.student = resolved["student"]
    config.teacher.data = resolved["data"]
    config.teacher.kind = resolved["kind"]
    if resolved["workdir"]:
      config.teacher.workdir = resolved["workdir"]
    super().__init__(config)
    self.towers = towers_lib.FrozenTowers(resolved)
    self.mcfg = _merge(MODEL_DEFAULTS, config.model, "model")
    self.lcfg = _merge(SUPERVISED_DEFAULTS if self.supervised else LOSS_DEFAULTS,
                       config.get("loss", {}), "loss")
    if not self.supervised:
      fill_values(np.zeros((1, 1, 1, 3), np.float32), 0 if self.lcfg["fill"] == "blur"
                  else self.lcfg["fill"])
      offsets = tuple(self.lcfg["edge_offsets"])
      if not float(self.lcfg["edge_sigma"]) > 0 or not offsets or min(offsets) < 1:
        raise UserError("loss.edge_sigma must be > 0 and loss.edge_offsets positive pixel "
                        f"offsets, got {self.lcfg['edge_sigma']} and {offsets}")
    self.pcfg = _merge(PSEUDO_DEFAULTS, config.get("pseudo", {}), "pseudo")
    self.prop = _merge(PROPOSAL_DEFAULTS, config.get("proposals", {}), "proposals")
    if float(self.prop["weight"]) and self.supervised:
      # The true masks are the target here; a mask-free run's config turned supervised keeps
      # working (evaluation and inference included).
      log.warning("stage='supervised' ignores config.proposals (weight %s)", self.prop["weight"])
      self.prop = {**self.prop, "weight": 0.0}
    # Checked whether or not the term is on: an override turning it on must not meet a bad
    # setting mid-run.
    proposals_lib.check_settings(**self._proposal_settings())
    if not 0.0 < float(self.prop["keep"]) <= 1.0:
      raise UserError(f"proposals.keep is the share of the batch trained on the teacher's "
                      f"picks, in (0, 1]; got {self.prop['keep']}")
    self.mcfg["regions"] = region_threshold(self.mcfg["regions"], "model.regions")
    if not 0.0 <= float(self.mcfg["min_component"]) <= 1.0:
      raise UserError("model.min_component is the share of a mask's largest component below "
                      f"which a component is dropped, in [0, 1]; got {self.mcfg['min_component']}")
    self.round1_dir = self._round1_dir()
    self.init_from = str(self.mcfg["init_from"] or "")
    tvit = self.towers.teacher.vit
    vit = from_config(self.mcfg["vit"]) if self.mcfg["vit"] else tvit.replace(dense_projection=False)
    prompts = int(self.mcfg["num_prompts"])
    if prompts < 0:
      teacher_prompts = self.towers.teacher.num_prompts and not self.towers.teacher.deep_prompts
      prompts = self.towers.teacher.num_prompts if (self.init_from == "teacher" and teacher_prompts) else 0
    self.model = Segmenter(vit, self.towers.embed_dim, head=self.mcfg["head"],
                           head_hidden=int(self.mcfg["head_hidden"]), adapter=bool(self.mcfg["adapter"]),
                           num_prompts=prompts, alpha_init=float(self.mcfg["alpha_init"]),
                           beta_init=float(self.mcfg["beta_init"]))
    self._frozen_values = None  # read by prepare_training: evaluation has them in its checkpoint
    self._round1_values = None

  def _round1_dir(self):
    """The first round's workdir when this run trains on its pseudo-labels, else None (read
    and checked by prepare_training: evaluation needs only this run's checkpoint)."""
    from pathlib import Path
    p = self.pcfg
    if not p["workdir"] or not float(p["weight"]):
      return None
    if self.supervised:
      raise UserError("pseudo-labels are for the mask-free stage, not stage='supervised'")
    if p["start"] not in ("round1", "init"):
      raise UserError(f"pseudo.start must be 'round1' or 'init', got {p['start']!r}")
    if not 0.0 <= float(p["low"]) < float(p["high"]) <= 1.0:
      raise UserError(f"pseudo needs 0 <= low < high <= 1, got low={p['low']} high={p['high']}")
    workdir = Path(p["workdir"]).absolute()
    self.config.pseudo.workdir = str(workdir)
    return workdir

  # -------------------------------------------------------------- data

  def data_config(self, split: str) -> dict:
    data = dict(self.config.data.to_dict())
    data.setdefault("raster_size", 0)
    data.setdefault("sketch_width", 0.0)
    if not data.get("raster_size"):
      data["raster_size"] = self.towers.raster_size
    if not data.get("sketch_width"):
      data["sketch_width"] = self.towers.sketch_width
    data["with_target"] = bool(self.supervised)
    if float(self.prop["weight"]) and split == "train":
      data["proposals"] = self._proposal_settings()
    if float(self.mcfg["regions"]):
      data["regions"] = float(self.mcfg["regions"])
    return data

  def _proposal_settings(self) -> dict:
    return {k: self.prop[k] for k in proposals_lib.DEFAULTS}

  # -------------------------------------------------------------- parameters

  def frozen(self):
    try:
      pats = frozen_patterns(self.mcfg["tune"], self.model.vit.depth, self.mcfg["last_k"],
                             prefix="segmenter/")
    except ValueError as e:
      raise UserError(str(e)) from e
    return ["^teacher/", "^student/", "^round1/"] + pats

  def prepare_training(self):
    if not self.config.teacher.get("random_init") and self._frozen_values is None:
      self._frozen_values = self.towers.read(int(self.config.teacher.get("step", -1)))
    if self.round1_dir is not None and self._round1_values is None:
      from sketchseg_jax.train.checkpoints import read_params
      from sketchseg_jax.train.config_lib import read_saved_config
      if not (self.round1_dir / "checkpoints").is_dir():
        raise UserError(f"pseudo.workdir {self.round1_dir} has no checkpoints/: name a finished "
                        "mask-free segmenter run")
      stage = read_saved_config(self.round1_dir).get("stage")
      if stage != "segmenter":
        raise UserError(f"pseudo.workdir {self.round1_dir} is a {stage!r} run, not a mask-free "
                        "segmenter run")
      step = int(self.pcfg["step"])
      params, got = read_params(self.round1_dir / "checkpoints", None if step < 0 else step)
      self._round1_values = {k[len("segmenter/"):]: v for k, v in flat(params).items()
                             if k.startswith("segmenter/")}
      log.info("pseudo-labels from %s, step %d", self.round1_dir, got)

  def _read_frozen(self) -> dict:
    if self._frozen_values is None:
      raise UserError("the teacher's parameters were not read: call prepare_training() "
                      "before init()")
    return self._frozen_values

  def initial_segmenter_values(self, frozen_flat: dict) -> dict:
    """Flat {path: array} the segmenter starts from under model.init_from: "" (random),
    "teacher" (the teacher's photo backbone, its photo prompts, and for CLIP its
    post-LayerNorm and projection as the head: the zero-shot start), or a path to backbone
    weights (sketchseg_jax.backbones.load)."""
    if not self.init_from:
      return {}
    if self.init_from == "teacher":
      tower = {k[len("teacher/backbone/"):]: v for k, v in frozen_flat.items()
               if k.startswith("teacher/backbone/")}
      out = {f"backbone/{k}": v for k, v in tower.items()}
      if self.model.num_prompts and "teacher/photo_prompts" in frozen_flat:
        out["prompts"] = frozen_flat["teacher/photo_prompts"]
      if self.model.vit.family == "clip" and "post_layernorm/scale" in tower:
        out.update(head_values_from_tower(tower))
      return out
    return {f"backbone/{k}": v for k, v in self._init_from_weights.items()}

  @functools.cached_property
  def _init_from_weights(self) -> dict:
    """The backbone file of model.init_from, read once (init is traced more than once)."""
    from sketchseg_jax import backbones
    return backbones.load_weights(self.init_from, self.model.vit)

  def _graft_segmenter(self, seg, frozen_flat):
    values = self.initial_segmenter_values(frozen_flat)
    if not values:
      return seg
    seg_shapes = shapes(seg)
    fitting = {k: v for k, v in values.items() if k in seg_shapes}
    if self.init_from != "teacher":
      missing = sorted(k for k in seg_shapes if k.startswith("backbone/") and k not in fitting)
      if missing:
        raise UserError(f"model.init_from={self.init_from!r} lacks {len(missing)} backbone "
                        f"weights of the configured model, e.g. {missing[:3]}")
    seg, _ = graft(seg, fitting, f"model.init_from={self.init_from!r}", strict=False)
    return seg

  def init(self, rng, batch):
    k_towers, k_seg = jax.random.split(rng)
    photos = batch["image"][:1]
    ink = batch["sketch"][:1, 0]
    frozen = self.towers.init(k_towers, photos, ink)
    if not self.config.teacher.get("random_init"):
      frozen_flat = self._read_frozen()
      for name in list(frozen):
        values = {k[len(name) + 1:]: v for k, v in frozen_flat.items() if k.startswith(name + "/")}
        frozen[name], _ = graft(frozen[name], values, f"teacher checkpoint of "
                                f"{self.config.teacher.workdir}", strict=True)
    else:
      frozen_flat = {f"teacher/{k}": v for k, v in flat(plain(frozen["teacher"])).items()}
    q = jnp.zeros((1, batch["sketch"].shape[1], self.towers.embed_dim), jnp.float32)
    seg = self.model.init(k_seg, photos, q)["params"]
    if self.round1_dir is None:
      return {"segmenter": self._graft_segmenter(seg, frozen_flat), **frozen}
    if self._round1_values is None:
      raise UserError("the first round's parameters were not read: call prepare_training() "
                      "before init()")
    round1, _ = graft(seg, self._round1_values, f"pseudo.workdir {self.round1_dir} (a segmenter "
                      "of another architecture?)", strict=True)
    if self.pcfg["start"] == "init":
      seg = self._graft_segmenter(seg, frozen_flat)
    else:
      seg = round1
    return {"segmenter": seg, "round1": round1, **frozen}

  def zero_shot_params(self, params) -> dict:
    """The segmenter as it starts (model.init_from applied to the same frozen towers) with the
    towers of `params`: the untrained, zero-shot baseline."""
    params = plain(params)
    frozen_flat = flat({k: params[k] for k in ("teacher", "student") if k in params})
    photos = np.zeros((1, self.towers.image_size, self.towers.image_size, 3), np.uint8)
    q = np.zeros((1, 1, self.towers.embed_dim), np.float32)
    seg = self.model.init(jax.random.key(int(self.config.seed) + 1), photos, q)["params"]
    seg = plain(self._graft_segmenter(seg, frozen_flat))
    return {**params, "segmenter": seg}

  # -------------------------------------------------------------- forward

  def queries(self, params, ink):
    """(B, Q, R, R) rasters -> (B, Q, E) sketch-tower embeddings (frozen)."""
    b, q, r, _ = ink.shape
    emb = self.towers.sketch(jax.lax.stop_gradient(params), ink.reshape(b * q, r, r))
    return jax.lax.stop_gradient(emb.reshape(b, q, -1))

  def query_logits(self, params, photos, ink, valid, extra_queries: int = 0, regions=None):
    """(logits (B, H, W) at the photo's size, the max over a query's valid sketches, averaged
    over the photo's colour regions (B, H, W) where model.regions asks for them;
    per-sketch low-res logits (B, Q, h, w); queries (B, Q, E); and the logits of each photo
    under `extra_queries` other queries of the batch (K, B, H, W): photo i under the query
    of photo (i + k) % B, for k = 1..K, or None)."""
    q = self.queries({k: v for k, v in params.items() if k not in ("segmenter", "round1")}, ink)
    seg = {"params": params["segmenter"]}
    feats = self.model.apply(seg, photos, method=Segmenter.features)
    size = photos.shape[1:3]
    low = self.model.apply(seg, feats, q, method=Segmenter.logits)
    pool = self._region_pool(regions)
    z = pool(combine_logits(upsample(low, size), valid))
    others = []
    for k in range(1, extra_queries + 1):
      qk, vk = jnp.roll(q, -k, axis=0), jnp.roll(valid, -k, axis=0)
      zk = self.model.apply(seg, feats, qk, method=Segmenter.logits)
      others.append(pool(combine_logits(upsample(zk, size), vk)))
    return z, low, q, jnp.stack(others) if others else None

  def _region_pool(self, regions):
    if not float(self.mcfg["regions"]):
      return lambda z: z
    if regions is None:
      raise UserError(f"model.regions={self.mcfg['regions']} pools the logits over the "
                      "photo's colour regions, but the batch has no 'regions'")
    return lambda z: pool_over_regions(z, regions)

  def predict(self, params, photos, ink, valid, regions=None):
    """(B, H, W) mask probabilities; for evaluation and inference. `regions`: the photos'
    colour regions, required when model.regions is set. With model.min_component, the
    masks' small components (at 0.5) are dropped."""
    probs = jax.nn.sigmoid(self.query_logits(params, photos, ink, valid, regions=regions)[0])
    return drop_small_components(probs, float(self.mcfg["min_component"]))

  # -------------------------------------------------------------- loss

  def _fill(self, x):
    fill = self.lcfg["fill"]
    if fill == "blur":
      return gaussian_blur(x, float(self.lcfg["blur_sigma"]))
    return fill_values(x, fill, self.towers.photo_vit().family)

  def loss(self, params, batch, rng, step=0):
    c = self.lcfg
    photos = batch["image"]
    valid = batch["sketch_valid"]
    frozen = jax.lax.stop_gradient({k: v for k, v in params.items() if k != "segmenter"})
    extra = int(c["same_photo_negatives"])
    z, low, q, z_other = self.query_logits({**frozen, "segmenter": params["segmenter"]}, photos,
                                           batch["sketch"], valid, extra, batch.get("regions"))
    m = jax.nn.sigmoid(z)
    w = valid.astype(jnp.float32)[..., None]
    qi = l2_normalize(jnp.sum(q * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0))
    hard = m
    if c["straight_through"]:
      hard = m + jax.lax.stop_gradient((m > 0.5).astype(m.dtype) - m)
    x = jnp.asarray(photos, jnp.float32)
    fill = self._fill(x)
    mm = hard[..., None]
    xp = mm * x + (1.0 - mm) * fill
    xn = (1.0 - mm) * x + mm * fill
    b = x.shape[0]
    if c["zoom"]:
      # The teacher knows object-centred photos: show it the masked region, zoomed to a box
      # around the mask (and the complement over the same box).
      box = mask_box(hard, float(c["zoom"]), float(c["zoom_min"]))
      size = self.towers.image_size
      xp, xn = zoom(xp, *box, size), zoom(xn, *box, size)
    f = self.towers.photo(frozen, jnp.concatenate([xp, xn], axis=0))
    fp, fn = f[:b], f[b:]
    terms = {}
    same = None
    if c["drop_same_category"]:
      cat = batch["category_id"]
      same = (cat[:, None] == cat[None, :]) & (cat[:, None] >= 0)
    extra_sim = None
    if extra:
      # The same photo under other queries' masks: negatives that a query-independent mask
      # cannot beat. Forward only (no gradient), and dropped where the other query is of the
      # same category (its mask may rightly be the same).
      m_other = jax.nn.sigmoid(z_other)
      xo = m_other[..., None] * x[None] + (1.0 - m_other[..., None]) * fill[None]
      xo = xo.reshape((-1,) + x.shape[1:])
      if c["zoom"]:
        mo = m_other.reshape((-1,) + m_other.shape[2:])
        xo = zoom(xo, *mask_box(mo, float(c["zoom"]), float(c["zoom_min"])), self.towers.image_size)
      fo = jax.lax.stop_gradient(self.towers.photo(frozen, xo))
      fo = fo.reshape(extra, b, -1)
      extra_sim = jnp.einsum("be,kbe->bk", qi, fo)
      cat = batch["category_id"]
      other_cat = jnp.stack([jnp.roll(cat, -k) for k in range(1, extra + 1)], axis=1)
      extra_sim = jnp.where((other_cat == cat[:, None]) & (cat[:, None] >= 0), -jnp.inf, extra_sim)
    terms["in"] = infonce_positive_only(qi, fp, float(c["tau"]), same, extra_sim)
    d_pos = 1.0 - jnp.sum(qi * fp, axis=-1)
    d_neg = 1.0 - jnp.sum(qi * fn, axis=-1)
    terms["out"] = jnp.mean(jax.nn.relu(float(c["margin"]) + d_pos - d_neg))
    area = jnp.mean(m, axis=(1, 2))
    terms["area"] = (jnp.mean(jax.nn.relu(area - float(c["area_high"]))
                              + jax.nn.relu(float(c["area_low"]) - area))
                     + float(c["area_linear"]) * jnp.mean(area))
    low_p = jax.nn.sigmoid(low)
    terms["tv"] = total_variation(jnp.where(valid[:, :, None, None], low_p, 0.0))
    terms["bin"] = jnp.mean(m * (1.0 - m))
    if c["edge_tv"]:
      terms["edge_tv"] = edge_aware_tv(m, x, float(c["edge_sigma"]),
                                       tuple(int(d) for d in c["edge_offsets"]))
    start, end = (float(v) for v in c["bin_ramp"])
    ramp = jnp.clip((jnp.asarray(step, jnp.float32) - start) / max(end - start, 1.0), 0.0, 1.0)
    weights = {"in": c["in_weight"], "out": c["out"], "area": c["area"], "tv": c["tv"],
               "bin": c["bin"] * ramp, "edge_tv": c["edge_tv"]}
    extra_logs = {}
    if float(self.prop["weight"]):
      terms["proposal"], extra_logs["proposal_area"] = self._proposal_term(
          frozen, z, x, fill, qi, batch["proposals"], batch["proposals_valid"])
      weights["proposal"] = float(self.prop["weight"])
    if self.round1_dir is not None:
      terms["pseudo"], extra_logs["pseudo_confident"] = self._pseudo_term(
          frozen["round1"], z, photos, q, valid, batch.get("regions"))
      weights["pseudo"] = float(self.pcfg["weight"])
    total = sum(weights[k] * v for k, v in terms.items())
    top1 = jnp.mean(jnp.argmax(qi @ fp.T, axis=1) == jnp.arange(b))
    return total, {**terms, **extra_logs, "mask_mean": jnp.mean(area),
                   "pos_cos": jnp.mean(1 - d_pos), "neg_cos": jnp.mean(1 - d_neg),
                   "batch_acc@1": top1,
                   "alpha": params["segmenter"]["alpha"], "beta": params["segmenter"]["beta"]}

  def _proposal_term(self, frozen, z, x, fill, qi, proposals, proposals_valid):
    """(BCE + Dice of logits z against, per photo, the candidate region the frozen teacher
    matches best to the query, mean area of those regions). The candidates come from the
    photo's colours (sketchseg_jax.data.proposals); no gradient goes through the choice."""
    p = self.prop
    b, k = proposals.shape[:2]
    cand = proposals.astype(jnp.float32)
    xs = cand[..., None] * x[:, None] + (1.0 - cand[..., None]) * fill[:, None]
    xs = xs.reshape((b * k,) + x.shape[1:])
    flat_cand = cand.reshape((b * k,) + cand.shape[2:])
    if float(p["zoom"]):
      xs = zoom(xs, *mask_box(flat_cand, float(p["zoom"]), float(p["zoom_min"])),
                self.towers.image_size)
    f = jax.lax.stop_gradient(self.towers.photo(frozen, xs)).reshape(b, k, -1)
    score = jnp.einsum("be,bke->bk", jax.lax.stop_gradient(qi), f)
    score = jnp.where(proposals_valid, score, -jnp.inf)
    best = jnp.argmax(score, axis=1)
    target = jnp.take_along_axis(cand, best[:, None, None, None], axis=1)[:, 0]
    has = confident_picks(jnp.max(score, axis=1), jnp.any(proposals_valid, axis=1),
                          float(p["keep"])).astype(jnp.float32)
    bce, dice = bce_dice(z, target)
    n = jnp.maximum(jnp.sum(has), 1.0)
    return (jnp.sum((bce + dice) * has) / n,
            jnp.sum(jnp.mean(target, axis=(1, 2)) * has) / n)

  def _pseudo_term(self, round1, z, photos, q, valid, regions=None):
    """(BCE of logits z against the confident masks of the round-1 segmenter `round1` for the
    same queries q, share of pixels confident)."""
    p = self.pcfg
    r1 = {"params": round1}
    feats = self.model.apply(r1, photos, method=Segmenter.features)
    low = self.model.apply(r1, feats, q, method=Segmenter.logits)
    pool = self._region_pool(regions)  # round 1 has this run's architecture
    p1 = jax.nn.sigmoid(pool(combine_logits(upsample(low, photos.shape[1:3]), valid)))
    sure = ((p1 >= float(p["high"])) | (p1 <= float(p["low"]))).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(z, (p1 >= float(p["high"])).astype(jnp.float32))
    return jnp.sum(bce * sure) / jnp.maximum(jnp.sum(sure), 1.0), jnp.mean(sure)

  # -------------------------------------------------------------- evaluation

  @functools.cached_property
  def predict_fn(self):
    return jax.jit(self.predict)

  def evaluate(self, params, step):
    from sketchseg_jax.evaluate.segmenter_eval import quick_eval
    return quick_eval(self, params)

  def eval_report(self, params, data: Optional[str] = None, out_dir=None) -> dict:
    from sketchseg_jax.evaluate.segmenter_eval import full_report
    return full_report(self, params, data, out_dir)


class SupervisedStage(SegmenterStage):
  """The same segmenter trained on the true masks (BCE + Dice): the upper bound."""
  supervised = True

  def loss(self, params, batch, rng, step=0):
    c = self.lcfg
    frozen = jax.lax.stop_gradient({k: v for k, v in params.items() if k != "segmenter"})
    z = self.query_logits({**frozen, "segmenter": params["segmenter"]}, batch["image"],
                          batch["sketch"], batch["sketch_valid"], regions=batch.get("regions"))[0]
    t = batch["target"].astype(jnp.float32)
    keep = batch["has_target"].astype(jnp.float32)
    bce, dice = bce_dice(z, t)
    n = jnp.maximum(jnp.sum(keep), 1.0)
    terms = {"bce": jnp.sum(bce * keep) / n, "dice": jnp.sum(dice * keep) / n}
    total = c["bce"] * terms["bce"] + c["dice"] * terms["dice"]
    return total, {**terms, "mask_mean": jnp.mean(jax.nn.sigmoid(z))}
