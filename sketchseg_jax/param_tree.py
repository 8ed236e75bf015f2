"""Parameter trees with flax's logical-partitioning boxes: unbox, flatten to '/'-paths, and
graft values into a tree (the stages that start from another run's weights use it)."""

from __future__ import annotations

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
    new = values[key]
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
