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

__all__ = ["load", "load_weights", "save", "build", "init_params", "param_shapes", "ViTConfig",
           "variant", "VisionTransformer"]

# What must agree between a checkpoint and the model config it initialises.
ARCHITECTURE_FIELDS = ("family", "width", "depth", "num_heads", "mlp_dim", "patch_size",
                       "num_channels", "mlp", "layer_norm_eps", "qkv_bias", "projection_dim",
                       "num_registers")


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


def load_weights(path, cfg: ViTConfig, what: str = "model.init_from") -> dict:
  """Flat {'/'-path: array} backbone weights at `path` for a model of config `cfg` (layers
  stacked when cfg.scan_layers): a CheckpointError when the file cannot be read, a UserError
  naming each field where it holds another architecture than `cfg`."""
  from sketchseg_jax.errors import CheckpointError, UserError
  try:
    module, params = load(path, scan_layers=cfg.scan_layers)
  except UserError as e:
    raise CheckpointError(f"{what}={str(path)!r}: {e}") from e
  got = module.cfg
  diffs = [f"{k} {getattr(got, k)!r} (the model's: {getattr(cfg, k)!r})"
           for k in ARCHITECTURE_FIELDS if getattr(got, k) != getattr(cfg, k)]
  if diffs:
    raise UserError(f"{what}={str(path)!r} holds another backbone than the model's: "
                    + ", ".join(diffs))
  return flatten(params)


def save(path, module_or_cfg, params, format: str = "flax"):
  """Write params in `format` (default this project's folder layout, loadable by `load`)."""
  cfg = module_or_cfg.cfg if isinstance(module_or_cfg, VisionTransformer) else module_or_cfg
  flat = unstack_layers({k: np.asarray(v) for k, v in flatten(params).items()}, cfg)
  formats.write(cfg, flat, path, format)
