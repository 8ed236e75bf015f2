"""Apply a key/layout table: PyTorch state dict <-> flat Flax parameters, strictly."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

from sketchseg_jax.errors import CheckpointError
from sketchseg_jax.convert.tables import Rule, to_flax, to_torch
from sketchseg_jax.models.vit_config import ViTConfig

_LAYER = re.compile(r"^encoder/layers_(\d+)/(.*)$")


def flatten(tree: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: Mapping) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def unstack_layers(flat: Mapping, cfg: ViTConfig) -> dict:
  """Scan-over-layers trees keep `encoder/layers/...` with a leading depth axis; split it."""
  if not cfg.scan_layers:
    return dict(flat)
  out = {}
  for k, v in flat.items():
    if k.startswith("encoder/layers/"):
      rest = k[len("encoder/layers/"):]
      for i in range(cfg.depth):
        out[f"encoder/layers_{i}/{rest}"] = np.asarray(v[i])
    else:
      out[k] = v
  return out


def stack_layers(flat: Mapping, cfg: ViTConfig) -> dict:
  if not cfg.scan_layers:
    return dict(flat)
  out, per_layer = {}, {}
  for k, v in flat.items():
    m = _LAYER.match(k)
    if m:
      per_layer.setdefault(m.group(2), {})[int(m.group(1))] = v
    else:
      out[k] = v
  for rest, by_index in per_layer.items():
    out[f"encoder/layers/{rest}"] = np.stack([by_index[i] for i in range(cfg.depth)])
  return out


def _listing(keys: Iterable[str], limit: int = 12) -> str:
  keys = sorted(keys)
  shown = ", ".join(keys[:limit])
  return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def import_state_dict(sd: Mapping[str, np.ndarray], rules: list, *, source: str,
                      ignore: Iterable[str] = ()) -> dict:
  """Flat Flax params from a PyTorch state dict. Every key of `sd` must be used by a rule or
  match one of the `ignore` regexes; every rule's key must be present."""
  ignore_re = [re.compile(p) for p in ignore]
  missing = [r.torch for r in rules if r.torch not in sd]
  used = {r.torch for r in rules}
  unexpected = [k for k in sd if k not in used and not any(p.match(k) for p in ignore_re)]
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
      parts.append(f"unexpected keys: {_listing(unexpected)}")
    raise CheckpointError(f"{source}: does not match the expected layout; " + "; ".join(parts))
  flat = {}
  for r in rules:
    a = np.asarray(sd[r.torch])
    pieces = np.split(a, len(r.flax), axis=0) if len(r.flax) > 1 else [a]
    if len(r.flax) > 1 and a.shape[0] % len(r.flax):
      raise CheckpointError(f"{source}: {r.torch} of shape {a.shape} cannot be split into "
                            f"{len(r.flax)} equal parts")
    for path, piece in zip(r.flax, pieces):
      flat[path] = np.ascontiguousarray(to_flax(r.kind, piece))
  return flat


def export_state_dict(flat: Mapping[str, np.ndarray], rules: list) -> dict:
  """PyTorch state dict (numpy arrays, torch layout) from flat Flax params."""
  used = {p for r in rules for p in r.flax}
  extra = sorted(set(flat) - used)
  missing = sorted(used - set(flat))
  if extra or missing:
    raise CheckpointError("parameters do not match the export layout; "
                          f"missing: {_listing(missing)}; not exported: {_listing(extra)}")
  sd = {}
  for r in rules:
    pieces = [to_torch(r.kind, np.asarray(flat[p])) for p in r.flax]
    sd[r.torch] = np.ascontiguousarray(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, 0))
  return sd


def check_shapes(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str):
  """Names every parameter whose shape differs from what the config implies."""
  bad = [f"{k}: checkpoint {tuple(np.shape(flat[k]))} vs model {tuple(s)}"
         for k, s in expected.items() if k in flat and tuple(np.shape(flat[k])) != tuple(s)]
  gone = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if bad or gone or extra:
    msg = [f"{source}: parameters do not fit the architecture its config describes"]
    if bad:
      msg.append("shape mismatches: " + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    if gone:
      msg.append(f"missing: {_listing(gone)}")
    if extra:
      msg.append(f"unexpected: {_listing(extra)}")
    raise CheckpointError("; ".join(msg))



__all__ = ["Rule", "flatten", "unflatten", "stack_layers", "unstack_layers", "import_state_dict",
           "export_state_dict", "check_shapes"]
