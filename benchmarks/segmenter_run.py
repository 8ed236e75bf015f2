"""A finished segmenter run and its validation queries with their true masks, for the
diagnostics that ask what its frozen teacher rewards (teacher_mask_preference,
proposal_selection). Not a training path: the batches carry the true targets."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sketchseg_jax.data.pipeline import build_dataset  # noqa: E402
from sketchseg_jax.param_tree import plain  # noqa: E402
from sketchseg_jax.train import stage as stage_lib  # noqa: E402
from sketchseg_jax.train.checkpoints import read_params  # noqa: E402
from sketchseg_jax.train.config_lib import read_saved_config  # noqa: E402


def load_run(workdir):
  """(stage, params, checkpoint step, the frozen towers' params) of a segmenter workdir."""
  stage = stage_lib.build(read_saved_config(workdir))
  params, step = read_params(Path(workdir) / "checkpoints")
  params = plain(params)
  frozen = {k: v for k, v in params.items() if k not in ("segmenter", "round1")}
  return stage, params, step, frozen


def val_batches(stage, batch_size: int, granularity: str):
  """An iterator of the validation split's batches of one granularity, with "target"."""
  data = stage.data_config("val")
  data.update(with_target=True, batch_size=batch_size, worker_count=0, proposals=None)
  data["source"] = {**data["source"], "granularities": {granularity: 1.0}}
  return iter(build_dataset(data, "val"))
