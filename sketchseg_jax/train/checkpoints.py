"""Every orbax call of the project lives here.

A checkpoint holds two items: `state` (the train state pytree, saved sharded, restored onto
whatever mesh the abstract target's shardings describe) and `data` (the grain iterator
state), so a resumed run sees exactly the batches it would have seen. Saves are async;
`wait()` must run before the process exits (the train loop does, also on SIGTERM). orbax
writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves no checkpoint that looks finished; a finished one that is corrupt on disk fails to
restore and the previous one is used, with a warning naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from sketchseg_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpoints:
  """keep_last: newest checkpoints kept; keep_best: also kept, the best by `best_metric`
  (mode "min" or "max") among the metrics passed to `save`."""

  def __init__(self, directory, *, every_steps: int, keep_last: int = 3, keep_best: int = 0,
               best_metric: Optional[str] = None, best_mode: str = "min",
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    keep = [policies.LatestN(n=max(1, int(keep_last)))]
    if keep_best and best_metric:
      worst = float("inf") if best_mode == "min" else float("-inf")
      keep.append(policies.BestN(get_metric_fn=lambda m: float(m.get(best_metric, worst)),
                                 reverse=best_mode == "min", n=int(keep_best),
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        # Only the interval (orbax would also save the first step it sees).
        save_decision_policy=policies.FixedIntervalPolicy(max(1, int(every_steps))),
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def steps(self) -> list:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, metrics: Optional[dict] = None,
           force: bool = False) -> bool:
    """Saves when the interval says so (or `force`); returns whether a save started."""
    if int(step) in self.manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics,
                             force=force)

  def restore(self, abstract_state, data_iterator=None, step: Optional[int] = None):
    """(state, step) from the newest readable checkpoint (or `step`), or None when there is
    none. `abstract_state` holds jax.ShapeDtypeStruct leaves with the shardings to restore
    onto, so a checkpoint written on one mesh loads onto another."""
    steps = [step] if step is not None else sorted(self.steps(), reverse=True)
    failures = []
    for s in steps:
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # orbax and tensorstore raise many types for damaged files
        failures.append((s, e))
        log.warning("checkpoint %s is unreadable (%s: %s); trying the one before",
                    self.directory / str(s), type(e).__name__, str(e).splitlines()[0][:200])
        continue
      if failures:
        log.warning("resumed from checkpoint %s instead of the newest, %s, which is damaged",
                    self.directory / str(s), self.directory / str(failures[0][0]))
      return restored["state"], s
    if failures:
      s, e = failures[0]
      raise CheckpointError(f"no readable checkpoint in {self.directory}: {len(failures)} "
                            f"tried, newest {s} failed with {type(e).__name__}: {e}")
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _quiet_read_only_notes(record) -> bool:
  # orbax warns three times that a read-only manager is read-only; nothing for the user.
  message = str(record.msg)
  return not (message.startswith("CheckpointManagerOptions.read_only=True")
              or message.startswith("Given directory is read only"))


def read_state(directory, step: Optional[int] = None, device=None) -> tuple:
  """(state, step) of a checkpoint directory, whole on one device (default the first),
  whatever mesh wrote it: for evaluation, export and tests."""
  directory = Path(directory).absolute()
  if not directory.exists():
    raise CheckpointError(f"{directory}: no checkpoints folder")
  absl_log = logging.getLogger("absl")
  if _quiet_read_only_notes not in absl_log.filters:
    absl_log.addFilter(_quiet_read_only_notes)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"{directory}: holds no finished checkpoint")
    step = steps[-1] if step is None else int(step)
    meta = manager.item_metadata(step)["state"]
    single = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=single), meta)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return state["state"], step
  finally:
    manager.close()


def abstract_like(tree, shardings) -> Any:
  """ShapeDtypeStructs with shardings: the restore target for `tree`'s structure."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def read_params(directory, step: Optional[int] = None) -> tuple:
  """(params, step) of a checkpoint directory, with one-line errors for a missing step, a
  damaged checkpoint or one without parameters."""
  directory = Path(directory)
  if step is not None and directory.is_dir() and not (directory / str(step)).is_dir():
    have = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    raise CheckpointError(f"{directory} has no checkpoint for step {step}; steps: {have}")
  try:
    state, step = read_state(directory, step)
  except CheckpointError:
    raise
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    first = (str(e).splitlines() or [""])[0][:200]
    raise CheckpointError(f"cannot read checkpoint in {directory}: {type(e).__name__}: "
                          f"{first}") from e
  if not isinstance(state, dict) or "params" not in state:
    raise CheckpointError(f"checkpoint {directory / str(step)} holds no 'params'")
  return state["params"], step
