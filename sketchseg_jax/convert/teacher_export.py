"""Export a trained SBIR teacher (photo tower + sketch tower) for PyTorch, and read it back.

`export_teacher(model, params, out_dir)` writes one folder, whole or not at all (and
`export_distilled` the same layout for a distillation run, below):

  photo_tower/          Hugging Face CLIP vision folder (config.json + model.safetensors):
                        CLIPVisionModelWithProjection where the backbone has a projection,
                        else CLIPVisionModel (there is no projection to store, and a
                        WithProjection class would invent a random one on load).
  sketch_tower/         the same for the sketch tower. With shared towers (the default teacher)
                        both folders hold the same backbone, byte for byte, so each folder stands
                        alone; teacher.json says whether they are shared.
  prompts.safetensors   `photo_prompts` and `sketch_prompts`, (P, D) or (depth, P, D) when deep;
                        no tensors when the teacher has no prompts. Its metadata repeats the
                        prompt settings.
  teacher.json          everything else the forward needs: input conventions, normalisation,
                        the prompt insertion rule, pooling, the embedding definition.

Hugging Face CLIP takes no prompt tokens, so the forward with prompts is rebuilt from the
model's own modules: `torch_tower_embed` runs embeddings, pre_layrnorm, prompt insertion, the
encoder layers one by one, post_layernorm and visual_projection, as the Flax VisionTransformer
does. `load_exported_teacher(out_dir)` gives an object with `.photo` and `.sketch` on numpy
inputs. Only this part needs torch and transformers, and imports them when called.

A distillation run exports the pair it is evaluated as: the teacher's sketch tower beside the
distilled photo tower (`export_distilled`, version 2). The photo tower is then a smaller CLIP
vision model, so teacher.json's `towers.photo.model` carries its own settings (vit, prompts,
pooling, sizes), which take precedence over the top-level ones (those describe the teacher's
sketch tower). A Dense head the student puts on its pooled output is folded into the tower's
visual_projection: both are linear maps without bias.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
import flax.linen as nn
import numpy as np

from sketchseg_jax.convert import formats
from sketchseg_jax.convert.apply import flatten, unstack_layers
from sketchseg_jax.convert.files import (atomic_output, read_json, read_safetensors_metadata,
                                         read_tensors, write_safetensors)
from sketchseg_jax.errors import CheckpointError, UserError
from sketchseg_jax.models.preprocess import MEAN_STD
from sketchseg_jax.models.sbir import SBIRTeacher
from sketchseg_jax.models.vit_config import ViTConfig

FORMAT_TAG = "sketchseg_jax.sbir_teacher"
# The newest layout this module reads. 1: both towers follow the top-level settings (a
# teacher); 2: a tower may carry its own under "model" (a distilled photo tower).
VERSION = 2
# Settings a tower takes from the top level of teacher.json unless its "model" overrides them.
TOWER_SETTINGS = ("num_prompts", "deep_prompts", "pool", "image_size", "patch_size", "width",
                  "depth", "projection_dim")
PHOTO_TOWER = "photo_tower"
SKETCH_TOWER = "sketch_tower"
PROMPTS_FILE = "prompts.safetensors"
CONFIG_FILE = "teacher.json"
# sbir.l2_normalize: e / sqrt(sum(e^2) + eps), eps inside the root.
L2_EPS = 1e-6

_PROMPT_RULE = (
    "After patch embedding, CLS, position embeddings and pre_layrnorm, the P prompt tokens are "
    "inserted right after the CLS token: [CLS, prompt_1..prompt_P, patch tokens]. Prompts get no "
    "position embedding and no pre_layrnorm. Deep prompts (shape (depth, P, D)): before encoder "
    "layer i (i = 0..depth-1) the hidden states at positions 1..P are replaced by prompts[i] "
    "(for i = 0 that is the inserted prompts[0]); shallow prompts (P, D) are inserted once and "
    "then evolve through the layers like any token. Prompt tokens never enter the pooling.")

_SKETCH_RULE = (
    "A (B, H, W) raster with ink in [0, 255] (ink high, uint8 as rasterised) becomes a photo of "
    "black ink on white paper: paper = 255 - ink, repeated to 3 channels, then normalised exactly "
    "like a photo.")


def _embedding_rule(pool: str, has_projection: bool) -> str:
  proj = "visual_projection(post_layernorm(h))" if has_projection else "post_layernorm(h)"
  if pool == "cls":
    e = f"e = {proj} with h the final hidden state of the CLS token (position 0)"
  else:
    e = (f"e = mean over the patch tokens j of {proj.replace('(h)', '(h_j)')}, with h_j the final "
         "hidden states after the CLS and prompt tokens (positions 1 + P ..)")
  return e + f"; the embedding is e / sqrt(sum(e^2) + {L2_EPS}) (L2-normalised, float32)."


# ---------------------------------------------------------------- export

def _flat_params(params) -> dict:
  params = nn.unbox(params)
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  # float32 throughout: HF config.json says float32 and bf16 -> f32 is exact.
  return {k: np.asarray(v).astype(np.float32) for k, v in flatten(params).items()}


def _backbone(flat: dict, name: str, cfg: ViTConfig) -> dict:
  prefix = name + "/"
  sub = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  if not sub:
    raise UserError(f"teacher params have no {name}/ subtree (top-level keys: "
                    f"{sorted({k.split('/')[0] for k in flat})}); are they this model's params?")
  return unstack_layers(sub, cfg)


def _require_clip(cfg: ViTConfig, who: str):
  if cfg.family != "clip":
    raise UserError(f"only CLIP-family {who}s can be exported (Hugging Face CLIP vision "
                    f"towers); this {who}'s backbone family is {cfg.family!r}")


def _check_teacher(model, flat: dict):
  if not isinstance(model, SBIRTeacher):
    raise UserError(f"export_teacher needs an SBIRTeacher, got {type(model).__name__}")
  cfg = model.vit
  _require_clip(cfg, "teacher")
  if model.pool not in ("cls", "mean"):
    raise UserError(f"pool must be 'cls' or 'mean', got {model.pool!r}")
  formats.hf_config(cfg)  # raises for what HF CLIP cannot hold (SwiGLU)
  want = {"backbone"} | ({"sketch_backbone"} if model.separate_towers else set())
  if model.num_prompts:
    want |= {"photo_prompts", "sketch_prompts"}
  have = {k.split("/")[0] for k in flat}
  if have != want:
    raise UserError(f"teacher params do not fit the model: expected top-level {sorted(want)}, "
                    f"got {sorted(have)} (separate_towers={model.separate_towers}, "
                    f"num_prompts={model.num_prompts})")
  if model.num_prompts:
    shape = ((cfg.depth,) if model.deep_prompts else ()) + (model.num_prompts, cfg.width)
    for name in ("photo_prompts", "sketch_prompts"):
      if flat[name].shape != shape:
        raise UserError(f"{name} has shape {flat[name].shape}, the model expects {shape} "
                        f"(deep_prompts={model.deep_prompts})")


def teacher_config(model: SBIRTeacher) -> dict:
  """The teacher.json contents for `model`."""
  cfg = model.vit
  mean, std = MEAN_STD[cfg.family]
  hf_class = formats.hf_config(cfg)["architectures"][0]
  shared = not model.separate_towers
  return {
      "format": FORMAT_TAG, "version": 1, "family": cfg.family,
      "num_prompts": model.num_prompts, "deep_prompts": model.deep_prompts,
      "separate_towers": model.separate_towers, "pool": model.pool,
      "image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.width,
      "depth": cfg.depth, "projection_dim": cfg.projection_dim,
      "embed_dim": cfg.projection_dim or cfg.width,
      "towers": {
          "photo": {"folder": PHOTO_TOWER, "hf_class": hf_class, "flax_params": "backbone"},
          "sketch": {"folder": SKETCH_TOWER, "hf_class": hf_class,
                     "flax_params": "backbone" if shared else "sketch_backbone"},
          "shared": shared,
          "note": ("shared towers: both folders hold the same backbone, the modalities differ "
                   "only in their prompts" if shared else
                   "separate towers: each modality has its own backbone"),
      },
      "input": {
          "photo": "(B, H, W, 3) RGB, uint8 or float in [0, 255]",
          "sketch": _SKETCH_RULE,
          "normalisation": {"mean": list(mean), "std": list(std),
                            "rule": "x = (pixels / 255 - mean) / std per RGB channel, float32, "
                                    "then NCHW for PyTorch"},
          "other_sizes": ("H and W must be multiples of patch_size; sizes other than "
                          "image_size x image_size resize the position table bicubically "
                          "(HF interpolate_pos_encoding=True)"),
      },
      "prompts": {"file": PROMPTS_FILE, "photo": "photo_prompts", "sketch": "sketch_prompts",
                  "shape": "(depth, P, D)" if model.deep_prompts else "(P, D)",
                  "insertion": _PROMPT_RULE},
      "embedding": {"pool": model.pool, "definition": _embedding_rule(model.pool,
                                                                     bool(cfg.projection_dim)),
                    "l2_eps": L2_EPS},
      "vit": cfg.portable().to_dict(),
  }


def export_teacher(model: SBIRTeacher, params: dict, out_dir) -> Path:
  """Write `model` with `params` (the teacher's param tree, boxed or not, optionally wrapped in
  {"params": ...}) to `out_dir` as described in the module docstring; returns `out_dir`."""
  flat = _flat_params(params)
  _check_teacher(model, flat)
  cfg = model.vit
  photo = _backbone(flat, "backbone", cfg)
  sketch = _backbone(flat, "sketch_backbone", cfg) if model.separate_towers else photo
  prompts = ({"photo_prompts": flat["photo_prompts"], "sketch_prompts": flat["sketch_prompts"]}
             if model.num_prompts else {})
  meta = {"format": "pt", "num_prompts": str(model.num_prompts),
          "deep_prompts": str(model.deep_prompts).lower(),
          "shape": "(depth, P, D)" if model.deep_prompts else "(P, D)",
          "insertion": _PROMPT_RULE}
  return _write_export(out_dir, (cfg, photo), (cfg, sketch), prompts, meta, teacher_config(model))


def _write_export(out_dir, photo, sketch, prompts: dict, meta: dict, conf: dict) -> Path:
  """The export folder, whole or not at all; photo and sketch are (ViTConfig, weights)."""
  out_dir = Path(out_dir)
  with atomic_output(out_dir, is_dir=True) as tmp:
    formats.write(*photo, tmp / PHOTO_TOWER, "hf")
    formats.write(*sketch, tmp / SKETCH_TOWER, "hf")
    write_safetensors(prompts, tmp / PROMPTS_FILE, metadata=meta)
    (tmp / CONFIG_FILE).write_text(json.dumps(conf, indent=2))
  return out_dir


def _student_tower(student, flat: dict, embed_dim: int):
  """(ViTConfig, backbone weights, prompts or None) of a distilled photo student as a CLIP
  vision tower whose projection lands in the teacher's `embed_dim`-wide space."""
  from sketchseg_jax.stages.distill import PhotoStudent
  if not isinstance(student, PhotoStudent):
    raise UserError(f"export_distilled needs a PhotoStudent, got {type(student).__name__}")
  cfg = student.vit
  _require_clip(cfg, "student")
  if student.pool != "cls":
    raise UserError(f"only students pooled by their CLS token can be exported; this one has "
                    f"pool={student.pool!r}")
  if student.embed_dim != embed_dim:
    raise UserError(f"the student embeds into {student.embed_dim} dimensions, the teacher into "
                    f"{embed_dim}; are they from the same run?")
  pooled = cfg.projection_dim or cfg.width
  want = {"backbone"} | ({"prompts"} if student.num_prompts else set()) | (
      {"head"} if pooled != embed_dim else set())
  have = {k.split("/")[0] for k in flat}
  if have != want:
    raise UserError(f"student params do not fit the model: expected top-level {sorted(want)}, "
                    f"got {sorted(have)} (num_prompts={student.num_prompts}, pooled width "
                    f"{pooled}, embedding width {embed_dim})")
  backbone = _backbone(flat, "backbone", cfg)
  if "head" in want:
    head = flat["head/kernel"]
    if head.shape != (pooled, embed_dim):
      raise UserError(f"head/kernel has shape {head.shape}, expected {(pooled, embed_dim)}")
    backbone["projection/kernel"] = (backbone["projection/kernel"] @ head if cfg.projection_dim
                                     else head)
    cfg = cfg.replace(projection_dim=embed_dim)
  prompts = None
  if student.num_prompts:
    prompts = flat["prompts"]
    if prompts.shape != (student.num_prompts, cfg.width):
      raise UserError(f"student prompts have shape {prompts.shape}, the model expects "
                      f"{(student.num_prompts, cfg.width)}")
  formats.hf_config(cfg)  # raises for what HF CLIP cannot hold
  return cfg, backbone, prompts


def export_distilled(teacher: SBIRTeacher, teacher_params: dict, student, student_params: dict,
                     out_dir) -> Path:
  """Write a distillation run's retrieval pair to `out_dir`: the teacher's sketch tower (and
  its sketch prompts) beside the distilled photo tower `student` with `student_params`, in
  export_teacher's layout (version 2, module docstring). Returns `out_dir`."""
  flat_t = _flat_params(teacher_params)
  _check_teacher(teacher, flat_t)
  conf = teacher_config(teacher)
  cfg, photo, photo_prompts = _student_tower(student, _flat_params(student_params),
                                             conf["embed_dim"])
  sketch = _backbone(flat_t, "sketch_backbone" if teacher.separate_towers else "backbone",
                     teacher.vit)
  prompts = {}
  if teacher.num_prompts:
    prompts["sketch_prompts"] = flat_t["sketch_prompts"]
  if photo_prompts is not None:
    prompts["photo_prompts"] = photo_prompts
  conf["version"] = 2
  conf["towers"]["photo"] = {
      "folder": PHOTO_TOWER, "hf_class": formats.hf_config(cfg)["architectures"][0],
      "flax_params": "student/backbone",
      "model": {"num_prompts": student.num_prompts, "deep_prompts": False, "pool": "cls",
                "image_size": cfg.image_size, "patch_size": cfg.patch_size,
                "width": cfg.width, "depth": cfg.depth, "projection_dim": cfg.projection_dim,
                "vit": cfg.portable().to_dict()}}
  conf["towers"]["shared"] = False
  conf["towers"]["note"] = ("distilled: the photo tower is the compact student trained to "
                            "reproduce the teacher's photo embeddings; its own settings are in "
                            "towers.photo.model, the top-level ones describe the sketch tower")
  meta = {"format": "pt", "num_prompts": str(teacher.num_prompts),
          "photo_num_prompts": str(student.num_prompts),
          "deep_prompts": str(teacher.deep_prompts).lower(),
          "shape": ("sketch_prompts (depth, P, D)" if teacher.deep_prompts else
                    "sketch_prompts (P, D)") + ", photo_prompts (P, D)",
          "insertion": _PROMPT_RULE}
  return _write_export(out_dir, (cfg, photo), (teacher.vit, sketch), prompts, meta, conf)


def tower_settings(conf: dict, tower: str) -> dict:
  """The settings of `tower` ("photo" or "sketch") in a teacher.json: the top-level ones, with
  what the tower's own "model" entry overrides (version 2)."""
  return {**{k: conf[k] for k in TOWER_SETTINGS}, **conf["towers"][tower].get("model", {})}


# ---------------------------------------------------------------- PyTorch reference

def torch_tower_embed(hf_model, images, prompts=None, deep: bool = False, pool: str = "cls"):
  """(B, E) unit vectors from a Hugging Face CLIP vision model with visual prompts.

  hf_model: CLIPVisionModelWithProjection, CLIPVisionModel or CLIPModel (its vision tower).
  images: (B, 3, H, W) float, already normalised (torch tensor or numpy).
  prompts: None, (P, D), or (depth, P, D) with deep=True; see teacher.json "prompts".
  pool: "cls" (projected CLS) or "mean" (mean of the projected patch tokens).
  """
  import torch
  if pool not in ("cls", "mean"):
    raise UserError(f"pool must be 'cls' or 'mean', got {pool!r}")
  vt = getattr(hf_model, "vision_model", hf_model)  # 5.x CLIPVisionModel has no inner module
  proj = getattr(hf_model, "visual_projection", None)
  layers = list(vt.encoder.layers)
  dtype = vt.embeddings.patch_embedding.weight.dtype
  x = torch.as_tensor(images).to(dtype)
  h, w = x.shape[-2:]
  native = vt.embeddings.image_size
  hidden = vt.embeddings(x, interpolate_pos_encoding=(h, w) != (native, native))
  hidden = vt.pre_layrnorm(hidden)
  b, width = hidden.shape[0], hidden.shape[-1]
  n, per_layer = 0, None
  if prompts is not None:
    p = torch.as_tensor(prompts).to(dtype)
    if p.ndim != 2 + deep or p.shape[-1] != width or (deep and p.shape[0] != len(layers)):
      want = f"({len(layers)}, P, {width})" if deep else f"(P, {width})"
      raise UserError(f"prompts of shape {tuple(p.shape)} do not fit this tower; expected {want}")
    per_layer = p if deep else None
    first = p[0] if deep else p
    n = first.shape[0]
    hidden = torch.cat([hidden[:, :1], first.expand(b, -1, -1), hidden[:, 1:]], dim=1)
  # transformers 4.x layers also take a causal mask and return a tuple; 5.x take one mask.
  causal = "causal_attention_mask" in inspect.signature(layers[0].forward).parameters
  for i, layer in enumerate(layers):
    if per_layer is not None:
      hidden = torch.cat([hidden[:, :1], per_layer[i].expand(b, -1, -1), hidden[:, 1 + n:]], dim=1)
    out = layer(hidden, None, None) if causal else layer(hidden, None)
    hidden = out[0] if isinstance(out, tuple) else out
  tokens = hidden[:, 0] if pool == "cls" else hidden[:, 1 + n:]
  e = vt.post_layernorm(tokens)
  if proj is not None:
    e = proj(e)
  e = e.float()
  if pool == "mean":
    e = e.mean(dim=1)
  return e / torch.sqrt(torch.sum(e * e, dim=-1, keepdim=True) + L2_EPS)


def _normalise(pixels: np.ndarray, conf: dict) -> np.ndarray:
  norm = conf["input"]["normalisation"]
  x = np.asarray(pixels, np.float32) / np.float32(255.0)
  x = (x - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class ExportedTeacher:
  """The exported teacher in PyTorch: `.photo(photos)` and `.sketch(ink)` -> numpy unit vectors."""

  def __init__(self, config: dict, photo_model, sketch_model, photo_prompts, sketch_prompts):
    self.config = config
    self.photo_model = photo_model
    self.sketch_model = sketch_model
    self.photo_prompts = photo_prompts
    self.sketch_prompts = sketch_prompts
    self.settings = {t: tower_settings(config, t) for t in ("photo", "sketch")}

  def _embed(self, tower: str, model, x, prompts) -> np.ndarray:
    import torch
    spec = self.settings[tower]
    with torch.no_grad():
      e = torch_tower_embed(model, torch.from_numpy(x), prompts, spec["deep_prompts"],
                            spec["pool"])
    return e.numpy()

  def photo(self, photos) -> np.ndarray:
    """(B, H, W, 3) uint8 (or [0, 255] float) RGB photos -> (B, E) float32 unit vectors."""
    photos = np.asarray(photos)
    if photos.ndim != 4 or photos.shape[-1] != 3:
      raise UserError(f"photos must be (B, H, W, 3), got shape {photos.shape}")
    return self._embed("photo", self.photo_model, _normalise(photos, self.config),
                       self.photo_prompts)

  def sketch(self, ink) -> np.ndarray:
    """(B, H, W) sketch rasters, ink in [0, 255] -> (B, E) float32 unit vectors."""
    ink = np.asarray(ink, np.float32)
    if ink.ndim != 3:
      raise UserError(f"sketch rasters must be (B, H, W), got shape {ink.shape}")
    paper = np.repeat((np.float32(255.0) - ink)[..., None], 3, axis=-1)
    return self._embed("sketch", self.sketch_model, _normalise(paper, self.config),
                       self.sketch_prompts)


def _load_tower(folder: Path, has_projection: bool):
  import transformers
  cls = (transformers.CLIPVisionModelWithProjection if has_projection
         else transformers.CLIPVisionModel)
  if not (folder / "config.json").exists():
    raise CheckpointError(f"{folder}: missing (not a complete teacher export?)")
  model, info = cls.from_pretrained(str(folder), output_loading_info=True)
  bad = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
         if info.get(k)}
  if bad:
    raise CheckpointError(f"{folder}: does not load cleanly as {cls.__name__}: {bad}")
  return model.eval()


def load_exported_teacher(out_dir) -> ExportedTeacher:
  """Read a folder written by `export_teacher` into PyTorch (needs torch and transformers)."""
  import torch
  out_dir = Path(out_dir)
  conf = read_json(out_dir / CONFIG_FILE)
  if conf.get("format") != FORMAT_TAG:
    raise CheckpointError(f"{out_dir}: not an SBIR teacher export ({CONFIG_FILE} format is "
                          f"{conf.get('format')!r}, expected {FORMAT_TAG!r})")
  if conf.get("version", 0) > VERSION:
    raise CheckpointError(f"{out_dir}: export version {conf['version']} is newer than this "
                          f"reader ({VERSION})")
  towers, prompts = {}, {}
  tensors = read_tensors(out_dir / PROMPTS_FILE)
  for tower in ("photo", "sketch"):
    spec = tower_settings(conf, tower)
    towers[tower] = _load_tower(out_dir / conf["towers"][tower]["folder"],
                                bool(spec["projection_dim"]))
    name = f"{tower}_prompts"
    prompts[name] = None
    if spec["num_prompts"]:
      if name not in tensors:
        raise CheckpointError(f"{out_dir / PROMPTS_FILE}: has no {name!r} tensor")
      prompts[name] = torch.from_numpy(np.asarray(tensors[name], np.float32))
  return ExportedTeacher(conf, towers["photo"], towers["sketch"], prompts["photo_prompts"],
                         prompts["sketch_prompts"])


def prompts_metadata(out_dir) -> dict:
  """The metadata stored in an export's prompts.safetensors."""
  return read_safetensors_metadata(Path(out_dir) / PROMPTS_FILE)


__all__ = ["export_teacher", "export_distilled", "tower_settings", "teacher_config",
           "torch_tower_embed", "load_exported_teacher", "ExportedTeacher", "prompts_metadata",
           "FORMAT_TAG"]
