"""The SBIR teacher: visual prompts in the backbone, losses, freezing, input gradients,
learning on a fixed batch, and the evaluation report."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchseg_jax import backbones
from sketchseg_jax.models.sbir import SBIRTeacher, trainable_patterns
from sketchseg_jax.models.vit_config import ViTConfig
from sketchseg_jax.stages import teacher as teacher_lib
from sketchseg_jax.train import optim
from sketchseg_jax.train.config_lib import load_config

CONFIG = str(Path(__file__).parent.parent / "configs" / "teacher_world.py")
VIT = ViTConfig(family="clip", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
                image_size=16, mlp="gelu", projection_dim=16)


def unboxed(tree):
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


@pytest.fixture(scope="module")
def vit_params():
  return backbones.init_params(VIT, jax.random.key(0))


def test_prompts_are_inserted_after_cls_and_left_out_of_patch_tokens(vit_params):
  module = backbones.build(VIT)
  x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
  prompts = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
  plain = module.apply({"params": vit_params}, x)
  out = module.apply({"params": vit_params}, x, prompts=prompts)
  assert out["last_hidden_state"].shape == (2, 1 + 3 + 6, 32)
  assert out["patch_tokens"].shape == plain["patch_tokens"].shape == (2, 2, 3, 32)
  assert not np.allclose(out["pooled"], plain["pooled"])
  deep = np.random.default_rng(2).normal(size=(2, 3, 32)).astype(np.float32)
  loop = module.apply({"params": vit_params}, x, prompts=deep, deep=True)
  scan_cfg = VIT.replace(scan_layers=True)
  from sketchseg_jax.convert.apply import flatten, stack_layers, unflatten
  stacked = unflatten(stack_layers(flatten(vit_params), scan_cfg))
  scan = backbones.build(scan_cfg).apply({"params": stacked}, x, prompts=deep, deep=True)
  np.testing.assert_allclose(loop["pooled"], scan["pooled"], atol=1e-5)
  # deep prompts differ from shallow ones once layer 1 replaces its prompt slots
  shallow = module.apply({"params": vit_params}, x, prompts=deep[0])
  assert not np.allclose(loop["pooled"], shallow["pooled"])
  with pytest.raises(Exception, match="do not fit this backbone"):
    module.apply({"params": vit_params}, x, prompts=np.zeros((3, 31), np.float32))


def test_triplet_and_infonce_on_known_embeddings():
  s = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  p = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  # d(s_i, p_j) = 1 - s_i.p_j; positives 0, 0, 1; hardest negatives 0 (s0~p?), ...
  d = 1.0 - np.asarray(s @ p.T)
  hard = [min(d[i, j] for j in range(3) if j != i) for i in range(3)]
  expect = np.mean([max(0.0, 0.2 + d[i, i] - hard[i]) for i in range(3)])
  got = teacher_lib.triplet_loss(s, p, 0.2, jax.random.key(0), "hard")
  np.testing.assert_allclose(got, expect, rtol=1e-6)
  labels = jnp.asarray([0, 1, 0])
  same = teacher_lib.triplet_loss(s, p, 0.2, jax.random.key(0), "hard", labels, True)
  # row 0 and 2 must take their negative from their own category (each other); row 1 has none
  exp_same = np.mean([max(0, 0.2 + d[0, 0] - d[0, 2]), max(0, 0.2 + d[1, 1] - hard[1]),
                      max(0, 0.2 + d[2, 2] - d[2, 0])])
  np.testing.assert_allclose(same, exp_same, rtol=1e-6)
  rnd = teacher_lib.triplet_loss(s, p, 0.2, jax.random.key(3), "random")
  assert 0.0 <= float(rnd) <= 0.2 + 2.0
  logits = np.asarray(s @ p.T) / 0.5
  ce = lambda l: np.mean([np.log(np.exp(l[i]).sum()) - l[i, i] for i in range(3)])
  np.testing.assert_allclose(teacher_lib.infonce_loss(s, p, 0.5),
                             0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)


def test_shuffle_tiles_moves_whole_quarters():
  x = np.arange(2 * 4 * 4).reshape(2, 4, 4).astype(np.float32)
  ident = teacher_lib.shuffle_tiles(jnp.asarray(x), jnp.arange(4))
  np.testing.assert_array_equal(ident, x)
  swapped = np.asarray(teacher_lib.shuffle_tiles(jnp.asarray(x), jnp.asarray([3, 2, 1, 0])))
  np.testing.assert_array_equal(swapped[:, :2, :2], x[:, 2:, 2:])
  np.testing.assert_array_equal(swapped[:, 2:, :2], x[:, :2, 2:])
  a, b = teacher_lib._derangement_pair(jax.random.key(0))
  assert not np.array_equal(a, b) and sorted(np.asarray(a)) == [0, 1, 2, 3]


def test_prompt_and_layernorm_tuning_freezes_the_rest():
  model = SBIRTeacher(VIT, num_prompts=2)
  params = unboxed(jax.eval_shape(model.init, jax.random.key(0),
                                  jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16))))["params"]
  mask = optim.frozen_mask(params, trainable_patterns("prompts_ln", False))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat["photo_prompts"] and flat["sketch_prompts"]
  assert flat["backbone/encoder/layers_0/layer_norm1/scale"]
  assert flat["backbone/post_layernorm/bias"] and flat["backbone/pre_layernorm/scale"]
  assert not flat["backbone/encoder/layers_0/attn/q_proj/kernel"]
  assert not flat["backbone/patch_embedding/kernel"] and not flat["backbone/projection/kernel"]
  assert all(optim.frozen_mask(params, trainable_patterns("full", False)).values()
             if isinstance(params, dict) else [True])


def test_photo_tower_input_gradients_match_finite_differences():
  model = SBIRTeacher(VIT, num_prompts=2, deep_prompts=True)
  rng = np.random.default_rng(0)
  photos = rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
  params = unboxed(model.init(jax.random.key(1), photos, np.zeros((2, 16, 16), np.float32)))["params"]
  w = jnp.asarray(rng.normal(size=(2, 16)).astype(np.float32))
  f = lambda x: jnp.sum(model.apply({"params": params}, x, method=SBIRTeacher.photo) * w)
  g = jax.grad(f)(jnp.asarray(photos))
  for seed in range(3):
    v = np.random.default_rng(10 + seed).normal(size=photos.shape).astype(np.float32)
    h = 2.0
    numeric = (f(photos + h * v) - f(photos - h * v)) / (2 * h)
    analytic = float(jnp.sum(g * v))
    assert abs(numeric - analytic) <= 2e-2 * max(abs(analytic), 1e-3), (numeric, analytic)


@pytest.fixture(scope="module")
def tiny_stage():
  cfg = load_config(f"{CONFIG}:runlocal", ["--config.eval.num=24", "--config.eval.batch_size=12",
                                           "--config.data.batch_size=8"])
  return teacher_lib.TeacherStage(cfg)


def test_loss_falls_on_a_fixed_batch(tiny_stage):
  from sketchseg_jax.data.pipeline import build_dataset
  batch = next(iter(build_dataset(tiny_stage.data_config("train"), "train", process_index=0,
                                  process_count=1)))
  params = unboxed(jax.jit(tiny_stage.init)(jax.random.key(0), batch))
  tx = __import__("optax").adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    (loss, aux), g = jax.value_and_grad(tiny_stage.loss, has_aux=True)(params, batch, key)
    up, opt = tx.update(g, opt, params)
    return __import__("optax").apply_updates(params, up), opt, loss, aux
  losses = []
  for i in range(40):
    params, opt, loss, aux = step(params, opt, jax.random.key(i))
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(aux["batch_acc@1"]) >= 0.5  # chance is 1/8


def test_eval_report_has_every_set_for_trained_and_untrained(tiny_stage):
  example = {"image": np.zeros((1, 32, 32, 3), np.uint8), "sketch": np.zeros((1, 1, 32, 32), np.uint8)}
  params = unboxed(jax.jit(tiny_stage.init)(jax.random.key(5), example))
  report = tiny_stage.eval_report(params)
  for key in ("full", "partial", "heldout"):
    for which in (report, report["untrained"]):
      m = which[key]
      assert 0.0 <= m["acc@1"] <= m["acc@5"] <= m["acc@10"] <= 1.0
      assert 0.0 <= m["mAP@all"] <= 1.0 and m["gallery_size"] == 24


def test_several_galleries_score_each_gallery_alone(tiny_stage):
  from sketchseg_jax.evaluate.retrieval import retrieval_metrics
  example = {"image": np.zeros((1, 32, 32, 3), np.uint8), "sketch": np.zeros((1, 1, 32, 32), np.uint8)}
  params = unboxed(jax.jit(tiny_stage.init)(jax.random.key(5), example))
  source = tiny_stage._eval_sets(None)["full"][0].source
  split = teacher_lib._Galleries(source, 2)
  s, p, positive, q_labels, g_labels, q_groups, g_groups = tiny_stage._embed_set(params, split,
                                                                                 False)
  np.testing.assert_array_equal(g_groups, np.repeat([0, 1], 12))
  got = tiny_stage._retrieval(params, {"full": (split, False)})["full"]
  assert got["gallery_size"] == 12 and got["galleries"] == 2 and got["num_queries"] == 24
  halves = [retrieval_metrics(s[h], p[h], positive[h] - 12 * i, q_labels[h], g_labels[h])
            for i, h in enumerate((slice(0, 12), slice(12, 24)))]
  for key in ("acc@1", "acc@5", "mAP@all"):
    assert got[key] == pytest.approx(np.mean([m[key] for m in halves]), abs=1e-12), key


def test_eval_galleries_must_be_a_positive_integer():
  from sketchseg_jax.errors import UserError
  cfg = load_config(f"{CONFIG}:runlocal", ["--config.eval.galleries=0"])
  with pytest.raises(UserError, match="eval.galleries must be a positive integer"):
    teacher_lib.TeacherStage(cfg)._eval_sets(None)
