"""Backbones in and out: `load(path) -> (module, params)`, `save(path, module, params)`.

`path` may be a Hugging Face model folder (CLIP vision / CLIP / DINOv2 / DINOv2 with registers),
an OpenAI or open_clip state-dict file, an official DINOv2 state-dict file, or a folder written
by `save`. Parameters come back as a plain nested dict of numpy arrays in the layout the module
expects (stacked when `scan_layers=True`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from sketchseg_jax.convert import formats
from sketchseg_jax.convert.apply import flatten, stack_layers, unflatten, unstack_layers
from sketchseg_jax.models.vit import VisionTransformer, param_shapes
from sketchseg_jax.models.vit_config import ViTConfig, variant

__all__ = ["load", "save", "build", "init_params", "param_shapes", "ViTConfig", "variant",
           "VisionTransformer"]


def build(cfg: ViTConfig) -> VisionTransformer:
  return VisionTransformer(cfg)


def _example(cfg: ViTConfig):
  return jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)


def init_params(cfg: ViTConfig, rng=None) -> dict:
  """Random parameters as a plain nested dict (logical-axis boxes removed)."""
  rng = jax.random.key(0) if rng is None else rng
  variables = jax.jit(build(cfg).init)(rng, _example(cfg))
  return nn.unbox(variables["params"])


def load(path, format: Optional[str] = None, **overrides):
  """(module, params) from a checkpoint in any supported format; see module docstring.

  overrides: runtime ViTConfig fields such as dtype="bfloat16", scan_layers=True,
  dense_projection=True, output_layers=(3, 7), or what a bare state dict cannot say
  (num_heads=..., mlp="gelu").
  """
  cfg, flat = formats.read(path, format, **overrides)
  flat = stack_layers(flat, cfg)
  dtype = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else jnp.bfloat16
  params = unflatten({k: np.asarray(v).astype(dtype) for k, v in flat.items()})
  return build(cfg), params


def save(path, module_or_cfg, params, format: str = "flax"):
  """Write params in `format` (default this project's folder layout, loadable by `load`)."""
  cfg = module_or_cfg.cfg if isinstance(module_or_cfg, VisionTransformer) else module_or_cfg
  flat = unstack_layers({k: np.asarray(v) for k, v in flatten(params).items()}, cfg)
  formats.write(cfg, flat, path, format)
