"""Conversion both ways: bit-identical round trips, transformers loads our exports cleanly,
full-size layouts have the right shapes, strict key checks and clear errors on bad input."""

import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sketchseg_jax import backbones, cli  # noqa: E402
from sketchseg_jax.convert import formats, tables  # noqa: E402
from sketchseg_jax.convert.apply import export_state_dict, import_state_dict, unflatten  # noqa: E402
from sketchseg_jax.errors import CheckpointError, UserError  # noqa: E402
from sketchseg_jax.models.vit import param_shapes  # noqa: E402
from sketchseg_jax.models.vit_config import ViTConfig, variant  # noqa: E402

TINY = {
    "clip_proj": ViTConfig(family="clip", width=48, depth=2, num_heads=3, mlp_dim=80,
                           patch_size=8, image_size=32, projection_dim=24),
    "clip_gelu": ViTConfig(family="clip", width=60, depth=2, num_heads=5, mlp_dim=90,
                           patch_size=6, image_size=30, mlp="gelu"),
    "dinov2": ViTConfig(family="dinov2", width=40, depth=2, num_heads=5, mlp_dim=160,
                        patch_size=7, image_size=28, mlp="gelu", layer_norm_eps=1e-6),
    "dinov2_swiglu": ViTConfig(family="dinov2", width=48, depth=2, num_heads=4, mlp_dim=144,
                               patch_size=16, image_size=32, mlp="swiglu", layer_norm_eps=1e-6),
    "dinov2_reg": ViTConfig(family="dinov2", width=32, depth=2, num_heads=2, mlp_dim=128,
                            patch_size=14, image_size=28, mlp="gelu", layer_norm_eps=1e-6,
                            num_registers=3, pos_interp_antialias=True),
}
STATE_DICT_FORMAT = {"clip": "openai", "dinov2": "dinov2"}


def random_flat(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) * 0.5 for k, s in param_shapes(cfg).items()}


def assert_bit_identical(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("fmt", ["hf", "native", "native_safetensors", "flax"])
def test_round_trip_is_bit_identical(tmp_path, name, fmt):
  cfg = TINY[name]
  flat = random_flat(cfg)
  if fmt.startswith("native"):
    fmt_name = STATE_DICT_FORMAT[cfg.family]
    out = tmp_path / ("ckpt.safetensors" if fmt.endswith("safetensors") else "ckpt.pth")
  else:
    fmt_name, out = fmt, tmp_path / "ckpt"
  backbones.save(out, cfg, unflatten(flat), format=fmt_name)
  assert formats.detect(out) == fmt_name
  # A bare .pth state dict cannot say its head count or activation; .safetensors exports do.
  hints = {"num_heads": cfg.num_heads, "mlp": cfg.mlp} if fmt == "native" else {}
  cfg2, flat2 = formats.read(out, **hints)
  assert_bit_identical(flat, flat2)
  arch = lambda c: c.replace(pos_interp_offset=0.0, pos_interp_antialias=False)
  assert arch(cfg2) == arch(cfg)


def test_scan_layers_load_and_save(tmp_path):
  cfg = TINY["dinov2_reg"]
  flat = random_flat(cfg)
  backbones.save(tmp_path / "a", cfg, unflatten(flat))
  module, params = backbones.load(tmp_path / "a", scan_layers=True)
  assert params["encoder"]["layers"]["attn"]["q_proj"]["kernel"].shape == (2, 32, 32)
  x = np.random.default_rng(0).normal(size=(1, 28, 42, 3)).astype(np.float32)
  loop_module, loop_params = backbones.load(tmp_path / "a")
  np.testing.assert_allclose(module.apply({"params": params}, x)["last_hidden_state"],
                             loop_module.apply({"params": loop_params}, x)["last_hidden_state"],
                             atol=1e-5)
  backbones.save(tmp_path / "b", module, params)
  assert_bit_identical(flat, formats.read(tmp_path / "b")[1])


@pytest.mark.parametrize("name", sorted(TINY))
def test_hf_export_loads_cleanly_and_matches(tmp_path, name):
  cfg = TINY[name]
  flat = random_flat(cfg, seed=3)
  backbones.save(tmp_path / "hf", cfg, unflatten(flat), format="hf")
  arch = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
  model, info = getattr(transformers, arch).from_pretrained(tmp_path / "hf",
                                                            output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"]
  module, params = backbones.load(tmp_path / "hf")
  x = np.random.default_rng(4).normal(size=(2, cfg.image_size, cfg.image_size, 3))
  x = x.astype(np.float32)
  with torch.no_grad():
    ref = model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2))
  out = module.apply({"params": params}, x)
  np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4)
  if cfg.projection_dim:
    np.testing.assert_allclose(out["pooled"], ref.image_embeds.numpy(), atol=1e-4)


def test_clip_model_folder_reads_the_vision_tower(tmp_path):
  vision = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3,
                image_size=32, patch_size=8)
  text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
  model = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=vision, text_config=text, projection_dim=24)).eval()
  model.save_pretrained(tmp_path / "clip")
  module, params = backbones.load(tmp_path / "clip")
  x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model.get_image_features(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2))
  ref = getattr(ref, "pooler_output", ref)
  np.testing.assert_allclose(module.apply({"params": params}, x)["pooled"], ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("family,name,fmt", [("clip", "B/16", "hf"), ("clip", "B/16", "openai"),
                                             ("dinov2", "B/14", "hf"), ("dinov2", "B/14", "dinov2")])
def test_full_size_layouts(family, name, fmt):
  cfg = variant(name, family)
  flat = random_flat(cfg)
  if fmt == "hf":
    rules = tables.hf_clip(cfg) if family == "clip" else tables.hf_dinov2(cfg, legacy=False)
    sd = export_state_dict(flat, rules)
    conf = formats.hf_config(cfg)
    conf_cls = transformers.CLIPVisionConfig if family == "clip" else transformers.Dinov2Config
    model_cls = (transformers.CLIPVisionModelWithProjection if family == "clip"
                 else transformers.Dinov2Model)
    with torch.device("meta"):
      ref = model_cls(conf_cls(**{k: v for k, v in conf.items() if k != "architectures"}))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in sd.items()} == ref_shapes
  elif fmt == "openai":
    sd = export_state_dict(flat, tables.openai_clip(cfg))
    assert sd["visual.conv1.weight"].shape == (768, 3, 16, 16)
    assert sd["visual.positional_embedding"].shape == (197, 768)
    assert sd["visual.transformer.resblocks.11.attn.in_proj_weight"].shape == (2304, 768)
    assert sd["visual.proj"].shape == (768, 512)
    assert len(sd) == 3 + 2 + 2 + 12 * 12 + 1  # embeddings, ln_pre, ln_post, blocks, proj
  else:
    sd = export_state_dict(flat, tables.official_dinov2(cfg))
    assert sd["pos_embed"].shape == (1, 1370, 768)
    assert sd["cls_token"].shape == (1, 1, 768)
    assert sd["patch_embed.proj.weight"].shape == (768, 3, 14, 14)
    assert sd["blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert sd["blocks.11.ls2.gamma"].shape == (768,)
  rules = {"hf": (tables.hf_clip(cfg) if family == "clip" else tables.hf_dinov2(cfg)),
           "openai": tables.openai_clip(cfg), "dinov2": tables.official_dinov2(cfg)}[fmt]
  assert_bit_identical(flat, import_state_dict(sd, rules, source="test"))


def test_official_dinov2_chunked_blocks_and_wrapped_dict(tmp_path):
  cfg = TINY["dinov2_reg"].replace(pos_interp_offset=0.1)
  flat = random_flat(cfg)
  sd = export_state_dict(flat, tables.official_dinov2(cfg))
  chunked = {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: torch.from_numpy(v)
             for k, v in sd.items()}
  torch.save({"model": chunked}, tmp_path / "chunked.pth")
  cfg2, flat2 = formats.read(tmp_path / "chunked.pth", num_heads=2)
  assert cfg2.pos_interp_offset == 0.1 and cfg2.pos_interp_antialias and cfg2.num_registers == 3
  assert_bit_identical(flat, flat2)


# ------------------------------------------------------------------ strictness and bad input

def _write_sd(path, sd):
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)


def test_unexpected_and_missing_keys_are_listed(tmp_path):
  cfg = TINY["clip_proj"]
  sd = export_state_dict(random_flat(cfg), tables.openai_clip(cfg))
  sd["visual.attn_pool.query"] = np.zeros(3, np.float32)
  del sd["visual.ln_post.weight"]
  _write_sd(tmp_path / "x.pt", sd)
  with pytest.raises(CheckpointError, match=r"missing keys: visual\.ln_post\.weight.*"
                                            r"unexpected keys: visual\.attn_pool\.query"):
    formats.read(tmp_path / "x.pt", num_heads=3)


def test_other_architecture_is_named(tmp_path):
  cfg = TINY["dinov2"]
  backbones.save(tmp_path / "d", cfg, unflatten(random_flat(cfg)))
  conf = json.loads((tmp_path / "d" / "config.json").read_text())
  conf["vit"]["width"] = 64
  conf["vit"]["num_heads"] = 4
  (tmp_path / "d" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(CheckpointError, match=r"shape mismatches: .*checkpoint \(40,\) vs model \(64,\)"):
    backbones.load(tmp_path / "d")
  _write_sd(tmp_path / "dino.pth", export_state_dict(random_flat(cfg), tables.official_dinov2(cfg)))
  with pytest.raises(CheckpointError, match="missing key 'visual.class_embedding'"):
    formats.read(tmp_path / "dino.pth", "openai")


def test_missing_truncated_and_foreign_files(tmp_path):
  with pytest.raises(CheckpointError, match="no such file"):
    backbones.load(tmp_path / "nope")
  cfg = TINY["clip_proj"]
  backbones.save(tmp_path / "f", cfg, unflatten(random_flat(cfg)))
  weights = tmp_path / "f" / "params.safetensors"
  weights.write_bytes(weights.read_bytes()[:-100])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    backbones.load(tmp_path / "f")
  backbones.save(tmp_path / "sd.pt", cfg, unflatten(random_flat(cfg)), format="openai")
  data = (tmp_path / "sd.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="cannot be read as a PyTorch state dict"):
    formats.read(tmp_path / "cut.pt", "openai")
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(CheckpointError, match="unknown weight file type"):
    formats.read(tmp_path / "notes.txt")


def test_torchscript_archive_is_refused_with_instructions(tmp_path):
  with zipfile.ZipFile(tmp_path / "ViT-B-32.pt", "w") as z:
    z.writestr("ViT-B-32/constants.pkl", b"")
    z.writestr("ViT-B-32/code/__torch__/model.py", b"")
  with pytest.raises(CheckpointError, match="TorchScript archive.*torch.jit.load"):
    formats.read(tmp_path / "ViT-B-32.pt")


def test_pickled_objects_are_not_loaded(tmp_path):
  import pickle

  class Evil:
    def __reduce__(self):
      return (print, ("ran code",))

  torch.save({"visual.class_embedding": torch.zeros(3), "x": Evil()}, tmp_path / "evil.pt",
             pickle_module=pickle)
  with pytest.raises(CheckpointError, match="weights_only=True"):
    formats.read(tmp_path / "evil.pt", "openai")


@pytest.fixture(scope="module")
def tiny_clip():
  cfg = TINY["clip_proj"].replace(pos_interp=False)
  return backbones.build(cfg), unflatten(random_flat(cfg))


@pytest.mark.parametrize("shape,message", [
    ((1, 36, 32, 3), "not a multiple of the patch size 8"),
    ((1, 32, 32, 1), "images have 1 channels, this backbone takes 3"),
    ((1, 3, 32, 32), "images have 32 channels"),
    ((1, 40, 40, 3), "position interpolation is off"),
    ((32, 32, 3), "NHWC"),
])
def test_bad_images_get_one_clear_error(tiny_clip, shape, message):
  module, params = tiny_clip
  with pytest.raises(UserError, match=message):
    module.apply({"params": params}, np.zeros(shape, np.float32))


def test_convert_command_chains_formats(tmp_path, capsys):
  cfg = TINY["clip_proj"]
  flat = random_flat(cfg)
  backbones.save(tmp_path / "hf", cfg, unflatten(flat), format="hf")
  assert cli.main(["convert", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "o.pt"),
                   "--to", "openai"]) == 0
  assert cli.main(["convert", "--src", str(tmp_path / "o.pt"), "--out", str(tmp_path / "flax"),
                   "--heads", "3"]) == 0
  assert cli.main(["convert", "--src", str(tmp_path / "flax"), "--out", str(tmp_path / "hf2"),
                   "--to", "hf"]) == 0
  assert "clip width 48, depth 2, patch 8" in capsys.readouterr().out
  assert_bit_identical(flat, formats.read(tmp_path / "hf2")[1])
  assert cli.main(["convert", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "z")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no such file" in err[0]
  assert not (tmp_path / "z").exists()
