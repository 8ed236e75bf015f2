"""Optimizer and learning-rate schedule from config.

config.optimizer:
  name            "adamw" | "adam" | "sgd"
  lr              peak learning rate
  schedule        "cosine" | "linear" | "constant" (after warmup)
  warmup_steps    linear warmup from 0
  min_lr_ratio    final learning rate as a fraction of lr (cosine, linear)
  weight_decay    decoupled (adamw); b1, b2, eps (adam*); momentum, nesterov (sgd)
  grad_clip_norm  global-norm clipping (0 or None: off)
  frozen          regexes over '/'-joined parameter paths: matching parameters get no update
                  (stages add their own, e.g. a frozen teacher)
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import optax

from sketchseg_jax.errors import UserError
from sketchseg_jax.param_tree import path_str

DEFAULTS = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=0, min_lr_ratio=0.0,
                weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
                grad_clip_norm=1.0, frozen=())


def resolve(cfg) -> dict:
  d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {}))
  unknown = sorted(set(d) - set(DEFAULTS))
  if unknown:
    raise UserError(f"unknown optimizer config keys {unknown}; known: {sorted(DEFAULTS)}")
  return {**DEFAULTS, **d}


def schedule(c: dict, total_steps: int) -> optax.Schedule:
  warmup = int(c["warmup_steps"])
  decay_steps = max(1, int(total_steps) - warmup)
  end = c["lr"] * c["min_lr_ratio"]
  if c["schedule"] == "cosine":
    main = optax.cosine_decay_schedule(c["lr"], decay_steps, alpha=c["min_lr_ratio"])
  elif c["schedule"] == "linear":
    main = optax.linear_schedule(c["lr"], end, decay_steps)
  elif c["schedule"] == "constant":
    main = optax.constant_schedule(c["lr"])
  else:
    raise UserError(f"unknown schedule {c['schedule']!r} (cosine, linear, constant)")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, c["lr"], warmup), main], [warmup])


def frozen_mask(params, patterns: Sequence[str]):
  """True where a parameter is trained, False where a pattern freezes it."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(p.search(path_str(path)) for p in compiled), params)


def build(cfg, total_steps: int, params, extra_frozen: Sequence[str] = ()):
  """(optax transformation, schedule) for `params` (any tree with the parameters' structure)."""
  c = resolve(cfg)
  lr = schedule(c, total_steps)
  if c["name"] == "adamw":
    tx = optax.adamw(lr, b1=c["b1"], b2=c["b2"], eps=c["eps"], weight_decay=c["weight_decay"])
  elif c["name"] == "adam":
    tx = optax.adam(lr, b1=c["b1"], b2=c["b2"], eps=c["eps"])
  elif c["name"] == "sgd":
    tx = optax.sgd(lr, momentum=c["momentum"] or None, nesterov=c["nesterov"])
  else:
    raise UserError(f"unknown optimizer {c['name']!r} (adamw, adam, sgd)")
  if c["grad_clip_norm"]:
    tx = optax.chain(optax.clip_by_global_norm(c["grad_clip_norm"]), tx)
  patterns = list(c["frozen"]) + list(extra_frozen)
  if patterns:
    mask = frozen_mask(params, patterns)
    labels = jax.tree.map(lambda trained: "train" if trained else "freeze", mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx, lr
