"""Multi-host start-up: `jax.distributed.initialize()` when the environment says this is one
process of several, before anything else touches JAX devices.

Recognised, in order:
  SKETCHSEG_DISTRIBUTED=1              forced: jax.distributed.initialize() with no arguments,
                                       which detects the cluster itself (Cloud TPU VM metadata,
                                       SLURM, ...); launch/tpu_pod.sh sets it
  JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID  explicit (any platform; on
                                       CPU the gloo collectives are switched on)
  SLURM_JOB_ID with SLURM_NTASKS > 1   SLURM; JAX reads SLURM_* itself
  TPU_WORKER_HOSTNAMES with > 1 host   Cloud TPU pod slice; JAX reads the TPU metadata
Nothing set: a single process, no initialisation.
"""

from __future__ import annotations

import os

import jax


def wanted() -> str:
  env = os.environ
  if env.get("SKETCHSEG_DISTRIBUTED", "") not in ("", "0"):
    return "forced"
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    return "explicit"
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  return ""


def maybe_initialize() -> str:
  """Initialises jax.distributed when needed; returns how ('' for single-process)."""
  how = wanted()
  if not how or jax.distributed.is_initialized():
    return how
  if how == "explicit":
    env = os.environ
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env.get("JAX_PROCESS_ID", "0")))
  else:
    jax.distributed.initialize()
  return how
