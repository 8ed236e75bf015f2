"""Analytic FLOPs of the ViT backbones (for MFU figures where XLA's cost analysis has none)."""

from __future__ import annotations

from sketchseg_jax.models.vit_config import ViTConfig


def vit_forward_flops(cfg: ViTConfig, height: int, width: int) -> float:
  """FLOPs of one image's forward pass (2 per multiply-add; matmuls and attention only)."""
  n_patches = (height // cfg.patch_size) * (width // cfg.patch_size)
  n = n_patches + 1 + cfg.num_registers
  d = cfg.width
  mlp = 3 * d * cfg.swiglu_hidden if cfg.mlp == "swiglu" else 2 * d * cfg.mlp_dim
  per_layer = n * (4 * d * d + mlp) + 2 * n * n * d
  macs = cfg.depth * per_layer + n_patches * cfg.patch_size ** 2 * cfg.num_channels * d
  if cfg.projection_dim:
    macs += d * cfg.projection_dim
  return 2.0 * macs


def vit_train_flops(cfg: ViTConfig, height: int, width: int, batch: int) -> float:
  """Forward plus backward (twice the forward) for a batch."""
  return 3.0 * batch * vit_forward_flops(cfg, height, width)
