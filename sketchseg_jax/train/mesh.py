"""Device mesh and shardings from config.

Mesh: `config.mesh = [("data", -1)]` or `[("data", 2), ("fsdp", -1)]`; -1 takes the devices
the other axes leave. Axes are Auto so logical constraints inside the models guide XLA.

Parameter shardings, first match wins, on '/'-joined parameter paths (re.search):
  config.sharding.rules = [(regex, spec), ...] with spec one of
    "replicate"          every device holds the whole array
    "fsdp" / "fsdp:AXIS" the largest dimension divisible by the axis size is split over AXIS
                         (default axis "fsdp"); arrays with no divisible dimension replicate
    "logical"            the model's own logical axis names, mapped by config.sharding.logical
    [None, "model", ...] an explicit PartitionSpec
  Anything unmatched replicates. Optimizer state follows the parameter it belongs to.
Batches are split over every data-parallel axis present (`data`, `fsdp`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sketchseg_jax.errors import UserError
from sketchseg_jax.param_tree import path_str, plain

DATA_AXES = ("data", "fsdp")

# The models' logical axes on mesh axes: data parallel over "data", tensor parallel over
# "model" where the mesh has one (fit_logical_rules drops axes a mesh lacks).
DEFAULT_LOGICAL_RULES = (("batch", "data"), ("embed", None), ("mlp", "model"), ("heads", "model"),
                         ("length", None), ("layers", None), ("classes", None), ("proj", None))


def make_mesh(spec: Sequence, devices=None) -> jax.sharding.Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names = [str(n) for n, _ in spec]
  sizes = [int(s) for _, s in spec]
  if len(set(names)) != len(names):
    raise UserError(f"mesh axis names repeat: {names}")
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {list(spec)}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise UserError(f"mesh {list(spec)} does not fit {len(devices)} devices")
  if -1 not in sizes and known < len(devices) and jax.process_count() == 1:
    devices = devices[:known]  # a smaller mesh on one host: the first devices
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise UserError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                    f"there are {len(devices)}")
  return jax.make_mesh(tuple(sizes), tuple(names), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def data_axes(mesh) -> tuple:
  return tuple(a for a in mesh.axis_names if a in DATA_AXES)


def batch_sharding(mesh) -> NamedSharding:
  axes = data_axes(mesh)
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fit_logical_rules(rules: Sequence, mesh) -> list:
  """Logical rules with mesh axes this mesh lacks replaced by None, so one config serves a
  data-parallel mesh and a tensor-parallel one alike."""
  def present(ax):
    if ax is None:
      return None
    if isinstance(ax, (list, tuple)):
      kept = tuple(a for a in ax if a in mesh.axis_names)
      return kept or None
    return ax if ax in mesh.axis_names else None
  return [(name, present(ax)) for name, ax in rules]


def _fsdp_spec(shape, axis, mesh):
  size = mesh.shape[axis]
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % size == 0 and shape[d] >= size:
      spec = [None] * len(shape)
      spec[d] = axis
      return P(*spec)
  return P()


def _spec_for(path: str, shape, rules, logical_spec, mesh, logical_rules):
  for pattern, spec in rules:
    if not re.search(pattern, path):
      continue
    if spec == "replicate":
      return P()
    if isinstance(spec, str) and spec.startswith("fsdp"):
      axis = spec.partition(":")[2] or "fsdp"
      if axis not in mesh.axis_names:
        raise UserError(f"sharding rule {pattern!r}: mesh has no axis {axis!r}")
      return _fsdp_spec(shape, axis, mesh)
    if spec == "logical":
      if logical_spec is None:
        return P()
      return nn.logical_to_mesh_axes(logical_spec, logical_rules)
    if isinstance(spec, (list, tuple)):
      if len(spec) != len(shape):
        raise UserError(f"sharding rule {pattern!r}: spec {spec} has {len(spec)} dims, "
                        f"{path} has shape {shape}")
      return P(*spec)
    raise UserError(f"sharding rule {pattern!r}: unknown spec {spec!r}")
  return P()


def param_shardings(abstract_params, mesh, rules: Sequence = (),
                    logical_rules: Sequence = ()) -> Any:
  """NamedShardings for a (possibly logically boxed) abstract parameter tree."""
  logical = nn.get_partition_spec(abstract_params)
  values = plain(abstract_params)
  logical_by_path = {path_str(p): s for p, s in
                     jax.tree_util.tree_flatten_with_path(
                         logical, is_leaf=lambda x: isinstance(x, P))[0]}

  def one(path, leaf):
    key = path_str(path)
    spec = _spec_for(key, leaf.shape, rules, logical_by_path.get(key), mesh, logical_rules)
    return NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(one, values)


def follow_params(abstract_tree, params_shardings, mesh) -> Any:
  """Shardings for a tree (optimizer state) whose leaves sit under parameter paths: a leaf
  takes the sharding of the parameter whose path ends its own and whose shape it has."""
  by_path = {path_str(p): s for p, s in
             jax.tree_util.tree_flatten_with_path(params_shardings,
                                                  is_leaf=lambda x: isinstance(x, NamedSharding))[0]}

  def one(path, leaf):
    parts = path_str(path).split("/")
    for i in range(len(parts)):
      s = by_path.get("/".join(parts[i:]))
      if s is not None and len(s.spec) <= len(getattr(leaf, "shape", ())):
        return s
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def to_global(batch: Mapping, sharding) -> dict:
  """Per-process numpy batch -> global jax arrays laid out by `sharding`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
