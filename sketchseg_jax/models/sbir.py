"""The SBIR teacher: a sketch tower and a photo tower mapping into one unit-sphere space.

Default (METHOD.md): both towers share one CLIP ViT backbone, each modality with its own
learned prompt tokens (VPT, shallow or deep); `separate_towers=True` gives each modality its
own backbone. The embedding is the backbone's pooled output (its projection where it has
one), L2-normalised; pool="mean" averages the per-patch embeddings instead (the backbone
config then needs dense_projection=True). Both towers are differentiable with respect to their image input: the
segmenter back-propagates through the photo tower into its masks.

Sketches enter as images: the raster (ink = 1) drawn black on white, like a scanned sketch,
normalised with the backbone's photo statistics.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from sketchseg_jax.models.preprocess import normalize
from sketchseg_jax.models.vit import VisionTransformer
from sketchseg_jax.models.vit_config import ViTConfig


def sketch_to_image(ink):
  """(B, H, W) ink in [0, 255] (uint8 raster, ink high) -> (B, H, W, 3) paper-white photo."""
  paper = 255.0 - jnp.asarray(ink, jnp.float32)
  return jnp.repeat(paper[..., None], 3, axis=-1)


def l2_normalize(x, eps: float = 1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class SBIRTeacher(nn.Module):
  """Param tree: backbone/ (shared, or the photo tower's), sketch_backbone/ (separate towers
  only), photo_prompts and sketch_prompts of shape (P, D), or (depth, P, D) when deep."""
  vit: ViTConfig
  num_prompts: int = 4
  deep_prompts: bool = False
  separate_towers: bool = False
  pool: str = "cls"

  def setup(self):
    if self.pool not in ("cls", "mean"):
      raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
    self.backbone = VisionTransformer(self.vit)
    if self.separate_towers:
      self.sketch_backbone = VisionTransformer(self.vit)
    shape = ((self.vit.depth,) if self.deep_prompts else ()) + (self.num_prompts, self.vit.width)
    axes = ((None,) if self.deep_prompts else ()) + (None, "embed")
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    if self.num_prompts:
      self.photo_prompts = self.param("photo_prompts", init, shape, self.vit.param_dtype)
      self.sketch_prompts = self.param("sketch_prompts", init, shape, self.vit.param_dtype)

  def _embed(self, backbone, images_float, prompts):
    out = backbone(images_float, prompts=prompts, deep=self.deep_prompts)
    if self.pool == "mean":
      # Mean of the dense patch embeddings (post-norm + projection per token): the embedding
      # is then the average of the very features a dense head reads.
      return l2_normalize(jnp.mean(out["patch_embeds"].astype(jnp.float32), axis=(1, 2)))
    return l2_normalize(out["pooled"])

  def photo(self, photos):
    """(B, H, W, 3) uint8 or [0, 255] float photos -> (B, E) unit vectors."""
    x = normalize(photos, self.vit.family)
    return self._embed(self.backbone, x, self.photo_prompts if self.num_prompts else None)

  def sketch(self, ink):
    """(B, H, W) sketch rasters, ink in [0, 255] -> (B, E) unit vectors."""
    x = normalize(sketch_to_image(ink), self.vit.family)
    tower = self.sketch_backbone if self.separate_towers else self.backbone
    return self._embed(tower, x, self.sketch_prompts if self.num_prompts else None)

  def __call__(self, photos, ink):
    return self.photo(photos), self.sketch(ink)


def trainable_patterns(tune: str, separate_towers: bool) -> Optional[list]:
  """Regexes of frozen parameter paths for a tuning mode: "full" (none frozen) or
  "prompts_ln" (prompts and LayerNorms train, the backbones' other weights stay)."""
  if tune == "full":
    return []
  if tune == "prompts_ln":
    towers = "(backbone|sketch_backbone)" if separate_towers else "backbone"
    return [rf"^{towers}/(?!(.*/)?(layer_norm1|layer_norm2|pre_layernorm|post_layernorm|layernorm)/)"]
  raise ValueError(f"tune must be 'full' or 'prompts_ln', got {tune!r}")
