"""The distilled photo tower: loss terms, masked and partial views, the frozen teacher,
learning on a fixed batch, the evaluation report, grafting the teacher's weights, and a run
of the engine that loads a teacher trained by the engine."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sketchseg_jax import backbones
from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.errors import UserError
from sketchseg_jax.param_tree import hoist_grafted, plain
from sketchseg_jax.stages import distill as distill_lib
from sketchseg_jax.stages.teacher import TeacherStage
from sketchseg_jax.train import loop, optim
from sketchseg_jax.train.checkpoints import read_state
from sketchseg_jax.train.config_lib import load_config

CONFIGS = Path(__file__).parent.parent / "configs"
DISTILL = str(CONFIGS / "distill_world.py")
TEACHER = str(CONFIGS / "teacher_world.py")
FAST = ["--config.log_every_steps=1", "--config.eval_every_steps=0", "--config.tensorboard=False",
        "--config.checkpoint.async_save=False"]
TINY_TEACHER = ["--config.model.vit.width=32", "--config.model.vit.depth=1",
                "--config.model.vit.mlp_dim=64", "--config.model.vit.projection_dim=24",
                "--config.model.vit.image_size=16",
                "--config.model.num_prompts=2", "--config.data.source.size=16",
                "--config.data.image_size=16", "--config.data.raster_size=16"]
TINY_STUDENT = ["--config.model.vit.width=16", "--config.model.vit.depth=1",
                "--config.model.vit.mlp_dim=32", "--config.model.vit.image_size=16",
                "--config.model.vit.patch_size=8", "--config.model.vit.projection_dim=16",
                "--config.model.init_from=", "--config.model.num_prompts=0",
                "--config.data.source.size=16", "--config.data.batch_size=8",
                "--config.eval.num=12", "--config.eval.batch_size=12"]


def distill_config(*overrides):
  return load_config(f"{DISTILL}:runlocal", list(FAST) + TINY_STUDENT + list(overrides))


def random_teacher_config(*overrides):
  teacher = [o.replace("--config.model.", "--config.teacher.model.") for o in TINY_TEACHER
             if o.startswith("--config.model.")]
  return distill_config("--config.teacher.random_init=True", *teacher, *overrides)


def flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unit(x):
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_loss_terms_on_known_embeddings():
  rng = np.random.default_rng(0)
  s = unit(rng.normal(size=(5, 6)))
  assert abs(float(distill_lib.cosine_loss(s, s))) < 1e-6
  # A rotation changes every embedding but no similarity: cosine term > 0, relational 0.
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  rotated = s @ jnp.asarray(q, jnp.float32)
  assert float(distill_lib.cosine_loss(s, rotated)) > 0.1
  assert abs(float(distill_lib.relational_loss(s, rotated))) < 1e-10
  a = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  b = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(distill_lib.cosine_loss(a, b), 0.5, rtol=1e-6)
  # similarity matrices [[1,0],[0,1]] vs [[1,1],[1,1]]: two of four entries differ by 1
  np.testing.assert_allclose(distill_lib.relational_loss(a, b), 0.5, rtol=1e-6)
  # InfoNCE of a against itself at tau 1: every row -log(e / (e + 1))
  np.testing.assert_allclose(distill_lib.contrastive_loss(a, a, 1.0), np.log1p(np.e) - 1.0,
                             rtol=1e-6)
  assert float(distill_lib.contrastive_loss(s, s, 0.1)) < float(
      distill_lib.contrastive_loss(s, s[::-1], 0.1))


def test_retrieval_kl_is_zero_only_when_the_student_ranks_as_the_teacher():
  rng = np.random.default_rng(1)
  q, t = unit(rng.normal(size=(4, 6))), unit(rng.normal(size=(7, 6)))
  assert abs(float(distill_lib.retrieval_kl(q, t, t, 0.1))) < 1e-6
  assert float(distill_lib.retrieval_kl(q, t[::-1], t, 0.1)) > 0.1
  # One sketch, two photos: teacher softmax (1/2, 1/2), student (e/(e+1), 1/(e+1)) at tau 1.
  one, photos = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[0.0, 1.0], [0.0, -1.0]])
  student = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  p = np.e / (np.e + 1)
  want = 0.5 * np.log(0.5 / p) + 0.5 * np.log(0.5 / (1 - p))
  np.testing.assert_allclose(distill_lib.retrieval_kl(one, student, photos, 1.0), want,
                             rtol=1e-5)


def test_retrieval_term_trains_the_student_only(tiny):
  stage, batch, params, _, _ = tiny
  cfg = random_teacher_config("--config.distill.retrieval=1.0")
  with_term = distill_lib.DistillStage(cfg)
  (loss, aux), g = jax.jit(jax.value_and_grad(with_term.loss, has_aux=True))(
      params, batch, jax.random.key(0))
  base, _ = jax.jit(stage.loss)(params, batch, jax.random.key(0))
  assert np.isfinite(float(aux["retrieval"])) and float(aux["retrieval"]) >= 0.0
  np.testing.assert_allclose(float(loss), float(base) + float(aux["retrieval"]), rtol=1e-5)
  assert any(np.abs(v).max() > 0 for v in flat(g["student"]).values())


def test_views_keep_shape_and_blend_only_towards_the_fill():
  rng = np.random.default_rng(1)
  photos = rng.integers(0, 256, (6, 24, 16, 3)).astype(np.uint8)
  key = jax.random.key(3)
  x = np.asarray(distill_lib.make_views(photos, key, ["clean", "masked", "partial"], fill="mean"))
  assert x.shape == (18, 24, 16, 3) and x.dtype == np.float32
  clean, masked, partial = x[:6], x[6:12], x[12:]
  np.testing.assert_array_equal(clean, photos.astype(np.float32))
  fill = photos.astype(np.float32).mean(axis=(1, 2), keepdims=True)
  lo, hi = np.minimum(clean, fill), np.maximum(clean, fill)
  assert np.all(masked >= lo - 1e-3) and np.all(masked <= hi + 1e-3)  # m * photo + (1 - m) * fill
  assert not np.allclose(masked, clean) and not np.allclose(masked, np.broadcast_to(fill, masked.shape))
  is_photo = np.all(np.isclose(partial, clean), axis=-1)
  is_fill = np.all(np.isclose(partial, np.broadcast_to(fill, partial.shape)), axis=-1)
  assert np.all(is_photo | is_fill)
  for i in range(6):  # the kept part is one box of 15-60% of the photo
    ys, xs = np.nonzero(~is_fill[i])
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert len(ys) == box and 0.08 <= box / (24 * 16) <= 0.7
  again = distill_lib.make_views(photos, key, ["masked", "partial"], fill="mean")
  np.testing.assert_array_equal(again, x[6:])
  other = distill_lib.make_views(photos, jax.random.key(4), ["masked"], fill=128)
  assert not np.allclose(other, masked)
  grey = np.asarray(distill_lib.make_views(photos, key, ["partial"], fill="128"))
  assert np.all(np.isclose(grey, clean) | np.isclose(grey, 128.0))
  with pytest.raises(UserError, match="unknown distill view"):
    distill_lib.make_views(photos, key, ["blurred"])


def test_soft_masks_are_soft_smooth_and_vary_in_coverage():
  m = np.asarray(distill_lib.soft_masks(jax.random.key(0), 64, 32, 32, grid=4,
                                        sharpness=(2.0, 20.0)))[..., 0]
  assert m.shape == (64, 32, 32) and np.all((m >= 0) & (m <= 1))
  assert np.mean((m > 0.05) & (m < 0.95)) > 0.05  # soft edges, not a hard cut
  coverage = m.mean(axis=(1, 2))
  assert coverage.min() < 0.3 and coverage.max() > 0.7
  # low-frequency: neighbouring pixels differ far less than random pixels do
  step = np.abs(np.diff(m, axis=2)).mean()
  shuffled = np.abs(m - m[:, ::-1, ::-1]).mean()
  assert step < 0.25 * shuffled


def test_config_errors_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="teacher.workdir is empty"):
    distill_lib.DistillStage(distill_config())
  with pytest.raises(UserError, match="no checkpoints"):
    distill_lib.DistillStage(distill_config(f"--config.teacher.workdir={tmp_path}"))
  with pytest.raises(UserError, match="distill.views"):
    distill_lib.DistillStage(random_teacher_config("--config.distill.views=['clean','noisy']"))
  with pytest.raises(UserError, match="distill.fill"):
    distill_lib.DistillStage(random_teacher_config("--config.distill.fill=blurred"))


@pytest.fixture(scope="module")
def tiny():
  """A random-teacher stage, a fixed batch, initial parameters and a jitted optimizer step."""
  cfg = random_teacher_config("--config.optimizer.warmup_steps=0", "--config.optimizer.lr=3e-3",
                              "--config.optimizer.schedule=constant")
  stage = distill_lib.DistillStage(cfg)
  batch = next(iter(build_dataset(stage.data_config("train"), "train", process_index=0,
                                  process_count=1)))
  params = plain(jax.jit(stage.init)(jax.random.key(0), batch))
  tx, _ = optim.build(cfg.optimizer, 100, params, stage.frozen())

  @jax.jit
  def step(params, opt, key):
    (loss, aux), g = jax.value_and_grad(stage.loss, has_aux=True)(params, batch, key)
    up, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, up), opt, loss, aux
  return stage, batch, params, tx, step


def test_teacher_subtree_stays_frozen_and_the_student_learns(tiny):
  stage, batch, params, tx, step = tiny
  assert stage.frozen() == ["^teacher/"]
  assert set(params) == {"student", "teacher"}
  p, opt = params, tx.init(params)
  losses = []
  for i in range(40):
    p, opt, loss, aux = step(p, opt, jax.random.key(0))  # one key: a fixed set of views
    losses.append(float(loss))
  before, after = flat(params["teacher"]), flat(p["teacher"])
  assert before.keys() == after.keys()
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)
  moved = [k for k, v in flat(p["student"]).items()
           if not np.array_equal(v, flat(params["student"])[k])]
  assert len(moved) == len(flat(params["student"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert set(aux) >= {"cosine", "relational", "match@1", "cosine/clean", "cosine/masked",
                      "cosine/partial"}


def test_student_embeds_into_the_teacher_space(tiny):
  stage, batch, params, _, _ = tiny
  s = jax.jit(stage.student.apply)({"params": params["student"]}, batch["image"])
  t = jax.eval_shape(lambda p, x: stage.teacher.apply({"params": p}, x,
                                                      method=distill_lib.SBIRTeacher.photo),
                     params["teacher"], batch["image"])
  assert s.shape == t.shape == (8, 24)
  np.testing.assert_allclose(np.linalg.norm(s, axis=-1), 1.0, atol=1e-4)


def test_eval_report_structure(tiny):
  stage, _, params, _, _ = tiny
  report = stage.eval_report(params)
  assert set(report) == {"full", "partial", "heldout", "teacher", "cost"}
  for name in ("full", "partial", "heldout"):
    for m in (report[name], report["teacher"][name]):
      assert 0.0 <= m["acc@1"] <= m["acc@5"] <= m["acc@10"] <= 1.0
      assert 0.0 <= m["mAP@all"] <= 1.0 and m["gallery_size"] == 12
    t5 = report["teacher"][name]["acc@5"]
    if t5 > 0:
      np.testing.assert_allclose(report[name]["keeps"], report[name]["acc@5"] / t5)
      low, high = report[name]["keeps_ci90"]
      assert low <= report[name]["keeps"] <= high
    hits = report[name]["top5_hits"]
    assert hits["both"] + hits["teacher_only"] == round(t5 * 12)
    assert hits["both"] + hits["student_only"] == round(report[name]["acc@5"] * 12)
    assert -1.0 <= report[name]["cosine_to_teacher"] <= 1.0
    assert 0.0 <= report[name]["match@1"] <= 1.0
  # the teacher's own pair gives the same numbers as the teacher stage's evaluation
  teacher_stage = TeacherStage(stage.teacher_config)
  own = teacher_stage._retrieval(params["teacher"], teacher_stage._eval_sets(None))
  for name in ("full", "partial"):
    assert own[name]["acc@5"] == report["teacher"][name]["acc@5"]
  assert set(stage.evaluate(params, 0)) >= {"acc@5", "keeps", "teacher_acc@5"}
  cost = report["cost"]
  assert 0 < cost["student_gflops"] < cost["teacher_gflops"]
  np.testing.assert_allclose(cost["ratio"], cost["student_gflops"] / cost["teacher_gflops"])


def test_init_from_teacher_copies_what_fits():
  assert distill_lib.teacher_layer_map(2, 4) == [0, 3]
  assert distill_lib.teacher_layer_map(3, 5) == [0, 2, 4]
  assert distill_lib.teacher_layer_map(1, 4) == [0]
  cfg = random_teacher_config("--config.model.vit.width=32", "--config.model.vit.mlp_dim=64",
                              "--config.teacher.model.vit.depth=2",
                              "--config.model.init_from=teacher")
  stage = distill_lib.DistillStage(cfg)
  example = {"image": np.zeros((1, 16, 16, 3), np.uint8),
             "sketch": np.zeros((1, 1, 16, 16), np.uint8)}
  p = plain(jax.jit(stage.init)(jax.random.key(0), example))
  s, t = flat(p["student"]), flat(p["teacher"])
  # student depth 1 from teacher layer 0; embeddings and norms copied; the projection differs
  for k in ("encoder/layers_0/attn/q_proj/kernel", "patch_embedding/kernel",
            "position_embedding", "post_layernorm/scale"):
    np.testing.assert_array_equal(s[f"backbone/{k}"], t[f"backbone/{k}"], err_msg=k)
  narrow = random_teacher_config("--config.model.init_from=teacher")
  with pytest.raises(UserError, match="no teacher weight fits"):
    jax.eval_shape(distill_lib.DistillStage(narrow).init, jax.random.key(0), example)


def test_init_from_teacher_with_a_larger_patch_is_the_teacher_on_a_shrunk_photo():
  """Patch 16 against the teacher's 8: the student starts as the teacher (prompts and
  projection included) run on the photo box-averaged to half size, with its position grid
  resized; a quarter of the tokens."""
  same = ["--config.model.vit.width=32", "--config.model.vit.mlp_dim=64",
          "--config.model.vit.projection_dim=24", "--config.model.num_prompts=2"]
  size = ["--config.model.vit.image_size=32", "--config.teacher.model.vit.image_size=32",
          "--config.data.source.size=32", "--config.data.image_size=32"]
  cfg = random_teacher_config(*same, *size, "--config.model.vit.patch_size=16",
                              "--config.model.init_from=teacher")
  stage = distill_lib.DistillStage(cfg)
  rng = np.random.default_rng(0)
  photos = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
  example = {"image": photos[:1], "sketch": np.zeros((1, 1, 32, 32), np.uint8)}
  p = plain(jax.jit(stage.init)(jax.random.key(0), example))
  s, t = flat(p["student"]), flat(p["teacher"])
  assert s["backbone/patch_embedding/kernel"].shape == (16, 16, 3, 32)
  assert s["backbone/position_embedding"].shape == (1 + 2 * 2, 32)
  np.testing.assert_array_equal(s["prompts"], t["photo_prompts"])
  got = stage.student.apply({"params": p["student"]}, photos)
  half = photos.reshape(3, 16, 2, 16, 2, 3).mean(axis=(2, 4))
  t = stage.teacher
  shrunk = distill_lib.SBIRTeacher(t.vit.replace(image_size=16), t.num_prompts, t.deep_prompts,
                                   t.separate_towers)
  params = jax.tree_util.tree_map(np.asarray, p["teacher"])
  params["backbone"]["position_embedding"] = s["backbone/position_embedding"]
  want = shrunk.apply({"params": params}, half, method=distill_lib.SBIRTeacher.photo)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_init_from_backbone_weights(tmp_path):
  stage = distill_lib.DistillStage(random_teacher_config())
  weights = backbones.init_params(stage.student.vit, jax.random.key(7))
  backbones.save(tmp_path / "student", stage.student.vit, weights)
  cfg = random_teacher_config(f"--config.model.init_from={tmp_path / 'student'}")
  example = {"image": np.zeros((1, 16, 16, 3), np.uint8),
             "sketch": np.zeros((1, 1, 16, 16), np.uint8)}
  p = plain(jax.jit(distill_lib.DistillStage(cfg).init)(jax.random.key(0), example))
  got, want = flat(p["student"]["backbone"]), flat(weights)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  wider = stage.student.vit.replace(width=32, mlp_dim=64)
  backbones.save(tmp_path / "wider", wider, backbones.init_params(wider, jax.random.key(7)))
  with pytest.raises(UserError, match="does not fit the model|holds another backbone"):
    jax.eval_shape(distill_lib.DistillStage(random_teacher_config(
        f"--config.model.init_from={tmp_path / 'wider'}")).init, jax.random.key(0), example)


def test_engine_distils_from_a_trained_teacher_workdir(tmp_path, monkeypatch):
  teacher_dir, distill_dir = tmp_path / "teacher", tmp_path / "distill"
  one_device = "--config.mesh=[('data', 1)]"  # compiles faster; sharding is the engine's test
  teacher_cfg = load_config(f"{TEACHER}:runlocal", FAST + TINY_TEACHER + [
      "--config.total_steps=2", "--config.checkpoint.every_steps=2",
      "--config.data.batch_size=8", one_device])
  loop.train(teacher_cfg, teacher_dir)
  teacher_state, teacher_step = read_state(teacher_dir / "checkpoints")
  assert teacher_step == 2
  cfg = distill_config(f"--config.teacher.workdir={teacher_dir}", "--config.total_steps=2",
                       "--config.checkpoint.every_steps=2", one_device)
  hoisted = []

  def recording(fn, *args):
    g, values = hoist_grafted(fn, *args)
    hoisted.extend(values)
    return g, values
  monkeypatch.setattr(loop, "hoist_grafted", recording)
  last = loop.train(cfg, distill_dir)
  # The teacher's weights went into the jitted init as an argument, not as constants.
  assert len(hoisted) == len(flat(teacher_state["params"]))
  assert np.isfinite(last["loss"]) and "relational" in last and "cosine/partial" in last
  state, step = read_state(distill_dir / "checkpoints")
  assert step == 2
  # the teacher came in whole from its run and did not move
  want, got = flat(teacher_state["params"]), flat(state["params"]["teacher"])
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(want[k], got[k], err_msg=k)
  saved = json.loads((distill_dir / "config.json").read_text())
  assert saved["stage"] == "distill" and saved["teacher"]["workdir"] == str(teacher_dir)
  # data sizes of 0 follow the teacher run's, the eval block is the distill config's
  stage = distill_lib.DistillStage(cfg)
  assert stage.data_config("train")["image_size"] == 16
  assert stage.teacher_config.eval.num == 12 and stage.teacher_config.model.vit.width == 32
  # The run keeps its teacher's config, so it needs only its own workdir from now on: for
  # evaluation, export, and a segmenter trained against it.
  assert saved["teacher"]["run"]["model"]["vit"]["width"] == 32
  teacher_dir.rename(tmp_path / "moved")
  from sketchseg_jax.stages import towers
  from sketchseg_jax.train.config_lib import read_saved_config
  alone = distill_lib.DistillStage(read_saved_config(distill_dir))
  assert alone.teacher_config.model.vit.width == 32 and alone.data_config("train")["image_size"] == 16
  assert alone.teacher_config.eval.num == 12
  resolved = towers.resolve(ml_collections.ConfigDict({"workdir": str(distill_dir)}))
  assert resolved["kind"] == "distill" and resolved["model"]["vit"]["width"] == 32
  assert resolved["data"]["image_size"] == 16
  # `sketchseg export` hands PyTorch users the pair the run is evaluated as: the teacher's
  # sketch tower and the distilled photo tower (its head folded into the projection).
  pytest.importorskip("transformers")
  from sketchseg_jax.convert.teacher_export import load_exported_teacher
  from sketchseg_jax.export import export_checkpoint
  result = export_checkpoint(distill_dir, tmp_path / "export")
  assert result["stage"] == "distill" and result["step"] == 2
  ref = load_exported_teacher(tmp_path / "export")
  photos = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  ink = np.random.default_rng(1).integers(0, 2, (3, 16, 16), dtype=np.uint8) * 255
  params = state["params"]
  want_p = stage.student.apply({"params": params["student"]}, photos)
  want_s = stage.teacher.apply({"params": params["teacher"]}, ink,
                               method=distill_lib.SBIRTeacher.sketch)
  np.testing.assert_allclose(ref.photo(photos), np.asarray(want_p), atol=1e-4, rtol=0)
  np.testing.assert_allclose(ref.sketch(ink), np.asarray(want_s), atol=1e-4, rtol=0)
