"""Key/layout tables, one per checkpoint layout; each drives both import and export.

A rule ties one PyTorch key to one or more Flax parameter paths ('/'-joined, layers unstacked
as `encoder/layers_{i}`). With several Flax paths the PyTorch tensor is their concatenation
along axis 0 (fused qkv, SwiGLU's fused w12). `kind` says how one piece changes layout:
  id     same array
  linear torch (out, in)      <-> flax kernel (in, out)
  conv   torch (D, C, p, p)   <-> flax kernel (p, p, C, D)
  lead1  torch (1, ...)       <-> flax (...)
  lead2  torch (1, 1, ...)    <-> flax (...)
Every operation is a transpose or reshape, so conversions are bit-exact in both directions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sketchseg_jax.models.vit_config import ViTConfig


@dataclasses.dataclass(frozen=True)
class Rule:
  torch: str
  flax: tuple
  kind: str = "id"


def to_flax(kind: str, a: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return a.T
  if kind == "conv":
    return a.transpose(2, 3, 1, 0)
  if kind == "lead1":
    return a.reshape(a.shape[1:])
  if kind == "lead2":
    return a.reshape(a.shape[2:])
  return a


def to_torch(kind: str, a: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return a.T
  if kind == "conv":
    return a.transpose(3, 2, 0, 1)
  if kind == "lead1":
    return a.reshape((1,) + a.shape)
  if kind == "lead2":
    return a.reshape((1, 1) + a.shape)
  return a


def _norm(torch_prefix, flax_prefix):
  return [Rule(f"{torch_prefix}.weight", (f"{flax_prefix}/scale",)),
          Rule(f"{torch_prefix}.bias", (f"{flax_prefix}/bias",))]


def _linear(torch_prefix, flax_prefix, bias=True):
  rules = [Rule(f"{torch_prefix}.weight", (f"{flax_prefix}/kernel",), "linear")]
  if bias:
    rules.append(Rule(f"{torch_prefix}.bias", (f"{flax_prefix}/bias",)))
  return rules


def _fused(torch_prefix, flax_prefixes, bias=True):
  rules = [Rule(f"{torch_prefix}.weight", tuple(f"{p}/kernel" for p in flax_prefixes), "linear")]
  if bias:
    rules.append(Rule(f"{torch_prefix}.bias", tuple(f"{p}/bias" for p in flax_prefixes)))
  return rules


def _mlp(cfg, t, f, names):
  """names: torch names of (fc1, fc2) or, for SwiGLU, (gate, up, down) or (fused w12, w3)."""
  if cfg.mlp != "swiglu":
    return _linear(f"{t}.{names[0]}", f"{f}/fc1") + _linear(f"{t}.{names[1]}", f"{f}/fc2")
  if len(names) == 2:
    return (_fused(f"{t}.{names[0]}", (f"{f}/gate_proj", f"{f}/up_proj"))
            + _linear(f"{t}.{names[1]}", f"{f}/down_proj"))
  return (_linear(f"{t}.{names[0]}", f"{f}/gate_proj") + _linear(f"{t}.{names[1]}", f"{f}/up_proj")
          + _linear(f"{t}.{names[2]}", f"{f}/down_proj"))


def _separate_qkv(cfg, t, f, names):
  rules = []
  for tn, fn in zip(names, ("q_proj", "k_proj", "v_proj", "out_proj")):
    rules += _linear(f"{t}.{tn}", f"{f}/{fn}", bias=cfg.qkv_bias or fn == "out_proj")
  return rules


def hf_clip(cfg: ViTConfig, vision_prefix: str = "vision_model.") -> list:
  """transformers CLIPVisionModel(WithProjection) / CLIPModel vision tower."""
  v = vision_prefix
  rules = [
      Rule(f"{v}embeddings.class_embedding", ("class_embedding",)),
      Rule(f"{v}embeddings.patch_embedding.weight", ("patch_embedding/kernel",), "conv"),
      Rule(f"{v}embeddings.position_embedding.weight", ("position_embedding",)),
      *_norm(f"{v}pre_layrnorm", "pre_layernorm"),
      *_norm(f"{v}post_layernorm", "post_layernorm"),
  ]
  for i in range(cfg.depth):
    t, f = f"{v}encoder.layers.{i}", f"encoder/layers_{i}"
    rules += _separate_qkv(cfg, f"{t}.self_attn", f"{f}/attn", ("q_proj", "k_proj", "v_proj", "out_proj"))
    rules += _norm(f"{t}.layer_norm1", f"{f}/layer_norm1") + _norm(f"{t}.layer_norm2", f"{f}/layer_norm2")
    rules += _mlp(cfg, f"{t}.mlp", f"{f}/mlp", ("fc1", "fc2"))
  if cfg.projection_dim:
    rules.append(Rule("visual_projection.weight", ("projection/kernel",), "linear"))
  return rules


def openai_clip(cfg: ViTConfig) -> list:
  """OpenAI CLIP / open_clip `visual.*` state dict (fused in_proj, visual.proj is (D, E))."""
  rules = [
      Rule("visual.class_embedding", ("class_embedding",)),
      Rule("visual.conv1.weight", ("patch_embedding/kernel",), "conv"),
      Rule("visual.positional_embedding", ("position_embedding",)),
      *_norm("visual.ln_pre", "pre_layernorm"),
      *_norm("visual.ln_post", "post_layernorm"),
  ]
  for i in range(cfg.depth):
    t, f = f"visual.transformer.resblocks.{i}", f"encoder/layers_{i}"
    qkv = tuple(f"{f}/attn/{n}" for n in ("q_proj", "k_proj", "v_proj"))
    rules += [Rule(f"{t}.attn.in_proj_weight", tuple(f"{p}/kernel" for p in qkv), "linear"),
              Rule(f"{t}.attn.in_proj_bias", tuple(f"{p}/bias" for p in qkv))]
    rules += _linear(f"{t}.attn.out_proj", f"{f}/attn/out_proj")
    rules += _norm(f"{t}.ln_1", f"{f}/layer_norm1") + _norm(f"{t}.ln_2", f"{f}/layer_norm2")
    rules += _mlp(cfg, f"{t}.mlp", f"{f}/mlp", ("c_fc", "c_proj"))
  if cfg.projection_dim:
    rules.append(Rule("visual.proj", ("projection/kernel",)))
  return rules


def _dinov2_embeddings(cfg, names):
  cls, mask, pos, reg, patch = names
  rules = [Rule(cls, ("class_embedding",), "lead2"),
           Rule(mask, ("mask_token",), "lead1"),
           Rule(pos, ("position_embedding",), "lead1"),
           Rule(f"{patch}.weight", ("patch_embedding/kernel",), "conv"),
           Rule(f"{patch}.bias", ("patch_embedding/bias",))]
  if cfg.num_registers:
    rules.append(Rule(reg, ("register_tokens",), "lead1"))
  return rules


def hf_dinov2(cfg: ViTConfig, legacy: bool = False) -> list:
  """transformers Dinov2Model / Dinov2WithRegistersModel.

  legacy=True is the transformers 4.x layout (attention.attention.query, fused mlp.weights_in),
  which is also what checkpoints on the Hub carry; transformers 5 renames it on load.
  """
  rules = _dinov2_embeddings(cfg, ("embeddings.cls_token", "embeddings.mask_token",
                                   "embeddings.position_embeddings", "embeddings.register_tokens",
                                   "embeddings.patch_embeddings.projection"))
  rules += _norm("layernorm", "layernorm")
  for i in range(cfg.depth):
    t, f = f"encoder.layer.{i}", f"encoder/layers_{i}"
    if legacy:
      names = ("attention.attention.query", "attention.attention.key",
               "attention.attention.value", "attention.output.dense")
      mlp = ("fc1", "fc2") if cfg.mlp != "swiglu" else ("weights_in", "weights_out")
    else:
      names = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
      mlp = ("fc1", "fc2") if cfg.mlp != "swiglu" else ("gate_proj", "up_proj", "down_proj")
    rules += _separate_qkv(cfg, t, f"{f}/attn", names)
    rules += _norm(f"{t}.norm1", f"{f}/layer_norm1") + _norm(f"{t}.norm2", f"{f}/layer_norm2")
    rules += [Rule(f"{t}.layer_scale1.lambda1", (f"{f}/layer_scale1/gamma",)),
              Rule(f"{t}.layer_scale2.lambda1", (f"{f}/layer_scale2/gamma",))]
    rules += _mlp(cfg, f"{t}.mlp", f"{f}/mlp", mlp)
  return rules


def official_dinov2(cfg: ViTConfig) -> list:
  """facebookresearch/dinov2 state dicts (blocks.N.attn.qkv, ls1.gamma, mlp.w12/w3)."""
  rules = _dinov2_embeddings(cfg, ("cls_token", "mask_token", "pos_embed", "register_tokens",
                                   "patch_embed.proj"))
  rules += _norm("norm", "layernorm")
  for i in range(cfg.depth):
    t, f = f"blocks.{i}", f"encoder/layers_{i}"
    qkv = tuple(f"{f}/attn/{n}" for n in ("q_proj", "k_proj", "v_proj"))
    rules += _fused(f"{t}.attn.qkv", qkv, bias=cfg.qkv_bias)
    rules += _linear(f"{t}.attn.proj", f"{f}/attn/out_proj")
    rules += _norm(f"{t}.norm1", f"{f}/layer_norm1") + _norm(f"{t}.norm2", f"{f}/layer_norm2")
    rules += [Rule(f"{t}.ls1.gamma", (f"{f}/layer_scale1/gamma",)),
              Rule(f"{t}.ls2.gamma", (f"{f}/layer_scale2/gamma",))]
    rules += _mlp(cfg, f"{t}.mlp", f"{f}/mlp", ("fc1", "fc2") if cfg.mlp != "swiglu" else ("w12", "w3"))
  return rules
