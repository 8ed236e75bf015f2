"""Colour-region pooling (model.regions): the pipeline's region maps, the pooled logits in
training and prediction, the Predictor, and the PyTorch export's own region cutter, which
must cut the same regions as the pipeline's scipy one."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmenter_helpers import import_generated, stage_with_batch, tiny_config
from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.data.proposals import colour_regions, median3x3, region_mean
from sketchseg_jax.data.sources import build_source
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.segmenter import pool_over_regions
from sketchseg_jax.train import stage as stage_lib

THRESHOLD = 10.0


def test_median3x3_is_scipys_median_filter():
  from scipy import ndimage
  rng = np.random.default_rng(0)
  for shape in [(96, 96, 3), (7, 5, 3), (1, 1, 3), (2, 9, 1)]:
    for levels in (3, 256):  # few levels: many ties
      image = rng.integers(0, levels, shape).astype(np.uint8)
      expected = ndimage.median_filter(image.astype(np.float32), size=(3, 3, 1))
      np.testing.assert_array_equal(median3x3(image), expected)
      np.testing.assert_array_equal(median3x3(image.astype(np.float32)), expected)


def same_partition(a, b) -> bool:
  """Whether two id maps cut the pixels into the same sets (whatever their numbering)."""
  a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def constant_on_regions(mask, regions) -> bool:
  return all(np.ptp(mask[regions == k]) < 1e-5 for k in np.unique(regions))


def world_photos(n, size=48):
  src = build_source({"name": "world", "kind": "query", "split": "val", "num": n, "size": size})
  return [np.asarray(src[i]["image"]) for i in range(n)]


def test_pool_over_regions_is_the_region_mean():
  rng = np.random.default_rng(0)
  regions = rng.integers(0, 5, (3, 6, 7))
  z = rng.normal(size=(3, 6, 7)).astype(np.float32)
  pooled = np.asarray(pool_over_regions(jnp.asarray(z), jnp.asarray(regions)))
  for b in range(3):
    np.testing.assert_allclose(pooled[b], region_mean(z[b], regions[b]), atol=1e-6)
    for k in np.unique(regions[b]):
      np.testing.assert_allclose(pooled[b][regions[b] == k], z[b][regions[b] == k].mean(),
                                 atol=1e-6)


def test_torch_cutter_cuts_the_pipelines_regions():
  torch = pytest.importorskip("torch")
  from sketchseg_jax.export import torch_module
  blocks = np.zeros((40, 40, 3), np.uint8)
  blocks[:, 20:] = 200
  blocks[5:15, 5:15] = (0, 120, 0)
  noise = np.random.default_rng(1).integers(0, 256, (30, 30, 3), dtype=np.uint8)
  for image in world_photos(6) + [blocks, noise]:
    for threshold in (THRESHOLD, 20.0, 60.0):
      ours = colour_regions(image, threshold)
      theirs = torch_module.colour_regions(image, threshold).numpy()
      assert same_partition(ours, theirs)
  z = torch.randn(2, 40, 40)
  ids = torch_module.colour_regions(blocks, THRESHOLD)
  np.testing.assert_allclose(torch_module.region_mean(z, ids).numpy(),
                             region_mean(z.numpy(), ids.numpy()), atol=1e-5)


def test_pipeline_adds_the_photos_regions_and_refuses_a_bad_threshold():
  data = {"source": {"name": "world", "size": 32, "num": 16}, "image_size": 32,
          "raster_size": 32, "batch_size": 4, "regions": THRESHOLD}
  batch = next(iter(build_dataset(data, "train", process_index=0, process_count=1)))
  assert batch["regions"].shape == (4, 32, 32) and batch["regions"].dtype == np.int32
  for image, regions in zip(batch["image"], batch["regions"]):
    np.testing.assert_array_equal(regions, colour_regions(image, THRESHOLD))
  plain_batch = next(iter(build_dataset({**data, "regions": 0.0}, "train", process_index=0,
                                        process_count=1)))
  assert "regions" not in plain_batch
  for bad in (-1.0, "ten", float("nan")):
    with pytest.raises(UserError, match="data.regions"):
      build_dataset({**data, "regions": bad}, "train")
  with pytest.raises(UserError, match="model.regions"):
    stage_lib.build(tiny_config(**{"model.regions": -5.0}))


@pytest.fixture(scope="module")
def pooled():
  """A tiny random-init segmenter with model.regions, one training batch and its params."""
  stage, batch, params = stage_with_batch(tiny_config(**{"model.regions": THRESHOLD}))
  assert stage.data_config("train")["regions"] == THRESHOLD
  assert stage.data_config("eval")["regions"] == THRESHOLD
  return stage, batch, params


def test_pooled_loss_trains_and_masks_follow_the_regions(pooled):
  stage, batch, params = pooled
  (loss, _), grads = jax.jit(jax.value_and_grad(stage.loss, has_aux=True))(
      params, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["segmenter"]))
  probs = np.asarray(jax.jit(stage.predict)(params, batch["image"], batch["sketch"],
                                            batch["sketch_valid"], batch["regions"]))
  for mask, regions in zip(probs, batch["regions"]):
    assert constant_on_regions(mask, regions)
  with pytest.raises(UserError, match="no 'regions'"):
    stage.predict(params, batch["image"], batch["sketch"], batch["sketch_valid"])


def test_predictor_pools_as_training_does(pooled):
  from sketchseg_jax.infer.predictor import Predictor, resize_photo, upsample_logits
  stage, batch, params = pooled
  predict = jax.jit(stage.predict)
  p = Predictor(stage, params)
  assert p.region_threshold == THRESHOLD
  i = 0
  sketch = batch["sketch"][i][batch["sketch_valid"][i]]
  image = np.asarray(batch["image"][i])
  p.set_image(image)
  want = np.asarray(predict(params, batch["image"], batch["sketch"], batch["sketch_valid"],
                            batch["regions"]))[i]
  np.testing.assert_allclose(p.segment(list(sketch)), want, atol=1e-5)
  np.testing.assert_array_equal(p.regions, batch["regions"][i])
  np.testing.assert_allclose(p.predict_batch([image], [list(sketch)])[0], want, atol=1e-5)
  # Another size: the map of the photo resized to the model's size, pooled over that
  # photo's regions, upsampled as the logits are.
  big = np.repeat(np.repeat(image, 2, axis=0), 3, axis=1)
  p.set_image(big)
  resized = resize_photo(big, image.shape[0])
  photos, regions = np.array(batch["image"]), np.array(batch["regions"])
  photos[i], regions[i] = resized, colour_regions(resized, THRESHOLD)
  small = np.asarray(predict(params, photos, batch["sketch"], batch["sketch_valid"],
                             regions))[i].astype(np.float64)
  z = np.log(small) - np.log1p(-small)
  np.testing.assert_allclose(p.segment(list(sketch)), 1 / (1 + np.exp(
      -upsample_logits(z[None], big.shape[:2])[0])), atol=1e-4)


def test_export_pools_over_the_same_regions(pooled, tmp_path):
  pytest.importorskip("torch")
  from sketchseg_jax.export import segmenter_export
  from sketchseg_jax.infer.predictor import Predictor
  stage, batch, params = pooled
  out = segmenter_export.export_segmenter(stage, params, tmp_path / "out", onnx=False)
  m = import_generated(out).load(out)
  assert m.region_threshold == THRESHOLD
  p = Predictor(stage, params)
  for i in range(3):
    image = np.asarray(batch["image"][i])
    sketch = [s.astype(np.float32) / 255 for s in batch["sketch"][i][batch["sketch_valid"][i]]]
    p.set_image(image)
    want = p.segment(sketch)
    got = m.segment(image, sketch)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert constant_on_regions(got, batch["regions"][i])


def test_pseudo_round_learns_round_ones_pooled_masks(pooled):
  import copy

  import optax
  stage, batch, params = pooled
  args = (batch["image"], batch["sketch"], batch["sketch_valid"])
  z, _, q, _ = stage.query_logits(params, *args, regions=batch["regions"])
  # Round 1 = these very parameters, so its pooled probabilities are sigmoid(z). Thresholds
  # around their median, so that unpooled round-1 masks would give other targets.
  p1 = np.asarray(jax.nn.sigmoid(z))
  low, high = (float(v) for v in np.quantile(p1, [0.4, 0.6]))
  stage = copy.copy(stage)
  stage.pcfg = {**stage.pcfg, "low": low, "high": high}
  got, share = stage._pseudo_term(params["segmenter"], z, batch["image"], q,
                                  batch["sketch_valid"], batch["regions"])
  sure = ((p1 >= high) | (p1 <= low)).astype(np.float32)
  bce = np.asarray(optax.sigmoid_binary_cross_entropy(z, (p1 >= high).astype(np.float32)))
  np.testing.assert_allclose(float(got), (bce * sure).sum() / sure.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(share), sure.mean(), rtol=1e-6)
  with pytest.raises(UserError, match="no 'regions'"):
    stage._pseudo_term(params["segmenter"], z, batch["image"], q, batch["sketch_valid"])
