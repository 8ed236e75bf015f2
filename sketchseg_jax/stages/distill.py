"""Distilling the teacher's photo tower into a compact one (METHOD.md, "Three models", 2).

The segmenter back-propagates through the photo tower on every step, so a cheaper tower that
embeds photos like the teacher's makes every segmenter step cheaper. The student is a photo
tower only: queries keep using the teacher's sketch tower, so the pair (E_s, E_p') shares the
teacher's space.

Parameters: {"student": ..., "teacher": ...}. The teacher subtree is a trained teacher run's
parameters (config.teacher.workdir: its config.json says the architecture, its newest
checkpoint, or config.teacher.step, the values), inserted by `init` so the engine shards it
like the rest, and frozen. config.teacher.random_init=True is a test mode: a randomly
initialised teacher of architecture config.teacher.model, for tests and benchmarks only.

The student's start (config.model.init_from): "teacher" makes a same-width student with a
larger patch exactly the teacher's photo tower run on the photo shrunk to the student's patch
grid (kernel area-resampled, position grid resized, prompts and projection copied; fewer
layers take evenly spaced teacher blocks), so distillation only has to recover what the
coarser grid loses; a backbone checkpoint path, or "" for random weights.

Inputs: each batch's photos, and variants of them made inside the loss from the step's rng
(config.distill.views):
  clean    the photos as the pipeline gives them
  masked   blended with the fill by a soft random mask: low-frequency noise through a sigmoid
           of random sharpness and level, so coverage and softness vary as the segmenter's
           masks do
  partial  the photo kept inside a random box and filled outside it, as the teacher's
           partition-aware pairs blank photos
Fill (config.distill.fill): "mean" (each photo's mean colour, as the partition augmentation
fills), "norm" (the teacher backbone's normalisation mean) or a grey level 0-255.

Loss: cosine * mean over views and photos of (1 - cos(student(x), teacher(x))) + relational *
MSE between the student's and the teacher's cosine-similarity matrices over every embedding
of the batch, all views together (so how a masked photo relates to the other photos, which is
what the segmenter's InfoNCE compares, is matched too). Optional (weight 0 = off):
contrastive (InfoNCE of each student embedding against the batch's teacher embeddings) and
retrieval (for each sketch of the batch, embedded by the teacher's sketch tower, the KL from
the teacher's softmax over all the batch's photo embeddings to the student's, at
retrieval_tau). The teacher runs under stop_gradient.

Evaluation: the teacher's retrieval evaluation (sketchseg_jax.stages.teacher) with the
student's photo tower: acc@1/5/10 and mAP@all of (teacher sketch tower, student photo tower)
per evaluation set, with beside them "keeps" (student acc@5 / teacher acc@5) and its paired
bootstrap 90% interval "keeps_ci90" over the queries, "top5_hits" (queries in the top 5 for
both pairs, the teacher's only, the student's only),
"cosine_to_teacher" (mean cosine of the two towers' embeddings of the same photo) and
"match@1" (the student's embedding of a photo is nearest to the teacher's of that photo among
its gallery); the reference pair's numbers under "teacher"; and the forward+backward cost per
photo of both photo towers under "cost".
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sketchseg_jax.errors import CheckpointError, UserError
from sketchseg_jax.param_tree import flat, graft, plain, shapes
from sketchseg_jax.models.preprocess import MEAN_STD, normalize
from sketchseg_jax.models.resize import resample_patch_kernel, resize_position_table
from sketchseg_jax.models.sbir import SBIRTeacher, l2_normalize
from sketchseg_jax.models.vit import VisionTransformer
from sketchseg_jax.models.vit_config import ViTConfig, from_config
from sketchseg_jax.stages.teacher import TeacherStage
from sketchseg_jax.train.stage import Stage

log = logging.getLogger(__name__)

VIEWS = ("clean", "masked", "partial")
DISTILL_DEFAULTS = dict(views=VIEWS, cosine=1.0, relational=1.0, contrastive=0.0, tau=0.05,
                        retrieval=0.0, retrieval_tau=0.05, fill="mean", mask_grid=4,
                        mask_sharpness=(2.0, 20.0), box_area=(0.15, 0.6))


# ------------------------------------------------------------------------------ losses

def cosine_loss(s, t):
  """Mean of 1 - cos between rows of s and t (both unit vectors)."""
  return jnp.mean(1.0 - jnp.sum(s * t, axis=-1))


def relational_loss(s, t):
  """MSE between the in-batch cosine-similarity matrices of s and of t."""
  return jnp.mean(jnp.square(s @ s.T - t @ t.T))


def contrastive_loss(s, t, tau):
  """InfoNCE of each student embedding against the teacher embeddings of the batch: its own
  input's is the positive. Unlike the cosine term it rewards only what tells inputs apart,
  which matters when the teacher's embeddings crowd into a narrow cone."""
  logits = (s @ t.T) / tau
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(s.shape[0])))


def retrieval_kl(q, s, t, tau):
  """Mean over sketch queries q of KL(softmax(q t^T / tau) || softmax(q s^T / tau)): the
  student's photo embeddings s must rank the batch's photos for each sketch as the
  teacher's t do, most of all near the top, which is what retrieval reads."""
  log_t = jax.nn.log_softmax((q @ t.T) / tau, axis=-1)
  log_s = jax.nn.log_softmax((q @ s.T) / tau, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1))


# ------------------------------------------------------------------------------ views

def soft_masks(rng, b: int, h: int, w: int, grid: int = 4, sharpness=(2.0, 20.0)):
  """(b, h, w, 1) masks in (0, 1): a smooth random field on a grid x grid lattice, upsampled,
  standardised per image and put through a sigmoid of random sharpness and level."""
  k_noise, k_sharp, k_level = jax.random.split(rng, 3)
  noise = jax.random.normal(k_noise, (b, grid, grid))
  field = jax.image.resize(noise, (b, h, w), "cubic")
  field = field - field.mean(axis=(1, 2), keepdims=True)
  field = field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)
  sharp = jax.random.uniform(k_sharp, (b, 1, 1), minval=sharpness[0], maxval=sharpness[1])
  # The level sets how much is kept: from about a sixth to five sixths of the photo.
  level = jax.random.uniform(k_level, (b, 1, 1), minval=-1.0, maxval=1.0)
  return jax.nn.sigmoid(sharp * (field - level))[..., None]


def box_masks(rng, b: int, h: int, w: int, area=(0.15, 0.6)):
  """(b, h, w, 1) masks, 1 inside a random box covering `area` (fractions) of the photo with
  aspect ratio between 1:2 and 2:1, 0 outside."""
  k_area, k_ratio, k_y, k_x = jax.random.split(rng, 4)
  a = jax.random.uniform(k_area, (b,), minval=area[0], maxval=area[1])
  ratio = jnp.exp(jax.random.uniform(k_ratio, (b,), minval=-math.log(2.0), maxval=math.log(2.0)))
  bh = jnp.clip(jnp.sqrt(a * ratio), 0.0, 1.0)
  bw = jnp.clip(a / jnp.maximum(bh, 1e-6), 0.0, 1.0)
  y0 = jax.random.uniform(k_y, (b,)) * (1.0 - bh)
  x0 = jax.random.uniform(k_x, (b,)) * (1.0 - bw)
  yy = (jnp.arange(h) + 0.5) / h
  xx = (jnp.arange(w) + 0.5) / w
  in_y = (yy[None] >= y0[:, None]) & (yy[None] < (y0 + bh)[:, None])
  in_x = (xx[None] >= x0[:, None]) & (xx[None] < (x0 + bw)[:, None])
  return (in_y[:, :, None] & in_x[:, None, :]).astype(jnp.float32)[..., None]


def fill_values(photos, fill, family: str = "clip"):
  """(B, 1, 1, 3) float fill in 0-255 for `photos`: "mean", "norm" or a grey level."""
  b = photos.shape[0]
  if isinstance(fill, str) and fill == "mean":
    return jnp.mean(jnp.asarray(photos, jnp.float32), axis=(1, 2), keepdims=True)
  if isinstance(fill, str) and fill == "norm":
    colour = jnp.asarray(MEAN_STD[family][0], jnp.float32) * 255.0
  else:
    try:
      grey = float(fill)
    except (TypeError, ValueError):
      raise UserError(f"distill.fill must be 'mean', 'norm' or a grey level 0-255, got {fill!r}")
    colour = jnp.full((3,), grey, jnp.float32)
  return jnp.broadcast_to(colour, (b, 1, 1, 3))


def make_views(photos, rng, views: Sequence[str], *, fill="mean", family: str = "clip",
               mask_grid: int = 4, mask_sharpness=(2.0, 20.0), box_area=(0.15, 0.6)):
  """(len(views) * B, H, W, 3) float32 photos in 0-255, view-major: the clean photos and/or
  their masked and partial variants, a pure function of (photos, rng)."""
  x = jnp.asarray(photos, jnp.float32)
  b, h, w, _ = x.shape
  colour = fill_values(x, fill, family)
  k_mask, k_box = jax.random.split(rng)
  out = []
  for v in views:
    if v == "clean":
      out.append(x)
    elif v == "masked":
      m = soft_masks(k_mask, b, h, w, mask_grid, mask_sharpness)
      out.append(m * x + (1.0 - m) * colour)
    elif v == "partial":
      m = box_masks(k_box, b, h, w, box_area)
      out.append(m * x + (1.0 - m) * colour)
    else:
      raise UserError(f"unknown distill view {v!r}; known: {list(VIEWS)}")
  return jnp.concatenate(out, axis=0)


# ------------------------------------------------------------------------------ student

class PhotoStudent(nn.Module):
  """A compact photo tower: ViT (with `num_prompts` shallow prompt tokens, as the teacher's
  photo tower has), pooled output (CLS, or the mean of the patch tokens) projected to the
  teacher's width `embed_dim` by a Dense head where the pooled width differs, and
  L2-normalised. Param tree: backbone/..., prompts (when present), head/ (when present)."""
  vit: ViTConfig
  embed_dim: int
  pool: str = "cls"
  num_prompts: int = 0

  @nn.compact
  def __call__(self, photos):
    """(B, H, W, 3) uint8 or [0, 255] float photos -> (B, embed_dim) unit vectors."""
    if self.pool not in ("cls", "mean"):
      raise UserError(f"student pool must be 'cls' or 'mean', got {self.pool!r}")
    prompts = None
    if self.num_prompts:
      prompts = self.param("prompts", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                   (None, "embed")),
                           (self.num_prompts, self.vit.width), self.vit.param_dtype)
    out = VisionTransformer(self.vit, name="backbone")(normalize(photos, self.vit.family),
                                                       prompts=prompts)
    if self.pool == "mean":
      feats = jnp.mean(out["patch_tokens"].astype(jnp.float32), axis=(1, 2))
    else:
      feats = out["pooled"].astype(jnp.float32)
    if feats.shape[-1] != self.embed_dim:
      feats = nn.Dense(self.embed_dim, use_bias=False, name="head",
                       kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                                ("embed", "proj")))(feats)
    return l2_normalize(feats)


def embed_width(vit: ViTConfig) -> int:
  """Width of the teacher's embedding space for its backbone config."""
  return int(vit.projection_dim or vit.width)


def student_from_config(model: dict, teacher_vit: ViTConfig) -> PhotoStudent:
  """The PhotoStudent of a distillation config's `model` block, for a teacher of `teacher_vit`."""
  return PhotoStudent(from_config(model["vit"]), embed_width(teacher_vit),
                      str(model.get("pool", "cls")), int(model.get("num_prompts", 0) or 0))


# ------------------------------------------------------------------------------ grafting

def teacher_layer_map(student_depth: int, teacher_depth: int) -> list:
  """Teacher layer each student layer starts from: evenly spaced, first and last included."""
  if student_depth == 1:
    return [0]
  return [round(i * (teacher_depth - 1) / (student_depth - 1)) for i in range(student_depth)]


# ------------------------------------------------------------------------------ evaluation

class _PairedTeacherEval(TeacherStage):
  """The teacher stage's evaluation with two photo towers at once: its photo encoder returns
  [teacher photo | student photo] side by side, so one pass over the data gives both pairs."""

  def __init__(self, config, student: PhotoStudent):
    super().__init__(config)
    self.student = student

  @functools.cached_property
  def _encoders(self):
    def photo(prm, x):
      t = self.model.apply({"params": prm["teacher"]}, x, method=SBIRTeacher.photo)
      s = self.student.apply({"params": prm["student"]}, x)
      return jnp.concatenate([t, s], axis=-1)

    def sketch(prm, x):
      return self.model.apply({"params": prm["teacher"]}, x, method=SBIRTeacher.sketch)
    return jax.jit(photo), jax.jit(sketch)


def input_grad_flops(fn, params, image_size: int) -> float:
  """XLA's FLOP count of one photo's forward+backward w.r.t. the photo (NaN where unknown)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  grad = jax.grad(lambda p, im: jnp.sum(fn(p, im)), argnums=1)
  try:
    cost = jax.jit(grad).lower(params, x).compile().cost_analysis()
  except Exception:  # backends without cost analysis
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


# ------------------------------------------------------------------------------ the stage

class DistillStage(Stage):

  def __init__(self, config):
    super().__init__(config)
    unknown = sorted(set(config.distill.keys()) - set(DISTILL_DEFAULTS))
    if unknown:
      raise UserError(f"unknown distill keys {unknown}; known: {sorted(DISTILL_DEFAULTS)}")
    self.dcfg = {**DISTILL_DEFAULTS, **config.distill.to_dict()}
    self.views = tuple(self.dcfg["views"])
    if not self.views or any(v not in VIEWS for v in self.views):
      raise UserError(f"distill.views must be a non-empty list drawn from {list(VIEWS)}, "
                      f"got {list(self.views)}")
    fill_values(np.zeros((1, 1, 1, 3), np.float32), self.dcfg["fill"])  # fails fast on a bad fill
    t = config.teacher
    self.teacher_workdir = Path(t.workdir) if t.workdir else None
    if self.teacher_workdir is None and not t.random_init:
      raise UserError("config.teacher.workdir is empty: pass --config.teacher.workdir=DIR, the "
                      "workdir of a teacher training run (teacher.random_init=True is for tests)")
    if self.teacher_workdir is not None and t.random_init:
      raise UserError("set either config.teacher.workdir or config.teacher.random_init, not both")
    self.teacher_config = self._teacher_config()
    m = config.model
    self.student = student_from_config(m.to_dict(), from_config(self.teacher_config.model.vit))
    self.evaluator = _PairedTeacherEval(self.teacher_config, self.student)
    self.teacher = self.evaluator.model
    self.init_from = str(m.get("init_from", "") or "")
    self._teacher_values = None  # read by prepare_training: evaluation has them in its checkpoint

  # -------------------------------------------------------------- the teacher's config

  def _teacher_config(self) -> ml_collections.ConfigDict:
    """The teacher's own config (its run's, or one made for random_init) with this config's
    evaluation settings. A teacher run's config is also written into this config
    (teacher.run, and its model into teacher.model), which the engine saves, so that
    evaluating or exporting this run later needs only its own workdir."""
    from sketchseg_jax.train.config_lib import read_saved_config
    c = self.config
    saved_run = c.teacher.get("run")
    if self.teacher_workdir is not None and (self.teacher_workdir.exists() or not saved_run):
      if not (self.teacher_workdir / "checkpoints").is_dir():
        raise UserError(f"teacher workdir {self.teacher_workdir} has no checkpoints/; "
                        "is it a teacher training run's workdir?")
      saved = read_saved_config(self.teacher_workdir)
      if saved.get("stage") != "teacher":
        raise UserError(f"{self.teacher_workdir} is a {saved.get('stage')!r} run, not a teacher run")
      tc = saved.to_dict()
      tc.pop("eval", None)
      if "run" in c.teacher:  # configs saved before this key existed lack it
        c.teacher.run = tc
      c.teacher.model = tc["model"]
    elif self.teacher_workdir is not None:
      log.info("distill: teacher workdir %s is gone; its config comes from this run's",
               self.teacher_workdir)
      tc = saved_run.to_dict()
    else:
      data = dict(c.data.to_dict())
      vit = from_config(c.teacher.model.vit)
      data["image_size"] = data.get("image_size") or vit.image_size
      data["raster_size"] = data.get("raster_size") or data["image_size"]
      data["sketch_width"] = data.get("sketch_width") or 2.0
      tc = dict(stage="teacher", seed=int(c.seed), model=c.teacher.model.to_dict(), loss={},
                data=data)
    tc["eval"] = c.eval.to_dict()
    return ml_collections.ConfigDict(tc)

  def data_config(self, split: str) -> dict:
    """This config's data; image_size, raster_size and sketch_width of 0 take the teacher's."""
    data = dict(self.config.data.to_dict())
    teacher_data = self.teacher_config.data
    for key in ("image_size", "raster_size", "sketch_width"):
      if not data.get(key):
        data[key] = teacher_data[key]
    return data

  # -------------------------------------------------------------- parameters

  def prepare_training(self):
    if self.teacher_workdir is not None and self._teacher_values is None:
      self._teacher_values = self._read_teacher()

  def _read_teacher(self) -> dict:
    """Flat {path: array} of the trained teacher's parameters (read in prepare_training,
    outside any trace: the engine calls `init` under jit)."""
    from sketchseg_jax.train.checkpoints import read_state
    step = int(self.config.teacher.get("step", -1))
    state, got = read_state(self.teacher_workdir / "checkpoints", None if step < 0 else step)
    if not isinstance(state, dict) or "params" not in state:
      raise CheckpointError(f"teacher checkpoint {self.teacher_workdir}/checkpoints/{got} "
                            "holds no 'params'")
    log.info("distill: teacher from %s, step %d", self.teacher_workdir, got)
    return flat(state["params"])

  def _student_init_values(self, teacher_flat: dict) -> dict:
    """Flat {student path: array} for config.model.init_from: nothing (""), the teacher's
    photo tower ("teacher": every backbone leaf whose shape fits, layers evenly spaced, the
    patch kernel and position grid resampled to another patch size, and its photo prompts),
    or backbone weights at a path (sketchseg_jax.backbones.load)."""
    if not self.init_from:
      return {}
    svit = self.student.vit
    if svit.scan_layers:
      raise UserError("model.init_from needs the student's scan_layers=False")
    if self.init_from == "teacher":
      tvit = self.teacher.vit
      if tvit.scan_layers:
        raise UserError("model.init_from='teacher' needs the teacher's scan_layers=False")
      layer_of = teacher_layer_map(svit.depth, tvit.depth)
      out = {}
      for i, j in enumerate(layer_of):
        prefix = f"backbone/encoder/layers_{j}/"
        out.update({f"backbone/encoder/layers_{i}/{k[len(prefix):]}": v
                    for k, v in teacher_flat.items() if k.startswith(prefix)})
      out.update({k: v for k, v in teacher_flat.items()
                  if k.startswith("backbone/") and not k.startswith("backbone/encoder/")})
      # A larger patch: the teacher's patch kernel and position grid resampled, so the student
      # starts as the teacher run on the photo shrunk to the student's grid.
      kernel = "backbone/patch_embedding/kernel"
      if kernel in out and svit.patch_size != tvit.patch_size:
        out[kernel] = resample_patch_kernel(out[kernel], svit.patch_size)
      table = "backbone/position_embedding"
      if table in out and svit.grid != tvit.grid:
        out[table] = resize_position_table(out[table], svit.grid)
      if self.student.num_prompts and "photo_prompts" in teacher_flat:
        out["prompts"] = teacher_flat["photo_prompts"]
      return out
    return {f"backbone/{k}": v for k, v in self._init_from_weights.items()}

  @functools.cached_property
  def _init_from_weights(self) -> dict:
    """The backbone file of model.init_from, read once (init is traced more than once)."""
    from sketchseg_jax import backbones
    return backbones.load_weights(self.init_from, self.student.vit)

  def init(self, rng, batch):
    k_student, k_teacher = jax.random.split(rng)
    photos = batch["image"][:1]
    ink = batch["sketch"][:1, 0]
    teacher = self.teacher.init(k_teacher, photos, ink)["params"]
    teacher_flat = {}
    if self.teacher_workdir is not None:
      # The engine has read them in prepare_training; another caller reads them here.
      self.prepare_training()
      teacher_flat = self._teacher_values
      where = f"teacher checkpoint in {self.teacher_workdir}"
      teacher, _ = graft(teacher, teacher_flat, where, strict=True)
    elif self.init_from == "teacher":
      teacher_flat = flat(plain(teacher))
    student = self.student.init(k_student, photos)["params"]
    values = self._student_init_values(teacher_flat)
    if values:
      student_keys = set(flat(student))
      fitting = {k: v for k, v in values.items() if k in student_keys}
      if self.init_from == "teacher":
        # Only what has the student's shape: a narrower student keeps its own init there.
        student_shapes = shapes(student)
        fitting = {k: v for k, v in fitting.items() if tuple(np.shape(v)) == student_shapes[k]}
        if not fitting:
          raise UserError("model.init_from='teacher': no teacher weight fits the student "
                          "(its width, patch or MLP size differ); use init_from=''")
      student, _ = graft(student, fitting, f"model.init_from={self.init_from!r}", strict=False)
    return {"student": student, "teacher": teacher}

  def frozen(self):
    return ["^teacher/"]

  # -------------------------------------------------------------- loss

  def _views(self, photos, rng):
    d = self.dcfg
    return make_views(photos, rng, self.views, fill=d["fill"], family=self.teacher.vit.family,
                      mask_grid=int(d["mask_grid"]), mask_sharpness=tuple(d["mask_sharpness"]),
                      box_area=tuple(d["box_area"]))

  def loss(self, params, batch, rng):
    d = self.dcfg
    photos = batch["image"]
    b = photos.shape[0]
    x = self._views(photos, rng)
    t = jax.lax.stop_gradient(
        self.teacher.apply({"params": params["teacher"]}, x, method=SBIRTeacher.photo))
    s = self.student.apply({"params": params["student"]}, x)
    cos = cosine_loss(s, t)
    per_view = (1.0 - jnp.sum(s * t, axis=-1)).reshape(len(self.views), b)
    rel = relational_loss(s, t)
    total = d["cosine"] * cos + d["relational"] * rel
    extra = {}
    if d["contrastive"]:
      extra["contrastive"] = contrastive_loss(s, t, d["tau"])
      total = total + d["contrastive"] * extra["contrastive"]
    if d["retrieval"]:
      q = jax.lax.stop_gradient(self.teacher.apply({"params": params["teacher"]},
                                                   batch["sketch"][:, 0],
                                                   method=SBIRTeacher.sketch))
      extra["retrieval"] = retrieval_kl(q, s, t, d["retrieval_tau"])
      total = total + d["retrieval"] * extra["retrieval"]
    # Does the student's embedding pick its own teacher embedding among the batch's?
    match = jnp.mean(jnp.argmax(s @ t.T, axis=1) == jnp.arange(s.shape[0]))
    terms = {f"cosine/{v}": per_view[i].mean() for i, v in enumerate(self.views)}
    return total, {**terms, **extra, "cosine": cos, "relational": rel, "match@1": match}

  # -------------------------------------------------------------- evaluation

  def _paired_retrieval(self, params, sets) -> tuple:
    """({set: student-pair metrics}, {set: teacher-pair metrics})."""
    from sketchseg_jax.evaluate.retrieval import paired_keeps, retrieval_metrics
    params = plain(params)
    width = self.student.embed_dim
    student, teacher = {}, {}
    for name, (source, partial) in sets.items():
      s, p, positive, q_labels, g_labels, q_groups, g_groups = self.evaluator._embed_set(
          params, source, partial)
      ids = np.arange(len(g_labels))
      groups = dict(query_groups=q_groups, gallery_groups=g_groups, return_ranks=True)
      teacher[name], t_ranks = retrieval_metrics(s, p[:, :width], positive, q_labels,
                                                 g_labels, **groups)
      student[name], s_ranks = retrieval_metrics(s, p[:, width:], positive, q_labels,
                                                 g_labels, **groups)
      # Each miss or gain is a photo or two on small galleries: the interval says whether
      # "keeps" is above a goal or only noise around it.
      paired = paired_keeps(t_ranks, s_ranks, k=5)
      student[name]["keeps"] = paired["keeps"]
      student[name]["keeps_ci90"] = [paired["keeps_low"], paired["keeps_high"]]
      student[name]["top5_hits"] = {"both": paired["hits_both"],
                                    "teacher_only": paired["hits_reference_only"],
                                    "student_only": paired["hits_candidate_only"]}
      # Fidelity whatever the teacher's own accuracy: how close each student embedding is to
      # the teacher's of the same photo, and whether it is the nearest of the gallery's.
      tp, sp = p[:, :width].astype(np.float64), p[:, width:].astype(np.float64)
      student[name]["cosine_to_teacher"] = float(np.mean(np.sum(tp * sp, axis=1)))
      match = np.where(g_groups[:, None] == g_groups[None, :], sp @ tp.T, -np.inf)
      student[name]["match@1"] = float(np.mean(np.argmax(match, axis=1) == ids))
    return student, teacher

  def evaluate(self, params, step):
    sets = self.evaluator._eval_sets(None)
    student, teacher = self._paired_retrieval(params, {"full": sets["full"]})
    out = {k: v for k, v in student["full"].items() if k.startswith(("acc@", "mAP", "keeps"))}
    out["teacher_acc@5"] = teacher["full"]["acc@5"]
    return out

  def cost(self, params) -> dict:
    """Forward+backward FLOPs per photo (w.r.t. the photo, as in the segmenter) of each tower."""
    params = plain(params)
    size = int(self.evaluator.data_config("eval")["image_size"])
    teacher_fn = lambda p, x: self.teacher.apply({"params": p}, x, method=SBIRTeacher.photo)
    student_fn = lambda p, x: self.student.apply({"params": p}, x)
    t = input_grad_flops(teacher_fn, params["teacher"], size)
    s = input_grad_flops(student_fn, params["student"], size)
    return {"teacher_gflops": t / 1e9, "student_gflops": s / 1e9,
            "ratio": s / t if t > 0 else float("nan")}

  def eval_report(self, params, data: Optional[str] = None) -> dict:
    """{set: student-pair metrics with "keeps"}, "teacher": {set: teacher-pair metrics},
    "cost": forward+backward GFLOPs per photo of each photo tower and their ratio."""
    student, teacher = self._paired_retrieval(params, self.evaluator._eval_sets(data))
    return {**student, "teacher": teacher, "cost": self.cost(params)}
