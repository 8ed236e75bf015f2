"""The real-scale configs (configs/*_sketchy.py): they load for every topology, train two
steps with `runlocal` and random weights on a tiny hand-made Sketchy layout, the teacher starts
from imported backbone weights, and their step estimates are sane."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from sketchseg_jax import backbones
from sketchseg_jax.convert.apply import flatten
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.vit_config import ViTConfig, from_config
from sketchseg_jax.train import mesh as mesh_lib
from sketchseg_jax.train import step_estimate
from sketchseg_jax.train.checkpoints import read_state
from sketchseg_jax.train.config_lib import load_config, read_saved_config
from sketchseg_jax.train.loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOPOLOGIES = ("auto", "gpu8", "v4-32", "v5e-64")
VARIANTS = {  # config file -> the argument variants that change the model
    "teacher_sketchy.py": ["", "variant=B/32", "deep_prompts"],
    "segmenter_clip_sketchy.py": [""],
    "segmenter_dinov2_sketchy.py": ["", "registers=False"],
    "distill_sketchy.py": [""],
}
CLASSES = ("airplane", "cat", "chair")


def spec(name, *args):
  arg = ",".join(a for a in args if a)
  return f"{CONFIGS / name}" + (f":{arg}" if arg else "")


def load(name, *args, overrides=()):
  return load_config(spec(name, *args), list(overrides))


# ------------------------------------------------------------------ a tiny Sketchy

def _svg(path, rng):
  """A few random strokes on a 640x480 canvas (the drawing tool's size varies; read from the
  file)."""
  strokes = []
  for _ in range(4):
    pts = rng.uniform([40, 40], [600, 440], (5, 2))
    strokes.append("M " + " L ".join(f"{x:.1f} {y:.1f}" for x, y in pts))
  paths = "".join(f'<path d="{d}" stroke="black" fill="none"/>' for d in strokes)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
                  f'width="640" height="480"><g>{paths}</g></svg>\n')


@pytest.fixture(scope="module")
def sketchy(tmp_path_factory):
  """ROOT/256x256/photo/tx_000000000000/<class>/<id>.jpg, ROOT/sketches/<class>/<id>-<k>.svg
  (the configs' default svg_root), ROOT/info/: 3 classes x 4 photos x 2 sketches, one photo
  of each class in the test list."""
  root = tmp_path_factory.mktemp("sketchy")
  rng = np.random.default_rng(0)
  test = []
  for c, cls in enumerate(CLASSES):
    for j in range(4):
      pid = f"n0{c}_{j}"
      photo = root / "256x256" / "photo" / "tx_000000000000" / cls / f"{pid}.jpg"
      photo.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
      for k in (1, 2):
        _svg(root / "sketches" / cls / f"{pid}-{k}.svg", rng)
      if j == 0:
        test.append(f"{cls}/{pid}.jpg")
  info = root / "info"
  info.mkdir()
  for name in ("ambiguous", "context", "error", "pose"):
    (info / f"invalid-{name}.txt").write_text("")
  (info / "testset.txt").write_text("\n".join(test) + "\n")
  return root


def data_root(root):
  return [f"--config.data.source.root={root}"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A tiny CLIP backbone of the teacher's runlocal architecture in Hugging Face format: its
  path and its flat weights."""
  path = tmp_path_factory.mktemp("hf") / "clip"
  c = load("teacher_sketchy.py", "runlocal")
  return path, _tiny_backbone_file(path, c.model.vit.to_dict())


@pytest.fixture(scope="module")
def teacher_run(sketchy, imported, tmp_path_factory):
  """teacher_sketchy.py:runlocal from imported (tiny, random) CLIP weights, two steps."""
  wd = tmp_path_factory.mktemp("teacher")
  train(load("teacher_sketchy.py", "runlocal",
             overrides=data_root(sketchy) + [f"--config.model.init_from={imported[0]}"]), wd)
  return wd


def _tiny_backbone_file(path, cfg_dict):
  """Random weights of the architecture `cfg_dict` in Hugging Face format; their flat values."""
  cfg = ViTConfig.from_dict(cfg_dict)
  params = backbones.init_params(cfg, jax.random.key(7))
  backbones.save(path, cfg, params, format="hf")
  return {k: np.asarray(v) for k, v in flatten(params).items()}


def last_params(workdir):
  state, step = read_state(Path(workdir) / "checkpoints", None)
  return jax.tree.map(np.asarray, state["params"]), step


def logged_losses(workdir):
  rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


def assert_trained_two_steps(workdir):
  losses = logged_losses(workdir)
  assert len(losses) == 2 and all(np.isfinite(losses)), losses
  assert last_params(workdir)[1] == 2


# ------------------------------------------------------------------ loading

@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_loads_for_every_topology(name, arg, topology):
  c = load(name, arg, f"topology={topology}")
  t = step_estimate.TOPOLOGIES[topology]
  assert c.hardware.topology == topology and c.hardware.chips == t["chips"]
  assert list(c.mesh) == list(t["mesh"])
  mesh = mesh_lib.make_mesh(c.mesh)  # fits the 8 test devices too
  assert c.data.batch_size % mesh.size == 0
  assert [tuple(r) for r in c.sharding.rules][-1][0] == ".*"
  if t["fsdp"]:
    assert ("backbone/", "fsdp") in [tuple(r) for r in c.sharding.rules]
    assert ("batch", ("data", "fsdp")) in [tuple(r) for r in c.sharding.logical]
  assert c.data.source.name == "sketchy" and c.data.source.tx == "tx_000000000000"
  vit = c.model.vit if c.stage != "distill" else c.teacher.model.vit
  vit = from_config(vit)
  assert vit.dtype == "bfloat16" and vit.param_dtype == "float32"
  if c.stage != "distill" and vit.patch_size in (14, 16):
    assert vit.remat == (topology == "v5e-64")
  r = step_estimate.estimate(c)
  assert r["model_flops"] > 0 and r["executed_flops"] >= r["model_flops"]
  if topology == "auto":
    assert set(r["per_accelerator"]) == set(step_estimate.PEAK_FLOPS)
  else:
    assert 1e-3 < r["step_time_s"] < 1.0, r["step_time_s"]


def test_teacher_config_is_shared_prompted_clip_on_aligned_partitioned_sketchy():
  c = load("teacher_sketchy.py")
  assert c.model.tune == "prompts_ln" and not c.model.separate_towers and c.model.num_prompts > 0
  assert from_config(c.model.vit) == from_config(dict(variant="B/16", family="clip",
                                                      dtype="bfloat16", attention="auto"))
  assert "clip-vit-base-patch16" in c.model.init_from
  assert c.data.source.svg_root and c.data.source.tx == "tx_000000000000"  # aligned pairs
  part = [a for a in c.data.augment if a["name"] == "partition"]
  assert part and part[0]["blank_photo"]
  assert load("teacher_sketchy.py", "deep_prompts").model.deep_prompts
  assert from_config(load("teacher_sketchy.py", "variant=B/32").model.vit).patch_size == 32
  # The estimate's assumed teacher is this config's default.
  d = step_estimate.DEFAULT_TEACHER["model"]
  assert from_config(d["vit"]).replace(dtype="bfloat16", attention="auto") \
      == from_config(c.model.vit)
  assert (d["num_prompts"], d["deep_prompts"], d["separate_towers"]) == (
      c.model.num_prompts, c.model.deep_prompts, c.model.separate_towers)


def test_segmenter_configs_need_a_teacher_and_evaluate_only_with_eval_data():
  for name in ("segmenter_clip_sketchy.py", "segmenter_dinov2_sketchy.py"):
    c = load(name)
    assert c.teacher.workdir == "" and c.eval.data == "" and c.eval_every_steps == 0
    c = load(name, "eval_data=/data/eval", "topology=gpu8")
    assert c.eval.data == "/data/eval" and c.eval_every_steps > 0
    assert c.checkpoint.best_metric == "eval/miou/all"


def test_backbones_match_the_published_checkpoints():
  """The configured architectures are those of the Hugging Face checkpoints they import."""
  clip = from_config(load("segmenter_clip_sketchy.py").model.vit)
  assert (clip.width, clip.depth, clip.num_heads, clip.mlp_dim, clip.patch_size, clip.image_size,
          clip.projection_dim, clip.mlp, clip.layer_norm_eps) == (
              768, 12, 12, 3072, 16, 224, 512, "quick_gelu", 1e-5)
  for registers in (True, False):
    c = load("segmenter_dinov2_sketchy.py", f"registers={registers}")
    d = from_config(c.model.vit)
    assert (d.width, d.depth, d.num_heads, d.mlp_dim, d.patch_size, d.image_size, d.mlp,
            d.layer_norm_eps) == (768, 12, 12, 3072, 14, 518, "gelu", 1e-6)
    assert d.num_registers == (4 if registers else 0)
    assert d.pos_interp_antialias == registers  # as transformers interpolates each
    assert ("registers" in c.model.init_from) == registers
    assert c.data.image_size % d.patch_size == 0


def test_bad_arguments_are_named():
  with pytest.raises(UserError, match="topology"):
    load("teacher_sketchy.py", "topology=v3-8")
  with pytest.raises(UserError, match="variant"):
    load("teacher_sketchy.py", "variant=L/14")


# ------------------------------------------------------------------ two steps each

def test_teacher_runlocal_trains_two_steps(teacher_run):
  assert_trained_two_steps(teacher_run)
  saved = json.loads((teacher_run / "config.json").read_text())
  assert saved["data"]["source"]["name"] == "sketchy"


def test_teacher_starts_from_imported_weights(teacher_run, imported):
  params, _ = last_params(teacher_run)
  saved = imported[1]
  got = flatten(params["backbone"])
  assert set(got) == set(saved)
  tuned = [k for k in got if "layer_norm" in k or "layernorm" in k]
  frozen = [k for k in got if k not in tuned]
  assert tuned and frozen
  for k in frozen:  # prompts_ln: everything but the LayerNorms stays as imported
    np.testing.assert_array_equal(got[k], saved[k], err_msg=k)
  assert any(not np.array_equal(got[k], saved[k]) for k in tuned)
  assert "photo_prompts" in params and "sketch_prompts" in params


def test_teacher_evaluates_on_the_sketchy_test_split(teacher_run):
  from sketchseg_jax.commands.eval import evaluate_workdir
  from sketchseg_jax.train.config_lib import read_saved_config
  report, path, _ = evaluate_workdir(teacher_run, read_saved_config(teacher_run))
  # 3 test photos with 2 sketches each: one gallery entry per photo.
  assert report["full"]["gallery_size"] == 3 and report["full"]["num_queries"] == 6
  assert set(report) >= {"full", "partial", "untrained"} and path.exists()


def test_teacher_init_from_checks_the_architecture(imported, tmp_path):
  from sketchseg_jax.backbones import load_weights as read_backbone
  vit = from_config(load("teacher_sketchy.py", "runlocal").model.vit)
  assert set(read_backbone(str(imported[0]), vit)) == set(imported[1])
  with pytest.raises(UserError, match="num_heads 2"):
    read_backbone(str(imported[0]), vit.replace(num_heads=4))
  with pytest.raises(UserError, match="no such file"):
    read_backbone(str(tmp_path / "missing"), vit)


def _eval_folder(tmp_path):
  from sketchseg_jax.data.synth import synth
  out = tmp_path / "evalfolder"
  synth(out, split="val", num=4, format="folder", size=32)
  return out


def test_segmenter_clip_runlocal_trains_and_evaluates_on_eval_data(sketchy, teacher_run, tmp_path):
  from sketchseg_jax.commands.eval import evaluate_workdir
  folder = _eval_folder(tmp_path)
  wd = tmp_path / "seg"
  c = load("segmenter_clip_sketchy.py", "runlocal", f"eval_data={folder}",
           overrides=data_root(sketchy) + [f"--config.teacher.workdir={teacher_run}",
                                           "--config.eval.styles=[]"])
  last = train(c, wd)
  assert_trained_two_steps(wd)
  assert "eval/miou/object" in last  # the in-training evaluation ran on the folder
  report, path, _ = evaluate_workdir(wd, read_saved_config(wd))  # no --data: eval.data
  assert report["data"] == str(folder) and report["num_queries"] == 4
  assert path.exists()


@pytest.mark.parametrize("registers", [True, False])
def test_segmenter_dinov2_runlocal_trains_two_steps(sketchy, teacher_run, tmp_path, registers):
  wd = tmp_path / "seg"
  overrides = data_root(sketchy) + [f"--config.teacher.workdir={teacher_run}"]
  if registers:
    # The v5e mesh on the 8 test devices (data 1 x fsdp 8: backbone weights split), remat,
    # bf16, and imported (tiny, random) DINOv2 weights with registers.
    topology = "v5e-64"
    c = load("segmenter_dinov2_sketchy.py", "runlocal")
    saved = _tiny_backbone_file(tmp_path / "hf_dino", c.model.vit.to_dict())
    overrides += [f"--config.model.init_from={tmp_path / 'hf_dino'}",
                  "--config.model.vit.dtype=bfloat16"]
  else:
    topology = "gpu8"  # data 8, replicated weights
  c = load("segmenter_dinov2_sketchy.py", "runlocal", f"registers={registers}",
           f"topology={topology}", overrides=overrides)
  assert c.model.vit.remat == registers
  train(c, wd)
  assert_trained_two_steps(wd)
  params, _ = last_params(wd)
  backbone = flatten(params["segmenter"]["backbone"])
  assert ("register_tokens" in backbone) == registers
  if registers:  # the frozen early block is still the imported one
    for k, v in saved.items():
      if k.startswith("encoder/layers_0/"):
        np.testing.assert_array_equal(backbone[k], v, err_msg=k)


def test_distill_runlocal_trains_two_steps(sketchy, teacher_run, tmp_path):
  train(load("distill_sketchy.py", "runlocal",
             overrides=data_root(sketchy) + [f"--config.teacher.workdir={teacher_run}"]), tmp_path)
  assert_trained_two_steps(tmp_path)


# ------------------------------------------------------------------ step estimate

def test_step_estimate_counts_the_segmenter_step():
  c = load("segmenter_clip_sketchy.py", "topology=v4-32")
  r = step_estimate.estimate(c, utilization=0.5)
  fwd = step_estimate.forward_flops(from_config(c.model.vit), 224, 4)
  parts = {p["name"].split(" (")[0]: p for p in r["parts"]}
  b = c.data.batch_size
  assert parts["segmenter backbone"]["model_flops"] == pytest.approx(3 * b * fwd)
  assert parts["teacher photo tower"]["model_flops"] == pytest.approx(2 * 2 * b * fwd)
  assert parts["sketch tower"]["model_flops"] == pytest.approx(b * fwd)
  # ViT-B/16 at 224 is about 35 GFLOPs forward; one example ~ 8 forwards.
  assert 30e9 < fwd < 40e9
  assert r["step_time_s"] == pytest.approx(r["executed_flops"] / (16 * 275e12 * 0.5))
  on_v5e = step_estimate.estimate(load("segmenter_clip_sketchy.py", "topology=v5e-64"))
  assert on_v5e["executed_flops"] > on_v5e["model_flops"]  # remat recomputes forwards
  # Against a distilled tower (a B/32 student): its cost replaces the teacher photo tower's.
  distilled = dict(step_estimate.DEFAULT_TEACHER, student=dict(vit=dict(variant="B/32")))
  r32 = step_estimate.estimate(c, teacher=distilled)
  names = [p["name"] for p in r32["parts"]]
  assert any(n.startswith("distilled photo tower") for n in names)
  assert r32["model_flops"] < 0.7 * r["model_flops"]


def test_step_estimate_main_prints_times(capsys, teacher_run):
  assert step_estimate.main(["--config", spec("segmenter_clip_sketchy.py", "topology=v5e-64")]) == 0
  out = capsys.readouterr().out
  assert "64 x v5e" in out and "ms / step" in out and "teacher photo tower" in out
  assert step_estimate.main(["--config", spec("segmenter_dinov2_sketchy.py"),
                             "--accelerator", "h100", "--chips", "1"]) == 0
  assert "1 x h100" in capsys.readouterr().out
  # Against a real (tiny) teacher run: its own architecture.
  assert step_estimate.main(["--config", spec("segmenter_clip_sketchy.py", "runlocal"),
                             "--teacher", str(teacher_run), "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["teacher"] == "given" and r["parts"][0]["image_size"] == 32
  assert step_estimate.main(["--config", spec("segmenter_clip_sketchy.py", "runlocal"), "--json",
                             f"--config.teacher.workdir={teacher_run}"]) == 0
  assert json.loads(capsys.readouterr().out)["teacher"] == str(teacher_run)
  with pytest.raises(SystemExit):
    step_estimate.main(["--config", spec("teacher_sketchy.py"), "--nope"])
