"""Parameter trees with flax's logical-partitioning boxes: unbox, flatten to '/'-paths, and
graft values into a tree (the stages that start from another run's weights use it).

Grafting happens inside a stage's `init`, which the engine runs under `jax.jit` so that the
state is born sharded. Host arrays a jitted function closes over become constants of the
program, at about twice their size in HLO text (450 MB of weights gave 906 MB of text and a
4.4 s compile on a CPU, against 0.06 s as arguments). A CLIP ViT-B/16 teacher pair is 0.7 GB
of weights; a ViT-L pair would pass protobuf's 2 GB limit. `hoist_grafted` finds those arrays
by tracing once and hands them to jit as an argument.
"""

from __future__ import annotations

import threading

import flax.linen as nn
import jax
import numpy as np

from sketchseg_jax.errors import CheckpointError


def is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def plain(tree):
  """The plain values of a tree with boxes, without sharding constraints (so it works on
  abstract values outside jit, unlike nn.unbox under a mesh)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def path_str(path) -> str:
  """'a/b/0' of a jax key path (dict keys, sequence indices, attribute names)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def flat(tree) -> dict:
  """{'a/b/c': leaf} with boxes kept as leaves."""
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0]}


def shapes(tree) -> dict:
  """{'a/b/c': shape} of a tree, boxed or not."""
  return {k: tuple((v.value if is_box(v) else v).shape) for k, v in flat(tree).items()}


class _Hoisting(threading.local):
  collect = None     # {id: host array} being filled while hoist_grafted traces
  substitute = None  # {id: traced argument} while the hoisted function traces


_HOISTING = _Hoisting()


def _hoisted(value):
  """`value`, or the jit argument that stands for it while a hoisted function traces."""
  if _HOISTING.collect is not None:
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
      _HOISTING.collect[id(value)] = value
  elif _HOISTING.substitute is not None:
    return _HOISTING.substitute.get(id(value), value)
  return value


def hoist_grafted(fn, *args):
  """(g, values) such that `jax.jit(g)(values, *args)` computes `fn(*args)` with the host
  arrays that `graft` puts into parameter trees during fn passed in `values` instead of
  embedded as constants. One abstract trace of fn finds them. `values` keeps every array
  alive, so their ids cannot be reused while g traces; an array that fn makes anew on each
  call (a resampled position grid, say) is not among them and stays a constant."""
  found: dict = {}
  _HOISTING.collect = found
  try:
    # A fresh function: eval_shape caches traces per function, and a cached one (the engine
    # has already traced fn for its shapes) would not run fn, so graft would not be seen.
    jax.eval_shape(lambda *a: fn(*a), *args)
  finally:
    _HOISTING.collect = None
  keys = list(found)

  def g(values, *inner):
    _HOISTING.substitute = dict(zip(keys, values))
    try:
      return fn(*inner)
    finally:
      _HOISTING.substitute = None
  return g, [found[k] for k in keys]


def graft(boxed, values: dict, where: str, *, strict: bool):
  """`boxed` (a parameter tree, flax boxes kept) with the leaves whose '/'-path is in `values`
  replaced; (tree, paths used). A shape mismatch is an error; with strict=True so is any leaf
  `values` lacks or any value no leaf takes."""
  used, problems = set(), []

  def one(path, leaf):
    key = path_str(path)
    shape = tuple((leaf.value if is_box(leaf) else leaf).shape)
    if key not in values:
      if strict:
        problems.append(f"{key}: missing")
      return leaf
    new = _hoisted(values[key])
    used.add(key)
    if tuple(np.shape(new)) != shape:
      problems.append(f"{key}: {tuple(np.shape(new))} vs {shape}")
      return leaf
    return leaf.replace_boxed(new) if is_box(leaf) else new
  out = jax.tree_util.tree_map_with_path(one, boxed, is_leaf=is_box)
  if strict:
    problems += [f"{k}: not in the model" for k in sorted(set(values) - used)]
  if problems:
    shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
    raise CheckpointError(f"{where} does not fit the model: {shown}")
  return out, used
