"""The stage interface the engine trains, and the registry of stages by config name.

A stage is a small module: what data it reads, how to initialise its parameters, its loss
and metrics, which parameters stay frozen, and optionally an evaluation. The engine
(sketchseg_jax/train/loop.py) owns everything else: mesh, shardings, optimizer, checkpoints,
logging, resumption, faults.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Optional

from sketchseg_jax.errors import UserError

# config.stage -> "module:Class"; modules import lazily so the CLI starts fast.
STAGES = {
    "world_classifier": "sketchseg_jax.stages.classifier:ClassifierStage",
    "teacher": "sketchseg_jax.stages.teacher:TeacherStage",
    "distill": "sketchseg_jax.stages.distill:DistillStage",
    "segmenter": "sketchseg_jax.stages.segmenter:SegmenterStage",
    "supervised": "sketchseg_jax.stages.segmenter:SupervisedStage",
}


class Stage:
  """Base class. Subclasses implement init and loss; the rest has working defaults."""

  def __init__(self, config):
    self.config = config

  def data_config(self, split: str) -> dict:
    """The pipeline config (see sketchseg_jax.data.pipeline) for `split`."""
    data = self.config.data.to_dict() if hasattr(self.config.data, "to_dict") else dict(self.config.data)
    return data

  def prepare_training(self) -> None:
    """Called by the engine before `init` is traced: read what init needs from disk (another
    run's checkpoint) here, since init runs under jit."""

  def init(self, rng, batch) -> Any:
    """Parameters (a nested dict, optionally with flax logical-partitioning boxes)."""
    raise NotImplementedError

  def loss(self, params, batch, rng) -> tuple:
    """(scalar loss, {name: scalar}) for one global batch; traced under jit."""
    raise NotImplementedError

  def frozen(self) -> list:
    """Regexes of parameter paths that get no update (besides config.optimizer.frozen)."""
    return []

  def evaluate(self, params, step: int) -> Optional[Dict[str, float]]:
    """Called every config.eval_every_steps with the current parameters; scalars returned
    are logged under 'eval/'. None: this stage has no in-training evaluation."""
    return None


  def eval_report(self, params, data: Optional[str] = None) -> dict:
    """The full evaluation `sketchseg eval` writes to WORKDIR/eval/metrics.json: a JSON-able
    dict. `data` is an optional path to evaluate on instead of the config's evaluation data.
    A stage whose report comes with figures also takes `out_dir` (WORKDIR/eval) to write them."""
    raise UserError(f"stage {self.config.stage!r} has no evaluation report")


def build(config) -> Stage:
  name = config.stage
  if name not in STAGES:
    raise UserError(f"unknown stage {name!r}; known: {sorted(STAGES)}")
  module, _, cls = STAGES[name].partition(":")
  return getattr(importlib.import_module(module), cls)(config)


def build_saved(config, workdir) -> Stage:
  """build() for the config of the run in `workdir`. A config whose fields do not fit its
  stage (a hand-edited config.json, or one of another version) fails with one line that
  names the run, not with ml_collections' AttributeError from inside the stage."""
  try:
    return build(config)
  except (AttributeError, KeyError) as e:
    raise UserError(f"the config of {workdir} does not fit stage {config.get('stage')!r}: "
                    f"{type(e).__name__}: {str(e).strip(chr(34))}") from e


def register(name: str, target: str):
  """Add a stage ('module:Class') under `name`."""
  STAGES[name] = target
