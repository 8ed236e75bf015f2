"""The segmenter model, the mask-free loss and its stage: shapes, gradients, no ground truth
anywhere in the training path, evaluation report."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmenter_helpers import stage_with_batch, tiny_config, train_tiny
from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.data.sources import build_source
from sketchseg_jax.models.segmenter import Segmenter, combine, frozen_patterns, upsample
from sketchseg_jax.models.vit_config import ViTConfig
from sketchseg_jax.param_tree import flat, plain
from sketchseg_jax.errors import UserError
from sketchseg_jax.stages.segmenter import (SegmenterStage, confident_picks, edge_aware_tv,
                                            infonce_positive_only, infonce_rows)
from sketchseg_jax.train import stage as stage_lib

TINY_VIT = ViTConfig(family="clip", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
                     image_size=32, mlp="gelu", projection_dim=32)


def test_upsample_is_torch_bilinear():
  torch = pytest.importorskip("torch")
  z = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
  ours = np.asarray(upsample(jnp.asarray(z), (16, 20)))
  ref = torch.nn.functional.interpolate(torch.from_numpy(z), size=(16, 20), mode="bilinear",
                                        align_corners=False).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_segmenter_shapes_and_max_over_sketches():
  model = Segmenter(TINY_VIT, 32, head="mlp", adapter=True, num_prompts=2)
  photos = jnp.zeros((2, 32, 32, 3), jnp.uint8)
  q = jax.random.normal(jax.random.key(1), (2, 3, 32))
  params = model.init(jax.random.key(0), photos, q)["params"]
  assert {"backbone", "head", "adapter", "prompts", "alpha", "beta"} <= set(params)
  z = model.apply({"params": params}, photos, q)
  assert z.shape == (2, 3, 32, 32)
  valid = jnp.array([[True, False, True], [True, True, True]])
  m = combine(jax.nn.sigmoid(z), valid)
  np.testing.assert_allclose(m[0], jnp.maximum(jax.nn.sigmoid(z[0, 0]), jax.nn.sigmoid(z[0, 2])),
                             atol=1e-6)


def test_frozen_patterns():
  paths = ["segmenter/backbone/patch_embedding/kernel", "segmenter/backbone/encoder/layers_0/mlp/fc1/kernel",
           "segmenter/backbone/encoder/layers_1/mlp/fc1/kernel",
           "segmenter/backbone/encoder/layers_1/layer_norm1/scale", "segmenter/head/proj/kernel"]

  def frozen(tune, k=None):
    pats = frozen_patterns(tune, 2, k, prefix="segmenter/")
    return [p for p in paths if any(re.search(x, p) for x in pats)]
  assert frozen("full") == []
  assert frozen("last_k", 1) == paths[:2]
  assert frozen("ln_prompts") == paths[:3]
  assert frozen("frozen") == paths[:4]
  with pytest.raises(ValueError):
    frozen_patterns("last_k", 2, 3)


def test_negatives_send_no_gradient():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  fp = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  # Query 0's loss may move only its own masked photo's embedding, never another photo's.
  g = np.asarray(jax.grad(lambda f: infonce_rows(q, f, 0.1)[0])(fp))
  assert np.all(g[1:] == 0) and np.any(g[0] != 0)
  extra = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  assert float(infonce_positive_only(q, fp, 0.1, extra_sim=extra)) > float(
      infonce_positive_only(q, fp, 0.1))


def test_edge_aware_tv_lets_masks_change_across_photo_edges_only():
  # Left half red, right half blue. A mask along that edge costs almost nothing; the same
  # mask moved into the red half costs as much as plain total variation.
  photo = np.zeros((1, 16, 16, 3), np.float32)
  photo[:, :, :8, 0] = 255.0
  photo[:, :, 8:, 2] = 255.0
  on_edge = np.zeros((1, 16, 16), np.float32)
  on_edge[:, :, :8] = 1.0
  inside = np.zeros((1, 16, 16), np.float32)
  inside[:, :, :4] = 1.0
  cost = lambda m: float(edge_aware_tv(jnp.asarray(m), photo, 0.1, (1,)))
  assert cost(on_edge) < 1e-6
  assert cost(inside) == pytest.approx(0.5 * 16 / (16 * 15))  # one column of 15 pairs, /2 axes
  assert cost(np.ones((1, 16, 16), np.float32)) == 0.0
  # Gradients reach the mask, never the photo.
  g = jax.grad(lambda m: edge_aware_tv(m, photo, 0.1, (1, 2)))(jnp.asarray(inside))
  assert np.any(np.asarray(g) != 0)


# ------------------------------------------------------------------ stage (random-init towers)

@pytest.fixture(scope="module")
def stage_and_batch():
  return stage_with_batch(tiny_config())


def test_loss_gradients_reach_only_the_segmenter(stage_and_batch):
  stage, batch, params = stage_and_batch
  (loss, aux), grads = jax.jit(jax.value_and_grad(stage.loss, has_aux=True))(
      params, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert {"in", "out", "area", "tv", "bin", "mask_mean"} <= set(aux)
  for name in ("teacher",):
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads[name]))
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["segmenter"]))


def test_loss_switches_run_and_stay_finite(stage_and_batch):
  import copy
  stage, batch, params = stage_and_batch
  variant = copy.copy(stage)
  variant.lcfg = {**stage.lcfg, "same_photo_negatives": 2, "zoom": 2.5, "straight_through": True,
                  "fill": "blur", "drop_same_category": True, "edge_tv": 0.5}
  (loss, aux), grads = jax.jit(jax.value_and_grad(variant.loss, has_aux=True))(
      params, batch, jax.random.key(2), step=500)
  assert np.isfinite(float(loss)) and float(aux["bin"]) >= 0 and float(aux["edge_tv"]) > 0
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads["segmenter"]))
  assert float(loss) != float(jax.jit(stage.loss)(params, batch, jax.random.key(2))[0])


def test_proposal_term_targets_a_candidate_the_teacher_ranks(stage_and_batch):
  import copy
  from sketchseg_jax.data.proposals import region_proposals
  stage, batch, params = stage_and_batch
  variant = copy.copy(stage)
  variant.prop = {**stage.prop, "weight": 1.0, "count": 6, "keep": 1.0}
  assert variant.data_config("train")["proposals"]["count"] == 6
  assert "proposals" not in variant.data_config("val")
  cands = [region_proposals(np.asarray(img), count=6) for img in batch["image"]]
  with_props = {**batch, "proposals": np.stack([c[0] for c in cands]).astype(np.uint8),
                "proposals_valid": np.stack([c[1] for c in cands])}
  assert with_props["proposals_valid"].any()
  (loss, aux), grads = jax.jit(jax.value_and_grad(variant.loss, has_aux=True))(
      params, with_props, jax.random.key(3))
  assert np.isfinite(float(loss)) and float(aux["proposal"]) > 0
  assert 0 < float(aux["proposal_area"]) <= 0.4 + 1e-6  # a candidate within max_area
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads["segmenter"]))
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads["teacher"]))
  # keep: the term over the confident half of the batch only, a different mean
  variant.prop = {**variant.prop, "keep": 0.5}
  half = jax.jit(variant.loss)(params, with_props, jax.random.key(3))[1]
  assert np.isfinite(float(half["proposal"])) and float(half["proposal"]) != float(aux["proposal"])


def test_confident_picks_keep_the_best_scored_share_of_those_with_a_pick():
  score = jnp.array([0.1, 0.9, 0.5, 0.7, 0.95, 0.3])
  has = jnp.array([True, True, True, True, False, True])
  np.testing.assert_array_equal(confident_picks(score, has, 1.0), has)
  # 5 with a pick, ceil(0.5 x 5) = 3 kept: 0.9, 0.7, 0.5 (0.95 has no pick)
  np.testing.assert_array_equal(confident_picks(score, has, 0.5),
                                [False, True, True, True, False, False])
  np.testing.assert_array_equal(confident_picks(score, has, 0.01),
                                [False, True, False, False, False, False])
  assert not confident_picks(score, jnp.zeros(6, bool), 0.5).any()


def test_init_from_teacher_is_the_photo_tower(stage_and_batch):
  stage, _, params = stage_and_batch
  seg, teacher = flat(params["segmenter"]), flat(params["teacher"])
  for k, v in seg.items():
    if k.startswith("backbone/"):
      np.testing.assert_array_equal(v, teacher[k])
  np.testing.assert_array_equal(seg["head/norm/scale"], teacher["backbone/post_layernorm/scale"])
  np.testing.assert_array_equal(seg["head/proj/kernel"], teacher["backbone/projection/kernel"])
  np.testing.assert_array_equal(seg["prompts"], teacher["photo_prompts"])
  zs = flat(stage.zero_shot_params(params)["segmenter"])
  assert all(np.array_equal(zs[k], v) for k, v in seg.items())


class _GarbageTruth:
  """A world source whose masks, mask_info and target are random garbage."""

  def __init__(self, source):
    self.source = source
    self.categories = source.categories

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    s = dict(self.source[i])
    rng = np.random.default_rng(i)
    s["target"] = rng.random(s["target"].shape) < 0.5
    s["masks"] = rng.random(s["masks"].shape) < 0.5
    s["mask_info"] = [{"object_id": 99, "part": "garbage", "category": "none"}] * len(s["masks"])
    return s


@pytest.mark.parametrize("proposals", [False, True])
def test_mask_free_path_never_reads_ground_truth(stage_and_batch, proposals):
  import copy
  stage, _, params = stage_and_batch
  # With proposals and region pooling, the candidate masks and the regions come from the
  # photo alone.
  stage = copy.copy(stage)
  stage.prop = {**stage.prop, "weight": 1.0 if proposals else 0.0, "count": 4}
  stage.mcfg = {**stage.mcfg, "regions": 10.0 if proposals else 0.0}
  data = stage.data_config("train")
  source = build_source({**data["source"], "split": "train"})
  clean = iter(build_dataset(data, "train", source=source))
  garbage = iter(build_dataset(data, "train", source=_GarbageTruth(source)))
  loss = jax.jit(stage.loss)
  for step in range(2):
    a, b = next(clean), next(garbage)
    assert set(a) == set(b) and "target" not in a
    assert ("proposals" in a) == ("regions" in a) == proposals
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    la, _ = loss(params, a, jax.random.key(step))
    lb, _ = loss(params, b, jax.random.key(step))
    assert float(la) == float(lb)


# ------------------------------------------------------------------ trained runs + evaluation

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("seg")
  return {"segmenter": train_tiny(root / "segmenter"), "supervised": train_tiny(root / "supervised", "supervised")}


def test_eval_report_and_grid(trained):
  from sketchseg_jax.cli import main
  workdir = trained["segmenter"]
  assert main(["eval", "--workdir", str(workdir)]) == 0
  report = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert report["num_queries"] == 16
  for key in ("miou", "miou_best_threshold"):
    assert set(report[key]) >= {"all"} and all(0 <= v <= 1 for v in report[key].values())
  assert {"all_ones", "centre_prior", "zero_shot"} <= set(report["baselines"])
  assert set(report["by_split"]) == {"seen", "heldout"}
  assert set(report["styles"]) == {"thick", "sparse", "wobbly"}
  assert (workdir / "eval" / "grid.png").exists()
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["teacher"]["model"]["vit"]["width"] == 32  # towers resolved into the config


def test_supervised_reads_targets_and_evaluates(trained):
  from sketchseg_jax.cli import main
  workdir = trained["supervised"]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert "bce" in rows[-1] and "dice" in rows[-1]
  assert main(["eval", "--workdir", str(workdir), "--config.eval.styles=[]"]) == 0


def test_eval_on_a_folder(trained, tmp_path):
  from sketchseg_jax.cli import main
  folder = tmp_path / "folder"
  assert main(["data", "synth", "--out", str(folder), "--split", "val", "--num", "6",
               "--format", "folder", "--size", "32"]) == 0
  workdir = trained["segmenter"]
  assert main(["eval", "--workdir", str(workdir), "--data", str(folder)]) == 0
  report = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert report["num_queries"] == 6 and report["data"] == str(folder)


def test_bad_edge_aware_tv_and_proposal_settings_are_refused():
  config = tiny_config()
  config.loss.edge_sigma = 0.0
  with pytest.raises(UserError, match="edge_sigma must be > 0"):
    SegmenterStage(config)
  config = tiny_config()
  config.proposals.min_area = 0.5
  with pytest.raises(UserError, match="min_area < max_area"):
    SegmenterStage(config)
  config = tiny_config()
  config.proposals.keep = 0.0
  with pytest.raises(UserError, match="proposals.keep"):
    SegmenterStage(config)


def test_supervised_stage_ignores_proposals():
  config = tiny_config("supervised")
  config.proposals = dict(weight=3.0)
  stage = stage_lib.build(config)
  assert stage.prop["weight"] == 0.0 and "proposals" not in stage.data_config("train")


def test_teacher_workdir_must_be_a_tower_run(tmp_path):
  config = tiny_config()
  config.teacher.random_init = False
  config.teacher.workdir = str(tmp_path)
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.json").write_text(json.dumps({"stage": "world_classifier"}))
  with pytest.raises(UserError, match="teacher or a distillation run"):
    SegmenterStage(config)


def test_second_round_trains_on_the_first_rounds_confident_masks(trained, tmp_path):
  from sketchseg_jax.cli import main
  from sketchseg_jax.errors import UserError
  from sketchseg_jax.train.checkpoints import read_params
  round1 = trained["segmenter"]
  workdir = train_tiny(tmp_path / "round2", **{"pseudo.workdir": str(round1), "pseudo.weight": 1.0})
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["pseudo"] > 0 and 0 <= rows[-1]["pseudo_confident"] <= 1
  first, _ = read_params(round1 / "checkpoints")
  second, _ = read_params(workdir / "checkpoints")
  want = flat(plain(first)["segmenter"])
  kept, trained_on = flat(plain(second)["round1"]), flat(plain(second)["segmenter"])
  assert kept.keys() == want.keys() == trained_on.keys()
  assert all(np.array_equal(kept[k], want[k]) for k in want)  # frozen
  assert any(not np.array_equal(trained_on[k], want[k]) for k in want)  # started there, moved
  assert main(["eval", "--workdir", str(workdir), "--config.eval.styles=[]"]) == 0
  wrong = SegmenterStage(tiny_config(**{"pseudo.workdir": str(trained["supervised"]),
                                        "pseudo.weight": 1.0}))
  with pytest.raises(UserError, match="not a mask-free segmenter run"):
    wrong.prepare_training()
  with pytest.raises(UserError, match="low < high"):
    SegmenterStage(tiny_config(**{"pseudo.workdir": str(round1), "pseudo.weight": 1.0,
                                  "pseudo.low": 0.8}))
