"""Flax backbones against transformers' PyTorch models built from configs (random weights).

Each case writes a real Hugging Face folder with save_pretrained, imports it with
backbones.load, and compares every output at 1e-4 on native and non-native, non-square sizes.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sketchseg_jax import backbones  # noqa: E402

TOL = 1e-4

CASES = {
    # name: (model class, config kwargs, input sizes (H, W))
    "clip_proj_quickgelu": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3,
        image_size=32, patch_size=8, projection_dim=24, hidden_act="quick_gelu"),
        [(32, 32), (40, 24)]),
    "clip_odd_gelu": ("CLIPVisionModel", "CLIPVisionConfig", dict(
        hidden_size=60, intermediate_size=90, num_hidden_layers=2, num_attention_heads=5,
        image_size=30, patch_size=6, hidden_act="gelu"), [(30, 30), (36, 42)]),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(
        hidden_size=40, num_hidden_layers=2, num_attention_heads=5, image_size=28,
        patch_size=7, layerscale_value=0.5), [(28, 28), (35, 49)]),
    "dinov2_swiglu": ("Dinov2Model", "Dinov2Config", dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=16, use_swiglu_ffn=True, mlp_ratio=3), [(32, 32), (48, 16)]),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14, num_register_tokens=3), [(28, 28), (42, 70), (14, 28)]),
}


def _randomise(model, seed):
  # transformers initialises LayerNorms to (1, 0), LayerScale to a constant and position tables
  # small; random values everywhere make a wrong mapping visible.
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  model_cls, conf_cls, kwargs, sizes = CASES[request.param]
  conf = getattr(transformers, conf_cls)(**kwargs)
  torch_model = getattr(transformers, model_cls)(conf).eval()
  _randomise(torch_model, 0)
  folder = tmp_path_factory.mktemp(request.param)
  torch_model.save_pretrained(folder)
  module, params = backbones.load(folder, output_layers=(0,))
  return request.param, torch_model, module, params, sizes


def test_outputs_match_pytorch(case):
  name, torch_model, module, params, sizes = case
  cfg = module.cfg
  regs = cfg.num_registers
  rng = np.random.default_rng(1)
  for h, w in sizes:
    x = rng.normal(size=(2, h, w, cfg.num_channels)).astype(np.float32)
    with torch.no_grad():
      kwargs = {"interpolate_pos_encoding": True} if cfg.family == "clip" else {}
      ref = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True,
                        **kwargs)
    out = module.apply({"params": params}, x)
    last = ref.last_hidden_state.numpy()
    gh, gw = h // cfg.patch_size, w // cfg.patch_size
    np.testing.assert_allclose(out["last_hidden_state"], last, atol=TOL, rtol=0,
                               err_msg=f"{name} {h}x{w} last_hidden_state")
    np.testing.assert_allclose(out["patch_tokens"],
                               last[:, 1 + regs:].reshape(2, gh, gw, -1), atol=TOL, rtol=0)
    np.testing.assert_allclose(out["intermediates"][0], ref.hidden_states[1].numpy(),
                               atol=TOL, rtol=0)
    if hasattr(ref, "image_embeds"):
      np.testing.assert_allclose(out["pooled"], ref.image_embeds.numpy(), atol=TOL, rtol=0)
      pooler = torch_model.vision_model.post_layernorm(ref.last_hidden_state[:, 0]).detach()
      np.testing.assert_allclose(out["cls"], pooler.numpy(), atol=TOL, rtol=0)
    else:
      np.testing.assert_allclose(out["cls"], ref.pooler_output.numpy(), atol=TOL, rtol=0)
      np.testing.assert_allclose(out["pooled"], ref.pooler_output.numpy(), atol=TOL, rtol=0)
    if regs:
      np.testing.assert_allclose(out["registers"], last[:, 1:1 + regs], atol=TOL, rtol=0)


def test_mask_token_matches_pytorch(case):
  name, torch_model, module, params, sizes = case
  cfg = module.cfg
  if cfg.family != "dinov2":
    pytest.skip("CLIP has no mask token")
  h, w = sizes[0]
  n = (h // cfg.patch_size) * (w // cfg.patch_size)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  mask = rng.random((2, n)) < 0.5
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2),
                      bool_masked_pos=torch.from_numpy(mask)).last_hidden_state.numpy()
  out = module.apply({"params": params}, x, bool_masked_pos=mask)
  np.testing.assert_allclose(out["last_hidden_state"], ref, atol=TOL, rtol=0)
