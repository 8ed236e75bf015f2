"""Checkpoint formats: detect, read into (ViTConfig, flat Flax params), write back out.

  hf      Hugging Face folder: config.json + model.safetensors (or pytorch_model.bin, sharded
          index). CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel (vision tower),
          Dinov2Model, Dinov2WithRegistersModel; transformers 4.x and 5.x key sets.
  openai  OpenAI CLIP / open_clip state dict file with `visual.*` keys.
  dinov2  official facebookresearch/dinov2 state dict file.
  flax    this project's own backbone folder: config.json + params.safetensors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

from sketchseg_jax.convert import tables
from sketchseg_jax.convert.apply import check_shapes, export_state_dict, import_state_dict
from sketchseg_jax.convert.files import (atomic_output, read_json, read_safetensors_metadata,
                                         read_tensors, write_safetensors, write_torch)
from sketchseg_jax.errors import CheckpointError
from sketchseg_jax.models.vit import param_shapes
from sketchseg_jax.models.vit_config import ViTConfig

FORMATS = ("hf", "openai", "dinov2", "flax")
FLAX_FORMAT_TAG = "sketchseg_jax.backbone"
_HF_CLIP_TYPES = ("clip_vision_model", "clip")
_HF_DINO_TYPES = ("dinov2", "dinov2_with_registers")


def detect(path) -> str:
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or folder")
  if path.is_dir():
    if not (path / "config.json").exists():
      raise CheckpointError(f"{path}: folder has no config.json (expected a Hugging Face "
                            "model folder or a sketchseg_jax backbone folder)")
    conf = read_json(path / "config.json")
    if conf.get("format") == FLAX_FORMAT_TAG:
      return "flax"
    if conf.get("model_type") in _HF_CLIP_TYPES + _HF_DINO_TYPES:
      return "hf"
    raise CheckpointError(f"{path}/config.json: model_type {conf.get('model_type')!r} is not a "
                          f"supported backbone (supported: {_HF_CLIP_TYPES + _HF_DINO_TYPES})")
  return _detect_state_dict(read_tensors(path), path)


def _detect_state_dict(sd, path) -> str:
  if any(k.startswith("visual.") for k in sd) or "conv1.weight" in sd:
    return "openai"
  if "pos_embed" in sd and "cls_token" in sd:
    return "dinov2"
  if any("embeddings." in k for k in sd):
    raise CheckpointError(f"{path}: looks like Hugging Face weights; pass the model folder "
                          "with its config.json instead of the weight file")
  raise CheckpointError(f"{path}: cannot tell the checkpoint format from its keys "
                        f"(first keys: {sorted(sd)[:5]}); pass --from hf|openai|dinov2|flax")


# ---------------------------------------------------------------- read

def read(path, fmt: Optional[str] = None, **overrides) -> tuple:
  """(ViTConfig, flat params with unstacked layers). `overrides` are runtime ViTConfig fields
  (dtype, scan_layers, dense_projection, output_layers, ...) or architecture details a state
  dict cannot tell (num_heads, mlp)."""
  path = Path(path)
  fmt = fmt or detect(path)
  if fmt not in FORMATS:
    raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  reader = {"hf": _read_hf, "openai": _read_openai, "dinov2": _read_official_dinov2,
            "flax": _read_flax}[fmt]
  cfg, flat = reader(path, overrides)
  check_shapes(flat, param_shapes(cfg.replace(scan_layers=False, remat=False)), str(path))
  return cfg, flat


def _cfg(source, **fields) -> ViTConfig:
  try:
    return ViTConfig(**fields)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: {e}") from e


def _read_flax(path, overrides):
  conf = read_json(path / "config.json")
  if conf.get("format") != FLAX_FORMAT_TAG:
    raise CheckpointError(f"{path}: not a sketchseg_jax backbone folder (config.json format "
                          f"is {conf.get('format')!r})")
  fields = {**conf["vit"], **overrides}
  fields["output_layers"] = tuple(fields.get("output_layers", ()))
  return _cfg(path, **fields), read_tensors(path / "params.safetensors")


def _hf_act(act, source):
  if act in ("quick_gelu", "gelu"):
    return act
  raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (quick_gelu or gelu)")


def _read_hf(path, overrides):
  conf = read_json(path / "config.json")
  sd = read_tensors(path)
  mt = conf.get("model_type")
  if mt in _HF_CLIP_TYPES:
    vc = conf.get("vision_config", {}) if mt == "clip" else conf
    has_proj = "visual_projection.weight" in sd
    proj_dim = conf.get("projection_dim", 512) if has_proj else None
    cfg = _cfg(path, **{**dict(
        family="clip", width=vc.get("hidden_size", 768), depth=vc.get("num_hidden_layers", 12),
        num_heads=vc.get("num_attention_heads", 12), mlp_dim=vc.get("intermediate_size", 3072),
        patch_size=vc.get("patch_size", 32), image_size=vc.get("image_size", 224),
        num_channels=vc.get("num_channels", 3), mlp=_hf_act(vc.get("hidden_act", "quick_gelu"), path),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-5), projection_dim=proj_dim), **overrides})
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in sd) else ""
    rules = tables.hf_clip(cfg, prefix)
    ignore = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$", r".*position_ids$"]
  elif mt in _HF_DINO_TYPES:
    width = conf.get("hidden_size", 768)
    swiglu = bool(conf.get("use_swiglu_ffn", False))
    if not swiglu and conf.get("hidden_act", "gelu") != "gelu":
      raise CheckpointError(f"{path}: hidden_act {conf.get('hidden_act')!r} is not supported")
    regs = conf.get("num_register_tokens", 0) if mt == "dinov2_with_registers" else 0
    cfg = _cfg(path, **{**dict(
        family="dinov2", width=width, depth=conf.get("num_hidden_layers", 12),
        num_heads=conf.get("num_attention_heads", 12),
        mlp_dim=int(width * conf.get("mlp_ratio", 4)), patch_size=conf.get("patch_size", 14),
        image_size=conf.get("image_size", 518), num_channels=conf.get("num_channels", 3),
        mlp="swiglu" if swiglu else "gelu", layer_norm_eps=conf.get("layer_norm_eps", 1e-6),
        qkv_bias=conf.get("qkv_bias", True), num_registers=regs,
        layerscale_init=conf.get("layerscale_value", 1.0),
        pos_interp_antialias=mt == "dinov2_with_registers"), **overrides})
    legacy = any(".attention.attention." in k or ".attention.output.dense" in k for k in sd)
    rules = tables.hf_dinov2(cfg, legacy=legacy)
    ignore = []
  else:
    raise CheckpointError(f"{path}: model_type {mt!r} is not a supported backbone")
  return cfg, import_state_dict(sd, rules, source=str(path), ignore=ignore)


def _count_layers(sd, pattern) -> int:
  found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
  if not found:
    return 0
  if found != set(range(max(found) + 1)):
    raise CheckpointError(f"layer indices are not contiguous: {sorted(found)}")
  return max(found) + 1


def _need(sd, key, path):
  if key not in sd:
    raise CheckpointError(f"{path}: missing key {key!r}; is this the right format?")
  return sd[key]


_ARCH_META_KEY = "sketchseg_vit"


def _arch_hints(path, overrides) -> dict:
  """Architecture facts a bare state dict cannot tell (head count, activation): from the
  metadata this project writes into .safetensors exports, then from explicit overrides."""
  meta = read_safetensors_metadata(path).get(_ARCH_META_KEY)
  hints = json.loads(meta) if meta else {}
  hints.update({k: overrides[k] for k in ("num_heads", "mlp", "mlp_dim") if k in overrides})
  return hints


def _heads(width, hints, path):
  if "num_heads" in hints:
    return hints["num_heads"]
  # Every released OpenAI, open_clip and DINOv2 ViT uses 64-wide heads.
  if width % 64:
    raise CheckpointError(f"{path}: width {width} is not a multiple of 64, so the head count "
                          "cannot be inferred; pass num_heads")
  return width // 64


def _read_openai(path, overrides):
  hints = _arch_hints(path, overrides)
  sd = read_tensors(path)
  if "conv1.weight" in sd and "visual.conv1.weight" not in sd:
    sd = {f"visual.{k}": v for k, v in sd.items()}
  width = _need(sd, "visual.class_embedding", path).shape[0]
  patch = _need(sd, "visual.conv1.weight", path).shape[-1]
  grid = math.isqrt(_need(sd, "visual.positional_embedding", path).shape[0] - 1)
  depth = _count_layers(sd, r"visual\.transformer\.resblocks\.(\d+)\.")
  mlp_dim = _need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", path).shape[0]
  proj = sd.get("visual.proj")
  # QuickGELU is what OpenAI's weights use; open_clip models trained with nn.GELU need mlp="gelu".
  cfg = _cfg(path, **{**dict(family="clip", width=width, depth=depth,
                             num_heads=_heads(width, hints, path),
                             mlp_dim=mlp_dim, patch_size=patch, image_size=grid * patch,
                             num_channels=sd["visual.conv1.weight"].shape[1],
                             mlp=hints.get("mlp", "quick_gelu"),
                             layer_norm_eps=1e-5,
                             projection_dim=None if proj is None else proj.shape[1]),
                      **overrides})
  # A full CLIP state dict also holds the text tower; only the visual keys are ours.
  return cfg, import_state_dict(sd, tables.openai_clip(cfg), source=str(path),
                                ignore=[r"^(?!visual\.)"])


def _swiglu_mlp_dim(width: int, hidden: int) -> int:
  """The nominal MLP width whose SwiGLU reduction (2/3, rounded up to 8) gives `hidden`:
  4 * width for the released models, else the smallest that fits."""
  fits = lambda m: (int(m * 2 / 3) + 7) // 8 * 8 == hidden
  for m in (4 * width, hidden * 3 // 2, *range(hidden, 3 * hidden)):
    if fits(m):
      return m
  return 4 * width  # no nominal width fits; the shape check below names the mismatch


def _read_official_dinov2(path, overrides):
  hints = _arch_hints(path, overrides)
  sd = read_tensors(path)
  # Chunked checkpoints (block_chunks > 0) name blocks `blocks.<chunk>.<index>`.
  sd = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}
  cls = _need(sd, "cls_token", path)
  width = cls.shape[-1]
  patch = _need(sd, "patch_embed.proj.weight", path).shape[-1]
  grid = math.isqrt(_need(sd, "pos_embed", path).shape[1] - 1)
  depth = _count_layers(sd, r"blocks\.(\d+)\.")
  swiglu = "blocks.0.mlp.w12.weight" in sd
  if swiglu:
    mlp_dim = hints.get("mlp_dim") or _swiglu_mlp_dim(width, sd["blocks.0.mlp.w12.weight"].shape[0] // 2)
  else:
    mlp_dim = _need(sd, "blocks.0.mlp.fc1.weight", path).shape[0]
  regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
  cfg = _cfg(path, **{**dict(family="dinov2", width=width, depth=depth,
                             num_heads=_heads(width, hints, path),
                             mlp_dim=mlp_dim, patch_size=patch, image_size=grid * patch,
                             num_channels=sd["patch_embed.proj.weight"].shape[1],
                             mlp="swiglu" if swiglu else "gelu", layer_norm_eps=1e-6,
                             qkv_bias="blocks.0.attn.qkv.bias" in sd, num_registers=regs,
                             pos_interp_offset=0.1, pos_interp_antialias=regs > 0),
                      **overrides})
  return cfg, import_state_dict(sd, tables.official_dinov2(cfg), source=str(path))


# ---------------------------------------------------------------- write

def write(cfg: ViTConfig, flat: dict, out, fmt: str):
  """Write flat params (unstacked layers) in `fmt`; files appear whole or not at all."""
  if fmt not in FORMATS:
    raise CheckpointError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  {"hf": _write_hf, "openai": _write_state_dict, "dinov2": _write_state_dict,
   "flax": _write_flax}[fmt](cfg, flat, Path(out), fmt)


def _write_flax(cfg, flat, out, _):
  conf = {"format": FLAX_FORMAT_TAG, "version": 1,
          "vit": cfg.portable().to_dict()}
  with atomic_output(out, is_dir=True) as tmp:
    (tmp / "config.json").write_text(json.dumps(conf, indent=2))
    write_safetensors(flat, tmp / "params.safetensors")


def _mlp_ratio(cfg):
  r = cfg.mlp_dim / cfg.width
  return int(r) if r == int(r) else r


def hf_config(cfg: ViTConfig) -> dict:
  if cfg.family == "clip":
    arch = "CLIPVisionModelWithProjection" if cfg.projection_dim else "CLIPVisionModel"
    conf = dict(architectures=[arch], model_type="clip_vision_model", hidden_size=cfg.width,
                intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels,
                image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act=cfg.mlp,
                layer_norm_eps=cfg.layer_norm_eps, projection_dim=cfg.projection_dim or 512)
    if cfg.mlp == "swiglu":
      raise CheckpointError("Hugging Face CLIP has no SwiGLU MLP")
  else:
    regs = cfg.num_registers > 0
    conf = dict(architectures=["Dinov2WithRegistersModel" if regs else "Dinov2Model"],
                model_type="dinov2_with_registers" if regs else "dinov2",
                hidden_size=cfg.width, num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.num_heads, mlp_ratio=_mlp_ratio(cfg), hidden_act="gelu",
                layer_norm_eps=cfg.layer_norm_eps, image_size=cfg.image_size,
                patch_size=cfg.patch_size, num_channels=cfg.num_channels, qkv_bias=cfg.qkv_bias,
                layerscale_value=cfg.layerscale_init, use_swiglu_ffn=cfg.mlp == "swiglu")
    if regs:
      conf["num_register_tokens"] = cfg.num_registers
  conf["torch_dtype"] = "float32"
  return conf


def _write_hf(cfg, flat, out, _):
  if cfg.family == "clip":
    # The vision_model. prefix is what transformers 4.x expects and 5.x maps on load.
    rules = tables.hf_clip(cfg, "vision_model.")
  else:
    # The 4.x names load in 4.x directly and are renamed by 5.x on load.
    rules = tables.hf_dinov2(cfg, legacy=True)
  sd = export_state_dict(flat, rules)
  with atomic_output(out, is_dir=True) as tmp:
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    write_safetensors(sd, tmp / "model.safetensors", metadata={"format": "pt"})


def _write_state_dict(cfg, flat, out, fmt):
  if fmt == "openai" and cfg.family != "clip" or fmt == "dinov2" and cfg.family != "dinov2":
    raise CheckpointError(f"cannot write a {cfg.family} backbone in the {fmt} layout")
  rules = tables.openai_clip(cfg) if fmt == "openai" else tables.official_dinov2(cfg)
  sd = export_state_dict(flat, rules)
  if out.suffix == ".safetensors":
    hints = json.dumps({"num_heads": cfg.num_heads, "mlp": cfg.mlp, "mlp_dim": cfg.mlp_dim})
    write_safetensors(sd, out, metadata={"format": "pt", _ARCH_META_KEY: hints})
  else:
    write_torch(sd, out)
