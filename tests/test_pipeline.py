"""The grain pipeline: fixed-shape batches, disjoint complete shards across processes, and
iterator state that resumes in a fresh process (with and without worker processes)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sketchseg_jax.data.pipeline import GRANULARITIES, build_dataset, resolve_config
from sketchseg_jax.errors import UserError

WORLD = {"source": {"name": "world", "size": 48, "num": 64, "granularities": "object,part,group"},
         "image_size": 48, "raster_size": 40, "max_queries": 3, "batch_size": 4, "seed": 3,
         "augment": [{"name": "stroke_dropout", "prob": 0.5, "p": 0.2},
                     {"name": "hflip", "prob": 0.5}]}


def test_batches_have_fixed_shapes_and_types():
  it = iter(build_dataset({**WORLD, "with_target": True}, "train", process_index=0,
                          process_count=1))
  for _ in range(3):
    b = next(it)
    assert b["image"].shape == (4, 48, 48, 3) and b["image"].dtype == np.uint8
    assert b["sketch"].shape == (4, 3, 40, 40) and b["sketch"].dtype == np.uint8
    assert b["sketch_valid"].shape == (4, 3) and b["sketch_valid"][:, 0].all()
    assert b["target"].shape == (4, 48, 48) and b["has_target"].all()
    single = b["granularity"] != GRANULARITIES.index("group")  # a group spans categories
    assert b["category_id"].dtype == np.int32 and (b["category_id"][single] >= 0).all()
    assert set(b["granularity"].tolist()) <= {GRANULARITIES.index(g) for g in ("object", "part", "group")}
    assert b["sketch"].max() == 255 and b["target"].any()
  training = next(iter(build_dataset(WORLD, "train", process_index=0, process_count=1)))
  assert "target" not in training  # the mask-free path never carries ground truth


class IndexSource:
  """Records that say which index they are (through category_id)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    from sketchseg_jax.sketch import Sketch
    return {"sketch": Sketch([[[1.0, 1.0], [5.0, 6.0]]], (8, 8)), "category_id": i % self.n,
            "image": np.zeros((8, 8, 3), np.uint8)}


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_see_disjoint_complete_shards(processes):
  n = 24
  cfg = {"source": {"name": "unused"}, "image_size": 8, "raster_size": 8, "batch_size": 2 * processes,
         "num_epochs": 2}
  per_epoch = [[], []]
  for p in range(processes):
    seen = [int(i) for b in build_dataset(cfg, process_index=p, process_count=processes,
                                          source=IndexSource(n))
            for i in b["category_id"]]
    assert len(seen) == 2 * n // processes
    for e in range(2):
      per_epoch[e] += seen[e * n // processes:(e + 1) * n // processes]
  for ids in per_epoch:
    assert sorted(ids) == list(range(n))
  assert per_epoch[0] != per_epoch[1]  # each epoch is shuffled anew


RESUME = textwrap.dedent("""
    import json, sys
    import numpy as np
    from sketchseg_jax.data.pipeline import build_dataset
    cfg, state, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    it = iter(build_dataset(cfg, "train", process_index=0, process_count=1))
    it.set_state(state)
    batches = [next(it) for _ in range(n)]
    np.savez(sys.argv[4], **{f"{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()})
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_resumes_in_a_fresh_process(tmp_path, workers):
  cfg = {**WORLD, "worker_count": workers}
  it = iter(build_dataset(cfg, "train", process_index=0, process_count=1))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  out = tmp_path / "resumed.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), json.dumps(state), "2", str(out)],
                 check=True, env=env, timeout=300)
  got = np.load(out)
  for i, b in enumerate(expected):
    for k, v in b.items():
      np.testing.assert_array_equal(got[f"{i}_{k}"], v, err_msg=k)


def test_config_errors_come_before_any_data():
  with pytest.raises(UserError, match="unknown data config keys \\['batchsize'\\]"):
    resolve_config({**WORLD, "batchsize": 3})
  with pytest.raises(UserError, match="needs a source"):
    resolve_config({"batch_size": 2})
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    build_dataset(WORLD, process_index=0, process_count=3)
