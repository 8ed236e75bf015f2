"""The segmenter G (METHOD.md, "Three models", 3): a ViT's patch tokens, a dense head into
the teacher's embedding space, and the cosine of every token against the sketch query.

  tokens  = backbone(photo).patch_tokens                      (B, h, w, D)
  f       = phi(tokens), L2-normalised                         (B, h, w, E)
  z       = alpha * <f, q> + beta  for each query q (unit, E)  (B, Q, h, w)
  M       = sigmoid(bilinear_upsample(z, photo size))          (B, Q, H, W)
Several separate sketches of one query: M = max over the valid ones.

The head phi is LayerNorm -> Dense(E) (+ an optional residual MLP whose last layer starts at
zero). For a CLIP backbone taken from the teacher's photo tower, `init_head_from_tower` sets
the LayerNorm and Dense to the tower's post-LayerNorm and projection, so at step 0 the head
reads each token the way the teacher reads the CLS token: a zero-shot dense similarity map.

The queries come from the frozen sketch tower (sketchseg_jax.models.sbir) and are inputs
here, so one photo's features are computed once for any number of sketches (the Predictor
caches them). An optional light adapter (residual MLP, zero-initialised) maps queries first.

Parameter tree: backbone/ (a VisionTransformer), head/norm, head/proj, [head/mlp_in,
head/mlp_out], [adapter/...], [prompts] (shallow VPT tokens), alpha, beta.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchseg_jax.models.preprocess import normalize
from sketchseg_jax.models.sbir import l2_normalize
from sketchseg_jax.models.vit import VisionTransformer
from sketchseg_jax.models.vit_config import ViTConfig

HEADS = ("linear", "mlp")


def _dense(features, name, axes, init=nn.initializers.xavier_uniform(), use_bias=True):
  return nn.Dense(features, name=name, use_bias=use_bias,
                  kernel_init=nn.with_logical_partitioning(init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class DenseHead(nn.Module):
  """Tokens (..., D) -> (..., E), not normalised."""
  embed_dim: int
  kind: str = "linear"
  hidden: int = 0
  eps: float = 1e-5

  @nn.compact
  def __call__(self, tokens):
    if self.kind not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.kind!r}")
    x = nn.LayerNorm(epsilon=self.eps, name="norm",
                     scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(
                         tokens.astype(jnp.float32))
    out = _dense(self.embed_dim, "proj", ("embed", "proj"), use_bias=False)(x)
    if self.kind == "mlp":
      hidden = self.hidden or 2 * x.shape[-1]
      h = nn.gelu(_dense(hidden, "mlp_in", ("embed", "mlp"))(x), approximate=False)
      out = out + _dense(self.embed_dim, "mlp_out", ("mlp", "proj"), nn.initializers.zeros)(h)
    return out


class QueryAdapter(nn.Module):
  """q -> normalise(q + MLP(q)), the MLP's output layer zero at init (identity at step 0)."""
  hidden: int = 0

  @nn.compact
  def __call__(self, q):
    e = q.shape[-1]
    h = nn.gelu(_dense(self.hidden or e, "fc1", ("proj", "mlp"))(q), approximate=False)
    return l2_normalize(q + _dense(e, "fc2", ("mlp", "proj"), nn.initializers.zeros)(h))


class Segmenter(nn.Module):
  vit: ViTConfig
  embed_dim: int
  head: str = "linear"
  head_hidden: int = 0
  adapter: bool = False
  num_prompts: int = 0
  alpha_init: float = 10.0
  beta_init: float = -2.0

  def setup(self):
    self.backbone = VisionTransformer(self.vit)
    self.dense_head = DenseHead(self.embed_dim, self.head, self.head_hidden,
                                eps=self.vit.layer_norm_eps, name="head")
    if self.adapter:
      self.query_adapter = QueryAdapter(name="adapter")
    if self.num_prompts:
      self.prompts = self.param(
          "prompts", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
          (self.num_prompts, self.vit.width), self.vit.param_dtype)
    self.alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), ())
    self.beta = self.param("beta", nn.initializers.constant(self.beta_init), ())

  def features(self, photos):
    """(B, H, W, 3) uint8 or [0, 255] float photos -> (B, h, w, E) unit token features."""
    out = self.backbone(normalize(photos, self.vit.family),
                        prompts=self.prompts if self.num_prompts else None)
    return l2_normalize(self.dense_head(out["patch_tokens"]))

  def queries(self, q):
    """(..., E) sketch-tower embeddings -> the unit queries the logits compare against."""
    q = l2_normalize(q)
    return self.query_adapter(q) if self.adapter else q

  def logits(self, features, q):
    """(B, h, w, E) features, (B, Q, E) raw queries -> (B, Q, h, w) low-resolution logits."""
    sim = jnp.einsum("bhwe,bqe->bqhw", features, self.queries(q))
    return self.alpha * sim + self.beta

  def __call__(self, photos, q):
    """Photos (B, H, W, 3) and queries (B, Q, E) -> logits (B, Q, H, W) at the photo's size."""
    z = self.logits(self.features(photos), q)
    return upsample(z, photos.shape[1:3])


def upsample(z, size):
  """(B, Q, h, w) -> (B, Q, H, W), bilinear with half-pixel centres (torch's
  F.interpolate(mode="bilinear", align_corners=False) when upsampling)."""
  b, q = z.shape[:2]
  return jax.image.resize(z.astype(jnp.float32), (b, q) + tuple(size), "bilinear")


def combine(masks, valid):
  """(B, Q, H, W) masks, (B, Q) bool -> (B, H, W): max over the valid sketches of a query."""
  return jnp.max(jnp.where(valid[:, :, None, None], masks, 0.0), axis=1)


def combine_logits(z, valid):
  """combine for logits: the max commutes with the sigmoid (no valid sketch: mask 0)."""
  return jnp.max(jnp.where(valid[:, :, None, None], z, -1e4), axis=1)


def pool_over_regions(z, regions):
  """(B, H, W) logits averaged over each photo's regions ((B, H, W) int ids below H x W, e.g.
  colour_regions of the photo): a mask that follows the photo's edges at any patch size,
  and one gradient shared by a region's pixels."""
  b, h, w = z.shape
  ids = (regions.reshape(b, -1).astype(jnp.int32)
         + jnp.arange(b, dtype=jnp.int32)[:, None] * (h * w)).reshape(-1)
  total = jax.ops.segment_sum(z.reshape(-1), ids, num_segments=b * h * w)
  count = jax.ops.segment_sum(jnp.ones_like(ids, z.dtype), ids, num_segments=b * h * w)
  return (total / jnp.maximum(count, 1.0))[ids].reshape(b, h, w)


def component_labels(mask):
  """(B, H, W) bool -> (B, H, W) int32: each pixel of `mask` labelled with the smallest flat
  index (h * W + w) of its 4-connected component, H * W off the mask. Minimum-label
  propagation with pointer jumping, until nothing changes."""
  b, h, w = mask.shape
  off = h * w
  start = jnp.where(mask, jnp.arange(off, dtype=jnp.int32).reshape(1, h, w), off)

  def sweep(label):
    big = jnp.full_like(label[:, :1], off)
    new = jnp.minimum(label, jnp.concatenate([label[:, 1:], big], axis=1))
    new = jnp.minimum(new, jnp.concatenate([big, label[:, :-1]], axis=1))
    big = jnp.full_like(label[:, :, :1], off)
    new = jnp.minimum(new, jnp.concatenate([label[:, :, 1:], big], axis=2))
    new = jnp.minimum(new, jnp.concatenate([big, label[:, :, :-1]], axis=2))
    new = jnp.where(mask, new, off).reshape(b, -1)
    # A label is a pixel of the same component with a smaller label: follow it.
    root = jnp.take_along_axis(jnp.concatenate([new, jnp.full_like(new[:, :1], off)], 1),
                               new, axis=1)
    return jnp.minimum(new, root).reshape(b, h, w)

  def body(state):
    label, _ = state
    new = sweep(label)
    return new, jnp.any(new != label)

  return jax.lax.while_loop(lambda s: s[1], body, (start, jnp.array(True)))[0]


def drop_small_components(probs, min_share: float, threshold: float = 0.5):
  """(B, H, W) mask probabilities with the 4-connected components of `probs > threshold`
  smaller than `min_share` of each mask's largest component set to 0. Mask-free cleanup at
  prediction: a sketch's match to the teacher drags in fragments of the clutter around it."""
  if not min_share:
    return probs
  b, h, w = probs.shape
  on = probs > threshold
  label = component_labels(on).reshape(b, -1)
  ids = label + jnp.arange(b, dtype=jnp.int32)[:, None] * (h * w + 1)
  size = jax.ops.segment_sum(on.reshape(b, -1).astype(jnp.int32).reshape(-1), ids.reshape(-1),
                             num_segments=b * (h * w + 1)).reshape(b, -1)
  largest = jnp.max(size[:, :h * w], axis=1, keepdims=True)
  own = jnp.take_along_axis(size, label, axis=1)
  small = on.reshape(b, -1) & (own < min_share * largest)
  return jnp.where(small, 0.0, probs.reshape(b, -1)).reshape(b, h, w).astype(probs.dtype)


def head_values_from_tower(tower: dict) -> dict:
  """Flat {segmenter path: array} setting head/norm and head/proj to a CLIP tower's
  post_layernorm and projection (a tower's backbone params, flat '/'-paths)."""
  out = {"head/norm/scale": tower["post_layernorm/scale"],
         "head/norm/bias": tower["post_layernorm/bias"]}
  if "projection/kernel" in tower:
    out["head/proj/kernel"] = tower["projection/kernel"]
  return out


def frozen_patterns(tune: str, depth: int, last_k: Optional[int] = None, prefix: str = "") -> list:
  """Regexes of frozen segmenter paths for a fine-tuning mode of the backbone:
  "full" (none), "last_k" (all but the last `last_k` blocks and what follows them),
  "ln_prompts" (only LayerNorms and prompts train in the backbone), "frozen" (backbone fixed).
  The head, adapter, alpha and beta always train."""
  b = f"^{prefix}backbone/"
  if tune == "full":
    return []
  if tune == "frozen":
    return [b]
  if tune == "last_k":
    if last_k is None or not 0 <= last_k <= depth:
      raise ValueError(f"tune='last_k' needs 0 <= last_k <= depth ({depth}), got {last_k}")
    early = "|".join(str(i) for i in range(depth - last_k))
    pats = [f"{b}(patch_embedding|position_embedding|class_embedding|register_tokens|"
            f"mask_token|pre_layernorm)"]
    if early:
      pats.append(f"{b}encoder/layers_({early})/")
    return pats
  if tune == "ln_prompts":
    return [f"{b}(?!(.*/)?(layer_norm1|layer_norm2|pre_layernorm|post_layernorm|layernorm)/)"]
  raise ValueError(f"tune must be full, last_k, ln_prompts or frozen, got {tune!r}")
