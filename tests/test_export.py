"""`sketchseg export`: the generated PyTorch module and the ONNX graphs give the Flax
segmenter's masks, features and logits (1e-4), the module imports no JAX, DINOv2 backbones with
registers, SwiGLU and every position-interpolation variant carry over, teacher runs export
through issue 7's exporter, and bad checkpoints or outputs fail with one line."""

import ast
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segmenter_helpers import (ROOT, TINY_TEACHER, import_generated, tiny_config,  # noqa: E402
                               train_tiny)
from sketchseg_jax.cli import main  # noqa: E402
from sketchseg_jax.train.checkpoints import read_params  # noqa: E402
from sketchseg_jax.convert.apply import flatten  # noqa: E402
from sketchseg_jax.export import segmenter_export, torch_module  # noqa: E402
from sketchseg_jax.models.preprocess import MEAN_STD  # noqa: E402
from sketchseg_jax.models.sbir import SBIRTeacher  # noqa: E402
from sketchseg_jax.models.segmenter import Segmenter  # noqa: E402
from sketchseg_jax.models.vit import VisionTransformer  # noqa: E402
from sketchseg_jax.models.vit_config import ViTConfig  # noqa: E402
from sketchseg_jax.sketch import Sketch, rasterize  # noqa: E402
from sketchseg_jax.param_tree import plain  # noqa: E402
from sketchseg_jax.train.config_lib import load_config, read_saved_config  # noqa: E402
from sketchseg_jax.train.stage import build  # noqa: E402

TOL = 1e-4
IMAGE = 40   # the segmenter runs at 40 px on a 32 px backbone: positions are interpolated
RASTER = 32


# ------------------------------------------------------------------------------ helpers

def perturb(params, seed=0, scale=0.1):
  """Flax starts LayerNorms at (1, 0) and heads at zero; noise on every weight makes a wrong
  mapping (or a skipped op) visible."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p, np.float32)
                      + rng.normal(0, scale, np.shape(p)).astype(np.float32),
                      plain(jax.device_get(params)))


CENTRES = {"scale": 1.0, "gamma": 1.0, "alpha": 10.0, "beta": -2.0}


def random_params(init, *args, seed=0):
  """The parameters `init(key, *args)` would make, drawn at random from their shapes alone
  (no compiled init): norm and layer scales near 1, alpha near 10, the rest N(0, 0.3)."""
  shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0), *args))
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  values = [(CENTRES.get(str(getattr(path[-1], "key", "")), 0.0)
             + rng.normal(0, 0.3, leaf.shape)).astype(np.float32) for path, leaf in leaves]
  return jax.tree_util.tree_unflatten(tree, values)


def photo(seed, h=IMAGE, w=IMAGE):
  """A smooth colour field with some texture: uint8 (h, w, 3)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], -1)
  return np.clip(127 + 90 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def rasters(n, seed):
  """(n, R, R) float rasters, ink = 1, anti-aliased (grey levels exercise the rounding)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    strokes = [np.cumsum(rng.normal(0, 6, (6, 2)), 0) + rng.uniform(20, 80, 2)
               for _ in range(2)]
    out.append(rasterize(Sketch(strokes, (100, 100)), RASTER, width=2.0))
  return np.stack(out).astype(np.float32)


def ink255(r):
  return np.round(np.asarray(r) * 255).astype(np.uint8)


_JITTED = {}


def _jitted(stage):
  """The Flax reference functions of `stage`, compiled once per stage (eager Flax would
  compile every op on first use)."""
  key = id(stage)
  if key not in _JITTED:
    model = stage.model
    _JITTED[key] = (stage, dict(
        predict=jax.jit(stage.predict),
        features=jax.jit(lambda seg, x: model.apply({"params": seg}, x,
                                                    method=Segmenter.features)),
        embeddings=jax.jit(stage.queries),
        queries=jax.jit(lambda seg, e: model.apply({"params": seg}, e,
                                                   method=Segmenter.queries)),
        logits=jax.jit(lambda seg, f, e: model.apply({"params": seg}, f, e,
                                                     method=Segmenter.logits))))
  return _JITTED[key][1]


def flax_features(stage, params, photos):
  return np.asarray(_jitted(stage)["features"](params["segmenter"], np.asarray(photos)))


def flax_embeddings(stage, params, r):
  return np.asarray(_jitted(stage)["embeddings"](params, ink255(r)[None]))[0]


def flax_queries(stage, params, emb):
  return np.asarray(_jitted(stage)["queries"](params["segmenter"], emb))


def flax_logits(stage, params, feats, emb):
  return np.asarray(_jitted(stage)["logits"](params["segmenter"], feats, emb[None]))[0]


def flax_mask(stage, params, image, r):
  """stage.predict: photo at the model's size, the max over the sketches' masks."""
  ink = ink255(r)[None]
  valid = np.ones(ink.shape[:2], bool)
  return np.asarray(_jitted(stage)["predict"](params, image[None], ink, valid))[0]


def close(a, b, tol=TOL):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  err = float(np.max(np.abs(a - b)))
  assert err <= tol, f"max |difference| {err:.3g} > {tol}"


def export_cli(capsys, *args):
  rc = main(["export", *map(str, args)])
  out, err = capsys.readouterr()
  return rc, out, err


def one_line_error(capsys, *args):
  rc, out, err = export_cli(capsys, *args)
  assert rc == 2, (out, err)
  assert len(err.strip().splitlines()) == 1 and err.startswith("sketchseg export: error: "), err
  return err


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = train_tiny(tmp_path_factory.mktemp("seg") / "run", image_size=IMAGE)
  stage = build(read_saved_config(workdir))
  params, _ = read_params(workdir / "checkpoints", None)
  return workdir, stage, plain(jax.device_get(params))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """The trained run's model with perturbed weights, exported with ONNX."""
  _, stage, params = run
  params = perturb(params)
  out = segmenter_export.export_segmenter(stage, params, tmp_path_factory.mktemp("exp") / "out")
  m = import_generated(out).load(out)
  return stage, params, out, m


# ------------------------------------------------------------------------------ parity

def test_segment_matches_flax_predict(exported):
  stage, params, _, m = exported
  image = photo(1)
  r = rasters(3, seed=2)
  # One sketch; Flax sees it three times (the max of equal masks), one compiled shape less.
  close(m.segment(image, r[0]), flax_mask(stage, params, image, r[[0, 0, 0]]))
  # Several sketches of one query: a list or a stack, the max of their masks.
  want = flax_mask(stage, params, image, r)
  close(m.segment(image, list(r)), want)
  close(m.segment(image, torch.from_numpy(r)), want)
  close(m.segment(image, ink255(r)), want)  # uint8 rasters: ink = 255
  assert m.segment(image, r[0]).dtype == np.float32


def test_building_blocks_match_flax(exported):
  stage, params, _, m = exported
  photos = np.stack([photo(3), photo(4)])
  r = rasters(3, seed=5)
  feats = flax_features(stage, params, photos)
  emb = flax_embeddings(stage, params, r)
  with torch.no_grad():
    got_f = m.image_features(photos)
    close(got_f, feats)
    close(m.sketch_embedding(r), emb)
    q = flax_queries(stage, params, emb)
    close(m.query(r), q)
    z = flax_logits(stage, params, feats[:1], emb)
    close(m.logits(feats[0], q), z)
    close(m.logits(got_f[:1], m.query(r)), z)
    probs = m.masks_from(feats[0], q, (IMAGE, IMAGE))
  from sketchseg_jax.models.segmenter import upsample
  want = jax.nn.sigmoid(upsample(z[None], (IMAGE, IMAGE)))[0]
  close(probs, want)


def test_matches_the_predictor(exported):
  predictor_lib = pytest.importorskip("sketchseg_jax.infer.predictor")
  stage, params, _, m = exported
  p = predictor_lib.Predictor(stage, params)
  r = rasters(3, seed=6)
  image = photo(7)
  p.set_image(image)
  close(m.segment(image, list(r)), p.segment(list(r)))
  # A photo of another size: with the photo resized the way the pipeline does (PIL), the
  # building blocks reproduce the Predictor; segment()'s own torch resize comes close.
  other = photo(8, 57, 83)
  p.set_image(other)
  want = p.segment(list(r))
  resized = predictor_lib.resize_photo(other, IMAGE)
  with torch.no_grad():
    got = m.masks_from(m.image_features(resized), m.query(r), other.shape[:2]).max(0).values
  close(got, want)
  approx = m.segment(other, list(r))
  assert approx.shape == other.shape[:2]
  assert float(np.mean(np.abs(approx - want))) < 0.02


def test_torch_resize_is_within_a_grey_level_of_pil(exported):
  from PIL import Image
  m = exported[3]
  for h, w in ((57, 83), (23, 30), (120, 90)):
    image = photo(h, h, w)
    pil = np.asarray(Image.fromarray(image).resize((IMAGE, IMAGE), Image.BILINEAR), np.float32)
    got = m.resize_photo(image).numpy()
    assert np.max(np.abs(got - pil)) <= 1.0
  assert m.resize_photo(photo(1)).shape == (IMAGE, IMAGE, 3)


def test_onnx_paths_match_flax(exported):
  ort = pytest.importorskip("onnxruntime")
  stage, params, out, _ = exported
  photos = np.stack([photo(9), photo(10)])
  r = rasters(3, seed=11)
  feats = flax_features(stage, params, photos)
  image_path = ort.InferenceSession(str(out / "image_path.onnx"))
  query_path = ort.InferenceSession(str(out / "query_path.onnx"))
  close(image_path.run(None, {"image": photos})[0], feats)           # batch of 2
  close(image_path.run(None, {"image": photos[:1]})[0], feats[:1])   # and of 1
  want = flax_logits(stage, params, feats[:1], flax_embeddings(stage, params, r))
  close(query_path.run(None, {"rasters": r, "features": feats[:1]})[0], want)
  close(query_path.run(None, {"rasters": r[:1], "features": feats[:1]})[0], want[:1])
  conf = json.loads((out / "sketchseg.json").read_text())
  assert conf["onnx"]["image_path"]["file"] == "image_path.onnx"
  assert set(conf["onnx"]["query_path"]["inputs"]) == {"rasters", "features"}


def test_generated_module_runs_without_jax(exported, tmp_path):
  stage, params, out, _ = exported
  image, r = photo(12), rasters(3, seed=13)
  np.save(tmp_path / "image.npy", image)
  np.save(tmp_path / "rasters.npy", r)
  code = (
      "import sys\n"
      "for name in ('jax', 'jaxlib', 'flax', 'transformers', 'sketchseg_jax'):\n"
      "  sys.modules[name] = None  # importing any of them now fails\n"
      "sys.path.insert(0, sys.argv[1])\n"
      "import numpy as np, sketchseg_torch\n"
      "m = sketchseg_torch.load(sys.argv[1])\n"
      "np.save(sys.argv[2] + '/mask.npy', m.segment(np.load(sys.argv[2] + '/image.npy'),\n"
      "                                           list(np.load(sys.argv[2] + '/rasters.npy'))))\n")
  env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
  env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave the export folder as it was written
  done = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path)], env=env,
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  close(np.load(tmp_path / "mask.npy"), flax_mask(stage, params, image, r))
  # And the file itself names only torch, numpy, safetensors and the standard library.
  tree = ast.parse((out / "sketchseg_torch.py").read_text())
  roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
           for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
           for a in (n.names if isinstance(n, ast.Import) else [n])}
  assert roots <= {"__future__", "json", "pathlib", "numpy", "torch", "safetensors"}, roots


def test_docstring_example_runs(exported, tmp_path, monkeypatch):
  """The five lines of the module docstring, as written, on files PIL wrote."""
  from PIL import Image
  out = exported[2]
  module = import_generated(out)
  doc = module.__doc__.split("the five lines a PyTorch user needs:\n\n", 1)[1]
  lines = [l.strip() for l in doc.split("\n\n", 1)[0].splitlines()]
  assert len(lines) == 5 and lines[0].startswith("m = sketchseg_torch.load")
  Image.fromarray(photo(19, 50, 70)).save(tmp_path / "photo.jpg")
  Image.fromarray(255 - ink255(rasters(1, seed=20)[0])).save(tmp_path / "sketch.png")
  monkeypatch.chdir(tmp_path)
  scope = {"np": np, "Image": Image, "sketchseg_torch": module}
  exec("\n".join(lines).replace('"OUT"', repr(str(out))), scope)
  assert scope["mask"].shape == (50, 70) and scope["binary"].dtype == bool


def test_export_folder_contents(exported):
  stage, _, out, m = exported
  assert (out / "sketchseg_torch.py").read_text() == segmenter_export.TEMPLATE.read_text()
  assert (segmenter_export.FORMAT, segmenter_export.VERSION) == (torch_module.FORMAT,
                                                                 torch_module.VERSION)
  conf = json.loads((out / "sketchseg.json").read_text())
  assert (conf["image_size"], conf["raster_size"], conf["embed_dim"]) == (IMAGE, RASTER, 32)
  assert conf["segmenter"]["mean"] == list(MEAN_STD["clip"][0])
  assert conf["sketch_tower"]["params"] == "teacher/sketch_backbone"  # separate towers
  assert conf["sketch_tower"]["num_prompts"] == 2 and conf["segmenter"]["num_prompts"] == 2
  from safetensors.numpy import load_file
  keys = set(load_file(str(out / "sketchseg.safetensors")))
  assert keys == set(m.state_dict())
  # Only what segmentation needs: no photo tower, no mask token, no segmenter post-norm.
  assert all(k.startswith(("segmenter.", "sketch_tower.")) for k in keys)
  assert "segmenter.backbone.post_layernorm.weight" not in keys
  assert "sketch_tower.backbone.projection.weight" in keys
  assert sorted(p.name for p in out.iterdir() if p.name != "__pycache__") == [
      "image_path.onnx", "query_path.onnx", "sketchseg.json", "sketchseg.safetensors",
      "sketchseg_torch.py"]


# ------------------------------------------------------------------------------ other models

DINO = dict(family="dinov2", width=32, depth=2, num_heads=2, mlp_dim=48, patch_size=8,
            image_size=32, mlp="swiglu", layer_norm_eps=1e-6, num_registers=2,
            pos_interp_offset=0.1, pos_interp_antialias=True)


def test_dinov2_segmenter_with_registers_swiglu_head_and_adapter(tmp_path):
  """A DINOv2 backbone (random init) under the CLIP teacher, with an MLP head, a query
  adapter and shallow prompts, built without training."""
  config = tiny_config(image_size=IMAGE, **{"model.vit": DINO, "model.init_from": "",
                                            "model.head": "mlp", "model.adapter": True,
                                            "model.num_prompts": 2})
  stage = build(config)
  batch = {"image": np.zeros((1, IMAGE, IMAGE, 3), np.uint8),
           "sketch": np.zeros((1, 1, RASTER, RASTER), np.uint8)}
  params = random_params(stage.init, batch, seed=1)
  out = segmenter_export.export_segmenter(stage, params, tmp_path / "out", onnx=False)
  assert not (out / "image_path.onnx").exists()
  m = import_generated(out).load(out)
  assert "segmenter.backbone.register_tokens" in m.state_dict()
  assert "segmenter.backbone.layers.0.mlp.gate_proj.weight" in m.state_dict()
  image, r = photo(14), rasters(3, seed=15)
  # (Features alone: the ViT tests below.)
  close(m.segment(image, list(r)), flax_mask(stage, params, image, r))
  conf = json.loads((out / "sketchseg.json").read_text())
  assert conf["segmenter"]["mean"] == list(MEAN_STD["dinov2"][0])
  assert conf["segmenter"]["vit"]["mlp_hidden"] == ViTConfig(**DINO).swiglu_hidden


# (0, False) runs in the CLIP segmenter above (40 px on a 32 px table), (0.1, True) in the
# DINOv2 one; the other two here.
@pytest.mark.parametrize("offset,antialias", [(0.0, True), (0.1, False)])
def test_vit_position_interpolation_variants(offset, antialias):
  """The torch ViT alone against Flax on a non-square input off the native grid."""
  cfg = ViTConfig(**{**DINO, "pos_interp_offset": offset, "pos_interp_antialias": antialias})
  model = VisionTransformer(cfg)
  x = np.random.default_rng(0).normal(0, 1, (2, 48, 24, 3)).astype(np.float32)
  params = random_params(model.init, x[:, :32, :32], seed=2)["params"]
  want = np.asarray(jax.jit(model.apply)({"params": params}, x)["last_hidden_state"])
  vit = torch_module.ViT(segmenter_export.vit_entry(cfg), with_pooling=False)
  state = segmenter_export.vit_tensors(flatten(params), cfg, False, "test")
  vit.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  with torch.no_grad():
    got, front = vit(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert front == 1 + cfg.num_registers
  close(got, want)


def test_sketch_tower_deep_prompts_mean_pooling_shared_tower():
  """The trained run covers separate towers, shallow prompts and CLS pooling; the rest here."""
  deep, pool, separate = True, "mean", False
  vit = ViTConfig(width=32, depth=2, num_heads=2, mlp_dim=48, patch_size=8, image_size=32,
                  mlp="quick_gelu", projection_dim=24, dense_projection=pool == "mean")
  teacher = SBIRTeacher(vit, num_prompts=3, deep_prompts=deep, separate_towers=separate,
                        pool=pool)
  ink = ink255(rasters(2, seed=16))
  params = random_params(teacher.init, np.zeros((1, 32, 32, 3), np.uint8), ink[:1],
                         seed=3)["params"]
  want = np.asarray(jax.jit(lambda p, x: teacher.apply({"params": p}, x,
                                                       method=SBIRTeacher.sketch))(params, ink))
  flat = flatten(params)
  tower = "sketch_backbone" if separate else "backbone"
  state = {f"backbone.{k}": v for k, v in segmenter_export.vit_tensors(
      {k[len(tower) + 1:]: v for k, v in flat.items() if k.startswith(tower + "/")},
      vit, True, tower).items()}
  state["prompts"] = flat["sketch_prompts"]
  mean, std = MEAN_STD["clip"]
  module = torch_module.SketchTower({"vit": segmenter_export.vit_entry(vit), "mean": mean,
                                     "std": std, "num_prompts": 3, "deep_prompts": deep,
                                     "pool": pool})
  module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                         strict=True)
  with torch.no_grad():
    close(module(torch.from_numpy(ink.astype(np.float32) / 255)), want)


# ------------------------------------------------------------------------------ the command

def test_cli_exports_a_segmenter_run(run, tmp_path, capsys):
  workdir, stage, params = run
  out = tmp_path / "export"
  rc, stdout, err = export_cli(capsys, "--checkpoint", workdir, "--out", out, "--no-onnx",
                               "--step", 2)
  assert rc == 0, err
  assert "segmenter run, checkpoint step 2" in stdout and "sketchseg_torch.py" in stdout
  assert not (out / "image_path.onnx").exists()
  image, r = photo(17), rasters(3, seed=18)
  close(import_generated(out).load(out).segment(image, list(r)),
        flax_mask(stage, params, image, r))
  conf = json.loads((out / "sketchseg.json").read_text())
  assert (conf["stage"], conf["step"]) == ("segmenter", 2)
  # An earlier export is replaced; the checkpoints/ folder names the run too.
  rc, _, err = export_cli(capsys, "--checkpoint", workdir / "checkpoints", "--out", out,
                          "--no-onnx")
  assert rc == 0, err
  assert not any(p.name.startswith(".export") for p in tmp_path.iterdir())


def teacher_workdir(workdir):
  """A teacher run's workdir (config.json + one checkpoint) without training it: the tiny
  teacher of configs/teacher_world.py:runlocal with random weights."""
  from sketchseg_jax.train.checkpoints import Checkpoints
  from sketchseg_jax.train.config_lib import save_config
  c = load_config(f"{ROOT / 'configs' / 'teacher_world.py'}:runlocal")
  c.unlock()
  c.model.vit = dict(TINY_TEACHER["vit"])
  workdir.mkdir(parents=True)
  save_config(c, workdir)
  stage = build(c)
  batch = {"image": np.zeros((1, 32, 32, 3), np.uint8),
           "sketch": np.zeros((1, 1, 32, 32), np.uint8)}
  params = random_params(stage.init, batch)
  ckpt = Checkpoints(workdir / "checkpoints", every_steps=1, async_save=False)
  ckpt.save(1, {"params": params}, force=True)
  ckpt.close()
  return workdir


def test_cli_exports_a_teacher_run(tmp_path, capsys):
  workdir = teacher_workdir(tmp_path / "teacher")
  rc, stdout, err = export_cli(capsys, "--checkpoint", workdir, "--out", tmp_path / "out")
  assert rc == 0, err
  assert "teacher run, checkpoint step 1" in stdout
  conf = json.loads((tmp_path / "out" / "teacher.json").read_text())
  assert conf["format"] == "sketchseg_jax.sbir_teacher" and conf["num_prompts"] == 4
  assert (tmp_path / "out" / "sketch_tower" / "config.json").exists()


def test_cli_errors_are_one_line(run, tmp_path, capsys):
  workdir = run[0]
  assert "does not exist" in one_line_error(capsys, "--checkpoint", tmp_path / "nope",
                                            "--out", tmp_path / "o")
  assert "no checkpoints/ folder" in one_line_error(capsys, "--checkpoint", tmp_path,
                                                    "--out", tmp_path / "o")
  assert "no checkpoint for step 7" in one_line_error(capsys, "--checkpoint", workdir,
                                                      "--out", tmp_path / "o", "--step", 7)
  assert "holds the run" in one_line_error(capsys, "--checkpoint", workdir, "--out", workdir)
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "notes.txt").write_text("mine")
  assert "not an earlier export" in one_line_error(capsys, "--checkpoint", workdir,
                                                   "--out", keep)
  assert (keep / "notes.txt").read_text() == "mine"
  other = tmp_path / "classifier"
  (other / "checkpoints").mkdir(parents=True)
  conf = json.loads((workdir / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**conf, "stage": "world_classifier"}))
  assert "is a 'world_classifier' run" in one_line_error(capsys, "--checkpoint", other,
                                                         "--out", tmp_path / "o")
  # a config.json whose fields do not fit its stage (a segmenter's, relabelled)
  (other / "config.json").write_text(json.dumps({**conf, "stage": "distill"}))
  assert "does not fit stage 'distill'" in one_line_error(capsys, "--checkpoint", other,
                                                          "--out", tmp_path / "o")
  assert not (tmp_path / "o").exists()


def test_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
  _, stage, params = run

  def broken(folder, **kwargs):
    raise RuntimeError("interrupted")

  monkeypatch.setattr(segmenter_export, "export_onnx", broken)
  with pytest.raises(RuntimeError):
    segmenter_export.export_segmenter(stage, params, tmp_path / "out")
  assert list(tmp_path.iterdir()) == []
