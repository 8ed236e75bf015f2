"""Backbone options: sharding by logical axes, scan/remat, compute and parameter dtypes,
dense CLIP features, the variants table."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchseg_jax import backbones
from sketchseg_jax.convert.apply import flatten, stack_layers, unflatten
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.vit import param_shapes
from sketchseg_jax.models.vit_config import ViTConfig, variant

CFG = ViTConfig(family="dinov2", width=64, depth=2, num_heads=4, mlp_dim=128, patch_size=8,
                image_size=32, mlp="gelu", layer_norm_eps=1e-6, num_registers=2)
RULES = (("batch", "data"), ("mlp", "model"), ("heads", "model"), ("embed", None),
         ("length", None), ("layers", None), ("proj", None))


@pytest.fixture(scope="module")
def reference():
  params = backbones.init_params(CFG, jax.random.key(1))
  x = np.random.default_rng(0).normal(size=(8, 32, 40, 3)).astype(np.float32)
  out = backbones.build(CFG).apply({"params": params}, x)
  return params, x, out


def test_sharded_init_and_forward_match_unsharded(reference):
  params, x, ref = reference
  assert len(jax.devices()) == 8
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  module = backbones.build(CFG)
  abstract = jax.eval_shape(module.init, jax.random.key(1), x)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    variables = jax.jit(module.init, out_shardings=shardings)(jax.random.key(1), x)
    sharded = nn.unbox(variables)["params"]
    fc1 = sharded["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert {s.data.shape for s in fc1.addressable_shards} == {(64, 32)}
    q = sharded["encoder"]["layers_1"]["attn"]["q_proj"]["kernel"]
    assert {s.data.shape for s in q.addressable_shards} == {(64, 16)}
    fwd = jax.jit(lambda p, im: module.apply({"params": p}, im)["last_hidden_state"])
    out = fwd(sharded, jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))))
  for a, b in zip(jax.tree.leaves(jax.device_get(sharded)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(out, ref["last_hidden_state"], atol=1e-5)
  assert out.sharding.spec[0] == "data"


def test_scan_and_remat_match_the_layer_loop(reference):
  params, x, ref = reference
  cfg = CFG.replace(scan_layers=True, remat=True, output_layers=(0, 1))
  stacked = unflatten(stack_layers(flatten(params), cfg))
  module = backbones.build(cfg)
  out = module.apply({"params": stacked}, x)
  np.testing.assert_allclose(out["last_hidden_state"], ref["last_hidden_state"], atol=1e-5)
  loop = backbones.build(CFG.replace(output_layers=(0, 1))).apply({"params": params}, x)
  for i in (0, 1):
    np.testing.assert_allclose(out["intermediates"][i], loop["intermediates"][i], atol=1e-5)
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, x)["pooled"] ** 2)
  g_scan = jax.grad(lambda p: loss(module, p))(stacked)
  g_loop = jax.grad(lambda p: loss(backbones.build(CFG), p))(params)
  g_loop = unflatten(stack_layers(flatten(g_loop), cfg))
  # Scan reorders float sums: compare against the gradients' own scale.
  scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g_loop))
  for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_loop)):
    np.testing.assert_allclose(a, b, atol=2e-5 * scale, rtol=0)


def test_bfloat16_compute_keeps_float32_params(reference):
  params, x, ref = reference
  module = backbones.build(CFG.replace(dtype="bfloat16"))
  out = module.apply({"params": params}, x)
  assert out["last_hidden_state"].dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  got = np.asarray(out["pooled"], np.float32)
  want = np.asarray(ref["pooled"])
  assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
  init = backbones.init_params(CFG.replace(dtype="bfloat16", param_dtype="bfloat16"))
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(init))


def test_clip_dense_features_use_post_norm_and_projection():
  cfg = ViTConfig(family="clip", width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8,
                  image_size=16, projection_dim=12, dense_projection=True)
  params = backbones.init_params(cfg)
  x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
  out = backbones.build(cfg).apply({"params": params}, x)
  assert out["patch_embeds"].shape == (2, 2, 3, 12)
  ln = params["post_layernorm"]
  t = np.asarray(out["patch_tokens"])
  normed = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5)
  expect = (normed * ln["scale"] + ln["bias"]) @ params["projection"]["kernel"]
  np.testing.assert_allclose(out["patch_embeds"], expect, atol=1e-4)


@pytest.mark.parametrize("name,family,millions", [
    ("B/16", "clip", 86.2), ("B/32", "clip", 87.8), ("L/14", "clip", 303.9),
    ("S/14", "dinov2", 22.1), ("B/14", "dinov2", 86.6), ("L/14", "dinov2", 304.4),
    ("g/14", "dinov2", 1136.5)])
def test_variant_sizes(name, family, millions):
  # Parameter counts of the released checkpoints (vision tower with projection for CLIP).
  n = sum(int(np.prod(s)) for s in param_shapes(variant(name, family)).values())
  assert abs(n / 1e6 - millions) < 0.5, n


def test_attention_kernel_is_checked_and_xla_is_the_default(reference):
  params, x, ref = reference
  assert CFG.attention == "xla"
  out = backbones.build(CFG.replace(attention="xla")).apply({"params": params}, x)
  np.testing.assert_array_equal(out["pooled"], ref["pooled"])
  with pytest.raises(UserError, match="attention must be one of"):
    CFG.replace(attention="flash")
  # cuDNN's fused kernel runs bf16/fp16 only: a float32 tower asking for it is refused up
  # front rather than failing in the GPU compiler.
  with pytest.raises(UserError, match="needs dtype bfloat16 or float16"):
    CFG.replace(attention="cudnn")
  cudnn = CFG.replace(attention="cudnn", dtype="bfloat16")
  # Off NVIDIA GPUs the same config runs XLA's kernel: a run trained with cuDNN's evaluates here.
  got = backbones.build(cudnn).apply({"params": params}, x)["pooled"]
  want = backbones.build(CFG.replace(dtype="bfloat16")).apply({"params": params}, x)["pooled"]
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert ViTConfig.from_dict(CFG.replace(attention="cudnn", dtype="bfloat16").to_dict()) \
      == CFG.replace(attention="cudnn", dtype="bfloat16")


def test_even_length_attention_masks_its_padding():
  # The padding that cuDNN's differentiated kernel needs must not change the function: checked
  # here through XLA's kernel, which takes the same key lengths.
  from sketchseg_jax.models.vit import even_length_attention
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 8)), jnp.float32) for _ in range(3))
  want = jax.nn.dot_product_attention(q, k, v, scale=0.3)
  got = even_length_attention(q, k, v, 0.3, "xla")
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-6)
  grad = lambda f: jax.grad(lambda t: jnp.sum(jnp.sin(f(t))))(q)
  np.testing.assert_allclose(grad(lambda t: even_length_attention(t, k, v, 0.3, "xla")),
                             grad(lambda t: jax.nn.dot_product_attention(t, k, v, scale=0.3)),
                             atol=1e-6)
