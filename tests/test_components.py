"""model.min_component: the mask's small connected components dropped at prediction, the same
in stage.predict (JAX), the Predictor (numpy) and the PyTorch export."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from segmenter_helpers import import_generated, stage_with_batch, tiny_config
from sketchseg_jax.errors import UserError
from sketchseg_jax.infer import predictor as predictor_lib
from sketchseg_jax.models.segmenter import component_labels, drop_small_components
from sketchseg_jax.stages.segmenter import SegmenterStage


def random_masks(shape, seed=0):
  """Smooth random probabilities around 0.5: many components of many sizes."""
  p = np.random.default_rng(seed).random(shape).astype(np.float32)
  p = ndimage.uniform_filter(p, (1, 3, 3))
  return (p - p.mean()) / p.std() * 0.3 + 0.45


def test_component_labels_are_scipys_components():
  on = random_masks((3, 40, 30)) > 0.5
  labels = np.asarray(jax.jit(component_labels)(jnp.asarray(on)))
  for b in range(3):
    theirs, n = ndimage.label(on[b])
    assert n > 5 and np.all(labels[b][~on[b]] == 40 * 30)
    pairs = set(zip(labels[b][on[b]].tolist(), theirs[on[b]].tolist()))
    assert len(pairs) == n  # the same partition, numbered differently
    # each label is the smallest flat index of its component
    for lab in np.unique(labels[b][on[b]]):
      assert lab == np.flatnonzero((labels[b] == lab).ravel()).min()


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_jax_numpy_and_torch_twins_agree(share):
  probs = random_masks((4, 48, 40), seed=1)
  probs[1] = 0.2  # nothing on
  probs[2] = 0.2
  probs[2, 5:20, 5:20] = 0.9  # one component
  got = np.asarray(jax.jit(drop_small_components, static_argnums=1)(jnp.asarray(probs), share))
  for b in range(4):
    want = predictor_lib.drop_small_components(probs[b], share)
    np.testing.assert_array_equal(got[b], want)
    on = probs[b] > 0.5
    labels, n = ndimage.label(on)
    sizes = np.bincount(labels.ravel())[1:]
    kept = ndimage.label(want > 0.5)[1]
    assert kept == (n if not share else int(np.sum(sizes >= share * sizes.max())) if n else 0)
  assert share or np.array_equal(got, probs)
  torch = pytest.importorskip("torch")
  from sketchseg_jax.export import torch_module
  for b in range(4):
    theirs = torch_module.drop_small_components(torch.from_numpy(probs[b]), share).numpy()
    np.testing.assert_array_equal(theirs, got[b])


def test_bad_min_component_is_refused():
  config = tiny_config()
  config.model.min_component = 1.5
  with pytest.raises(UserError, match="min_component"):
    SegmenterStage(config)


@pytest.fixture(scope="module")
def cleaned():
  """A tiny pooled segmenter with model.min_component, its bias set so that about half of
  each mask is on (many components), one batch."""
  stage, batch, params = stage_with_batch(tiny_config(**{"model.regions": 10.0,
                                                         "model.min_component": 0.25}))
  z = stage.query_logits(params, batch["image"], batch["sketch"], batch["sketch_valid"],
                         regions=batch["regions"])[0]
  params = {**params, "segmenter": {**params["segmenter"],
                                    "beta": params["segmenter"]["beta"] - jnp.median(z)}}
  return stage, batch, params


def test_predict_predictor_and_export_drop_the_same_components(cleaned, tmp_path):
  stage, batch, params = cleaned
  args = (batch["image"], batch["sketch"], batch["sketch_valid"], batch["regions"])
  got = np.asarray(jax.jit(stage.predict)(params, *args))
  plain_stage = copy.copy(stage)
  plain_stage.mcfg = {**stage.mcfg, "min_component": 0.0}
  raw = np.asarray(jax.jit(plain_stage.predict)(params, *args))
  dropped = 0
  for b in range(len(raw)):
    want = predictor_lib.drop_small_components(raw[b], 0.25)
    np.testing.assert_allclose(got[b], want, atol=1e-6)
    dropped += int(np.sum((raw[b] > 0.5) & (want == 0)))
  assert dropped > 0  # the test has components to drop
  p = predictor_lib.Predictor(stage, params)
  torch = pytest.importorskip("torch")
  from sketchseg_jax.export import segmenter_export
  out = segmenter_export.export_segmenter(stage, params, tmp_path / "out", onnx=False)
  m = import_generated(out).load(out)
  assert m.min_component == 0.25
  for i in range(3):
    image = np.asarray(batch["image"][i])
    sketch = [s.astype(np.float32) / 255 for s in batch["sketch"][i][batch["sketch_valid"][i]]]
    p.set_image(image)
    mine = p.segment(sketch)
    np.testing.assert_allclose(mine, got[i], atol=1e-5)
    with torch.no_grad():
      np.testing.assert_allclose(m.segment(image, sketch), mine, atol=1e-4)
