"""One Vision Transformer, two flavours: CLIP vision towers and DINOv2.

Parameter names follow the Hugging Face modules (q_proj, layer_norm1, fc1, ...) so that the
conversion tables in sketchseg_jax/convert are renames plus transposes. Parameters carry logical
axis names (`embed`, `mlp`, `heads`, `layers`) and activations logical constraints (`batch`,
`length`, `embed`), which sharding rules map onto a mesh; without rules they are no-ops.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchseg_jax.errors import UserError
from sketchseg_jax.models.resize import resize_grid
from sketchseg_jax.models.vit_config import ViTConfig

Array = Any


def _partitioned(init, axes):
  return nn.with_logical_partitioning(init, axes)


def _dense(features, name, axes, cfg: ViTConfig, use_bias=True):
  return nn.Dense(features, use_bias=use_bias, name=name, dtype=cfg.dtype,
                  param_dtype=cfg.param_dtype,
                  kernel_init=_partitioned(nn.initializers.xavier_uniform(), axes),
                  bias_init=_partitioned(nn.initializers.zeros, axes[-1:]))


def _layer_norm(name, cfg: ViTConfig):
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype,
                      scale_init=_partitioned(nn.initializers.ones, ("embed",)),
                      bias_init=_partitioned(nn.initializers.zeros, ("embed",)))


def _constrain(x, axes=("batch", "length", "embed")):
  return nn.with_logical_constraint(x, axes)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


@functools.cache
def _on_nvidia_gpu() -> bool:
  return jax.default_backend() == "gpu" and "cuda" in jax.devices()[0].client.platform_version


def cudnn_attention(cfg: ViTConfig) -> bool:
  """Whether cfg's attention runs cuDNN's fused kernel here."""
  if cfg.attention == "xla" or not _on_nvidia_gpu():
    return False
  return cfg.attention == "cudnn" or cfg.dtype in ("bfloat16", "float16")


def even_length_attention(q, k, v, scale, implementation):
  """Attention over (B, N, heads, head_dim) with N padded to an even length, the padding masked
  out as keys and cut from the output: cuDNN's fused kernel takes only even lengths when it
  is differentiated (a ViT has 1 + patches + prompts tokens, often odd)."""
  n = q.shape[1]
  if n % 2 == 0:
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)
  pad = lambda t: jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0)))
  lengths = jnp.full((q.shape[0],), n, jnp.int32)
  y = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), scale=scale,
                                   key_value_seq_lengths=lengths, implementation=implementation)
  return y[:, :n]


class Attention(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    b, n, _ = x.shape
    heads = lambda t: t.reshape(b, n, cfg.num_heads, cfg.head_dim)
    q = heads(_dense(cfg.width, "q_proj", ("embed", "heads"), cfg, cfg.qkv_bias)(x))
    k = heads(_dense(cfg.width, "k_proj", ("embed", "heads"), cfg, cfg.qkv_bias)(x))
    v = heads(_dense(cfg.width, "v_proj", ("embed", "heads"), cfg, cfg.qkv_bias)(x))
    # jax picks XLA's path unless told otherwise, on a GPU too: cuDNN's fused kernel is opt-in.
    # It computes the same function, so a run trained with it evaluates on any platform.
    if cudnn_attention(cfg):
      y = even_length_attention(q, k, v, cfg.head_dim ** -0.5, "cudnn")
    else:
      y = jax.nn.dot_product_attention(q, k, v, scale=cfg.head_dim ** -0.5)
    y = y.reshape(b, n, cfg.width)
    return _dense(cfg.width, "out_proj", ("heads", "embed"), cfg)(y)


class Mlp(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    if cfg.mlp == "swiglu":
      hidden = cfg.swiglu_hidden
      gate = _dense(hidden, "gate_proj", ("embed", "mlp"), cfg)(x)
      up = _dense(hidden, "up_proj", ("embed", "mlp"), cfg)(x)
      x = _constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
      return _dense(cfg.width, "down_proj", ("mlp", "embed"), cfg)(x)
    x = _dense(cfg.mlp_dim, "fc1", ("embed", "mlp"), cfg)(x)
    # Exact erf GELU: flax's default is the tanh approximation, which neither reference uses.
    x = quick_gelu(x) if cfg.mlp == "quick_gelu" else nn.gelu(x, approximate=False)
    x = _constrain(x, ("batch", "length", "mlp"))
    return _dense(cfg.width, "fc2", ("mlp", "embed"), cfg)(x)


class LayerScale(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", _partitioned(
        nn.initializers.constant(self.cfg.layerscale_init), ("embed",)),
        (self.cfg.width,), self.cfg.param_dtype)
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm residual block; DINOv2 adds LayerScale on both branches.

  layer_prompts: (B, P, D) deep-VPT tokens that replace the prompt slots before this block.
  """
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, layer_prompts=None):
    cfg = self.cfg
    dino = cfg.family == "dinov2"
    if layer_prompts is not None:
      start = 1 + cfg.num_registers
      x = jax.lax.dynamic_update_slice_in_dim(x, layer_prompts.astype(x.dtype), start, axis=1)
    y = Attention(cfg, name="attn")(_layer_norm("layer_norm1", cfg)(x))
    if dino:
      y = LayerScale(cfg, name="layer_scale1")(y)
    x = _constrain(x + y)
    y = Mlp(cfg, name="mlp")(_layer_norm("layer_norm2", cfg)(x))
    if dino:
      y = LayerScale(cfg, name="layer_scale2")(y)
    x = _constrain(x + y)
    # The (carry, output) pair lets the same block run under nn.scan.
    return x, (x if cfg.output_layers else None)


class Encoder(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, deep_prompts=None):
    """Returns the last hidden state and {layer index: hidden state after that block}.
    deep_prompts: optional (depth, B, P, D), the prompt tokens each block starts from."""
    cfg = self.cfg
    block = Block
    if cfg.remat:
      block = nn.remat(block, prevent_cse=not cfg.scan_layers,
                       policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=cfg.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, per_layer = stack(cfg, name="layers")(x, deep_prompts)
      inter = {i: per_layer[i] for i in cfg.output_layers}
    else:
      inter = {}
      for i in range(cfg.depth):
        x, _ = block(cfg, name=f"layers_{i}")(x, None if deep_prompts is None else deep_prompts[i])
        if i in cfg.output_layers:
          inter[i] = x
    return x, inter


class PatchEmbedding(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.cfg
    p = cfg.patch_size
    b, h, w, c = images.shape
    kernel = self.param("kernel", _partitioned(nn.initializers.lecun_normal(),
                                               (None, None, None, "embed")),
                        (p, p, c, cfg.width), cfg.param_dtype)
    # A stride-p, kernel-p convolution is a matmul over non-overlapping patches.
    patches = images.reshape(b, h // p, p, w // p, p, c).astype(cfg.dtype)
    x = jnp.einsum("bhiwjc,ijcd->bhwd", patches, kernel.astype(cfg.dtype))
    if cfg.family == "dinov2":
      bias = self.param("bias", _partitioned(nn.initializers.zeros, ("embed",)),
                        (cfg.width,), cfg.param_dtype)
      x = x + bias.astype(x.dtype)
    return x


class VisionTransformer(nn.Module):
  """`apply({"params": p}, images)` with float NHWC images normalised for this backbone.

  Returns a dict:
    cls:          (B, D) CLS token after the final norm (HF `pooler_output`).
    pooled:       (B, E) CLS through the projection where the family has one, else `cls`.
    patch_tokens: (B, h, w, D) patch tokens of the last block (DINOv2: after the final norm,
                  as HF's last_hidden_state; CLIP: before post_layernorm, as HF's).
    patch_embeds: (B, h, w, E) CLIP only with cfg.dense_projection: post-norm + projection
                  applied to every patch token.
    registers:    (B, R, D) DINOv2 register tokens after the final norm (R may be 0).
    last_hidden_state: (B, 1 + R + h*w, D) as Hugging Face returns it.
    intermediates: {layer: (B, 1 + R + h*w, D)} for cfg.output_layers.
  bool_masked_pos: optional (B, h*w) bool, DINOv2's masked-patch input (replaced by mask_token).
  prompts: optional visual prompt tokens (VPT), inserted after the CLS (and register) tokens at
    the encoder's input: (P, D) or (B, P, D) shallow, or (depth, P, D) / (depth, B, P, D) with
    deep=True, where block i starts from prompts[i]. They are excluded from patch_tokens.
  """
  cfg: ViTConfig

  def _check_input(self, images):
    cfg = self.cfg
    if images.ndim != 4:
      raise UserError(f"images must be NHWC (B, H, W, {cfg.num_channels}), got shape {images.shape}")
    _, h, w, c = images.shape
    if c != cfg.num_channels:
      raise UserError(f"images have {c} channels, this backbone takes {cfg.num_channels} "
                      f"(shape {images.shape}; NHWC expected)")
    p = cfg.patch_size
    if h % p or w % p:
      raise UserError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    if not cfg.pos_interp and (h, w) != (cfg.image_size, cfg.image_size):
      raise UserError(f"image size {h}x{w} differs from the native {cfg.image_size}x"
                      f"{cfg.image_size} and position interpolation is off (pos_interp=False)")

  def _positions(self, table, gh, gw):
    cfg = self.cfg
    if (gh, gw) == (cfg.grid, cfg.grid):
      return table
    grid = table[1:].reshape(cfg.grid, cfg.grid, cfg.width)
    grid = resize_grid(grid, (gh, gw), offset=cfg.pos_interp_offset,
                       antialias=cfg.pos_interp_antialias)
    return jnp.concatenate([table[:1], grid.reshape(gh * gw, cfg.width)], axis=0)

  def _prompts(self, prompts, deep, b):
    """(input prompts (B, P, D), per-layer prompts (depth, B, P, D) or None)."""
    cfg = self.cfg
    lead = 1 if deep else 0
    if prompts.ndim == 2 + lead:
      prompts = jnp.expand_dims(prompts, lead)
    if prompts.ndim != 3 + lead or prompts.shape[-1] != cfg.width or (deep and prompts.shape[0] != cfg.depth):
      want = f"({cfg.depth}, [B,] P, {cfg.width})" if deep else f"([B,] P, {cfg.width})"
      raise UserError(f"prompts of shape {prompts.shape} do not fit this backbone; expected {want}")
    prompts = jnp.broadcast_to(prompts, prompts.shape[:lead] + (b,) + prompts.shape[lead + 1:])
    return (prompts[0], prompts) if deep else (prompts, None)

  @nn.compact
  def __call__(self, images, bool_masked_pos: Optional[Array] = None,
               prompts: Optional[Array] = None, deep: bool = False):
    cfg = self.cfg
    self._check_input(images)
    b = images.shape[0]
    dino = cfg.family == "dinov2"
    x = PatchEmbedding(cfg, name="patch_embedding")(images)
    gh, gw = x.shape[1], x.shape[2]
    x = x.reshape(b, gh * gw, cfg.width)
    if dino:
      mask_token = self.param("mask_token", _partitioned(nn.initializers.zeros, ("embed",)),
                              (cfg.width,), cfg.param_dtype)
      if bool_masked_pos is not None:
        x = jnp.where(bool_masked_pos[..., None], mask_token.astype(x.dtype), x)
    elif bool_masked_pos is not None:
      raise UserError("bool_masked_pos needs a DINOv2 backbone (CLIP has no mask token)")
    cls = self.param("class_embedding", _partitioned(nn.initializers.normal(0.02), ("embed",)),
                     (cfg.width,), cfg.param_dtype)
    table = self.param("position_embedding", _partitioned(nn.initializers.normal(cfg.width ** -0.5),
                                                          (None, "embed")),
                       (1 + cfg.grid ** 2, cfg.width), cfg.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, cfg.width)), x], axis=1)
    x = x + self._positions(table, gh, gw).astype(x.dtype)[None]
    if cfg.num_registers:
      reg = self.param("register_tokens", _partitioned(nn.initializers.zeros, (None, "embed")),
                       (cfg.num_registers, cfg.width), cfg.param_dtype)
      reg = jnp.broadcast_to(reg.astype(x.dtype), (b, cfg.num_registers, cfg.width))
      x = jnp.concatenate([x[:, :1], reg, x[:, 1:]], axis=1)
    if not dino:
      x = _layer_norm("pre_layernorm", cfg)(x)
    n_front = 1 + cfg.num_registers
    deep_prompts = None
    if prompts is not None:
      prompts, deep_prompts = self._prompts(prompts, deep, b)
      x = jnp.concatenate([x[:, :n_front], prompts.astype(x.dtype), x[:, n_front:]], axis=1)
      n_front += prompts.shape[1]
    x = _constrain(x)
    x, inter = Encoder(cfg, name="encoder")(x, deep_prompts)
    out = {"intermediates": inter}
    if dino:
      x = _layer_norm("layernorm", cfg)(x)
      out.update(cls=x[:, 0], pooled=x[:, 0], registers=x[:, 1:n_front])
    else:
      post = _layer_norm("post_layernorm", cfg)
      cls_out = post(x[:, 0])
      proj = None
      if cfg.projection_dim:
        proj = _dense(cfg.projection_dim, "projection", ("embed", "proj"), cfg, use_bias=False)
      out.update(cls=cls_out, pooled=proj(cls_out) if proj else cls_out)
      if cfg.dense_projection:
        dense = post(x[:, n_front:])
        dense = proj(dense) if proj else dense
        out["patch_embeds"] = dense.reshape(b, gh, gw, dense.shape[-1])
    out["last_hidden_state"] = x
    out["patch_tokens"] = x[:, n_front:].reshape(b, gh, gw, cfg.width)
    return out


def param_shapes(cfg: ViTConfig) -> dict:
  """Flat {'a/b/c': shape} of the parameters `cfg` implies, computed without allocating them."""
  from sketchseg_jax.param_tree import shapes
  example = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  abstract = jax.eval_shape(lambda: VisionTransformer(cfg).init(jax.random.key(0), example))
  # Boxes opened without sharding constraints: this may run under a mesh, outside jit.
  return shapes(abstract["params"])
