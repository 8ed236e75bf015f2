"""The jit train loop shared by every stage.

train(config, workdir):
  1. jax.distributed when launched multi-host; the resolved config saved to WORKDIR/config.json
  2. mesh from config.mesh; data iterator from the stage's pipeline config (this process's
     slice of every global batch)
  3. abstract state from jax.eval_shape, shardings from the stage's logical axes and
     config.sharding.rules; the state is built by jit(init, out_shardings=...) directly in
     its sharded layout, or restored from the newest readable checkpoint in WORKDIR
     (state and data iterator: a resumed run continues exactly)
  4. a jitted step with in/out shardings and the state donated; per-step randomness is
     fold_in(seed, step), so nothing random lives outside the state
  5. logging every config.log_every_steps, checkpoints every config.checkpoint.every_steps,
     evaluation every config.eval_every_steps; SIGTERM saves at the current step and stops;
     non-finite loss or gradients stop the run (config.nan_policy="stop") or skip the update
     and count it ("skip").
The train state is a plain dict: step, params, opt_state, skipped.
"""

from __future__ import annotations

import inspect
import logging
import signal
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.errors import UserError
from sketchseg_jax.param_tree import hoist_grafted, plain
from sketchseg_jax.train import checkpoints, distributed, mesh as mesh_lib, optim, reporting
from sketchseg_jax.train import stage as stage_lib
from sketchseg_jax.train.config_lib import save_config

log = logging.getLogger(__name__)

NAN_POLICIES = ("stop", "skip")


class NonFiniteError(UserError):
  """Loss or gradients became NaN/inf; the message names the step and the metric."""


class _Preemption:
  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _global_norm(tree):
  return optax.tree.norm(tree)


def make_train_step(stage, tx, lr_schedule, seed: int, nan_policy: str):
  base = jax.random.key(seed)
  # Stages whose loss changes over training (annealed terms) take the step as `step=`.
  takes_step = "step" in inspect.signature(stage.loss).parameters

  def train_step(state, batch):
    rng = jax.random.fold_in(base, state["step"])
    kwargs = {"step": state["step"]} if takes_step else {}
    (loss, aux), grads = jax.value_and_grad(stage.loss, has_aux=True)(state["params"], batch, rng,
                                                                        **kwargs)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = _global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    skipped = state["skipped"]
    if nan_policy == "skip":
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
      skipped = skipped + (~finite).astype(jnp.int32)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "skipped": skipped}
    metrics = {"loss": loss, **aux, "lr": lr_schedule(state["step"]), "grad_norm": grad_norm,
               "param_norm": _global_norm(params), "finite": finite.astype(jnp.float32),
               "skipped_updates": skipped.astype(jnp.float32)}
    return new_state, metrics
  return train_step


def _check_finite(step, metrics, policy):
  if policy == "stop" and metrics.get("finite", 1.0) < 1.0:
    bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics.get(k, 0.0))]
    raise NonFiniteError(f"step {step}: {' and '.join(bad) or 'loss'} is not finite "
                         f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); stopping "
                         "(set nan_policy='skip' to skip such updates instead)")


def _config_get(config, key, default):
  return config[key] if key in config else default


def train(config, workdir) -> dict:
  """Runs (or resumes) config's stage in workdir; returns the last logged metrics."""
  distributed.maybe_initialize()
  workdir = Path(workdir)
  is_main = jax.process_index() == 0
  # The stage may resolve parts of the config (a teacher run's architecture); the saved config
  # is the resolved one, so evaluation and inference need no other run's files.
  stage = stage_lib.build(config)
  config = stage.config
  if is_main:
    save_config(config, workdir)
  nan_policy = _config_get(config, "nan_policy", "stop")
  if nan_policy not in NAN_POLICIES:
    raise UserError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
  total_steps = int(config.total_steps)
  sharding_cfg = _config_get(config, "sharding", {})
  rules = [tuple(r) for r in _config_get(sharding_cfg, "rules", [])]
  mesh = mesh_lib.make_mesh(_config_get(config, "mesh", [("data", -1)]))
  logical_rules = mesh_lib.fit_logical_rules(
      [tuple(r) for r in _config_get(sharding_cfg, "logical", [])], mesh)
  ck_cfg = _config_get(config, "checkpoint", {})
  reporter = reporting.Reporter(workdir, total_steps, is_main,
                                tensorboard=_config_get(config, "tensorboard", True))
  reporter.message(f"workdir {workdir.absolute()}: config.json, metrics.jsonl, tensorboard/, "
                   f"checkpoints/; mesh {dict(mesh.shape)} over {jax.device_count()} devices "
                   f"in {jax.process_count()} process(es)")

  with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules):
    data = build_dataset(stage.data_config("train"), "train")
    it = iter(data)
    bsh = mesh_lib.batch_sharding(mesh)
    repl = mesh_lib.replicated(mesh)
    first_local = next(it)
    first = mesh_lib.to_global(first_local, bsh)
    if "image" in first_local:
      reporter.images(0, {"train/photos": reporting.image_grid(first_local["image"][:8])})
    rng = jax.random.key(int(config.seed))
    stage.prepare_training()
    abstract_params = jax.eval_shape(stage.init, rng, first)
    p_sh = mesh_lib.param_shardings(abstract_params, mesh, rules, logical_rules)
    tx, lr_schedule = optim.build(config.optimizer, total_steps, plain(abstract_params),
                                  stage.frozen())

    def init_state(rng, batch):
      params = nn.unbox(stage.init(rng, batch))
      return {"step": jnp.zeros((), jnp.int32), "params": params,
              "opt_state": tx.init(params), "skipped": jnp.zeros((), jnp.int32)}

    abstract_state = jax.eval_shape(init_state, rng, first)
    state_sh = {"step": repl, "params": p_sh, "skipped": repl,
                "opt_state": mesh_lib.follow_params(abstract_state["opt_state"], p_sh, mesh)}
    ckpt = checkpoints.Checkpoints(
        workdir / "checkpoints", every_steps=_config_get(ck_cfg, "every_steps", 1000),
        keep_last=_config_get(ck_cfg, "keep_last", 3), keep_best=_config_get(ck_cfg, "keep_best", 0),
        best_metric=_config_get(ck_cfg, "best_metric", None),
        best_mode=_config_get(ck_cfg, "best_mode", "min"),
        async_save=_config_get(ck_cfg, "async_save", True))
    restored = ckpt.restore(checkpoints.abstract_like(abstract_state, state_sh), it)
    if restored is not None:
      state, start = restored
      pending = None
      reporter.resumed_at(start)
      reporter.message(f"resumed from {ckpt.directory / str(start)} at step {start}")
    else:
      # Weights the stage grafts in from other runs go in as arguments, not constants.
      # Every process read the same files, so each holds a whole replica.
      init_fn, grafted = hoist_grafted(init_state, rng, first)
      grafted = [jax.make_array_from_process_local_data(repl, np.asarray(v), np.shape(v))
                 for v in grafted]
      state = jax.jit(init_fn, out_shardings=state_sh)(grafted, rng, first)
      start, pending = 0, first

    step_fn = jax.jit(make_train_step(stage, tx, lr_schedule, int(config.seed), nan_policy),
                      in_shardings=(state_sh, bsh), out_shardings=(state_sh, repl),
                      donate_argnums=(0,))
    log_every = max(1, int(_config_get(config, "log_every_steps", 10)))
    eval_every = int(_config_get(config, "eval_every_steps", 0) or 0)
    examples = int(stage.data_config("train")["batch_size"])
    last = {}
    previous = None  # (step, device metrics): checked one step late, so dispatch never waits
    t_log, steps_since = time.perf_counter(), 0
    with _Preemption() as preemption:
      for step in range(start + 1, total_steps + 1):
        batch = pending if pending is not None else mesh_lib.to_global(next(it), bsh)
        pending = None
        state, metrics = step_fn(state, batch)
        steps_since += 1
        if previous is not None:
          prev_step, prev_metrics = previous
          host = {k: float(v) for k, v in jax.device_get(prev_metrics).items()}
          _check_finite(prev_step, host, nan_policy)
        previous = (step, metrics)
        if step % log_every == 0 or step == total_steps:
          host = {k: float(v) for k, v in jax.device_get(metrics).items()}
          _check_finite(step, host, nan_policy)
          dt = time.perf_counter() - t_log
          host["step_time"] = dt / steps_since
          host["examples_per_sec"] = examples * steps_since / max(dt, 1e-9)
          reporter.scalars(step, host)
          last = host
          t_log, steps_since = time.perf_counter(), 0
        if eval_every and (step % eval_every == 0 or step == total_steps):
          scores = stage.evaluate(state["params"], step)
          if scores:
            reporter.scalars(step, {f"eval/{k}": v for k, v in scores.items()})
            last.update({f"eval/{k}": v for k, v in scores.items()})
        ckpt.save(step, state, it, metrics=last or None, force=step == total_steps)
        if preemption.requested:
          ckpt.save(step, state, it, metrics=last or None, force=True)
          ckpt.wait()
          reporter.message(f"SIGTERM: saved checkpoint at step {step} in {ckpt.directory}; "
                           "run the same command to resume")
          last["preempted"] = 1.0
          break
    ckpt.close()
  reporter.close()
  return last
