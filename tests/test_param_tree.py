"""Grafting weights into a parameter tree, and handing the grafted host arrays to jit as an
argument rather than as constants of the program (hoist_grafted)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchseg_jax.errors import CheckpointError
from sketchseg_jax.param_tree import graft, hoist_grafted, plain


class Two(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(512, name="b")(nn.Dense(512, name="a")(x))


def test_graft_replaces_named_leaves_and_refuses_misfits():
  params = Two().init(jax.random.key(0), jnp.zeros((1, 512)))["params"]
  new = np.full((512, 512), 0.5, np.float32)
  out, used = graft(params, {"a/kernel": new}, "test", strict=False)
  assert used == {"a/kernel"}
  np.testing.assert_array_equal(out["a"]["kernel"], new)
  np.testing.assert_array_equal(out["b"]["kernel"], params["b"]["kernel"])
  with pytest.raises(CheckpointError, match="a/kernel: \\(3,\\) vs \\(512, 512\\)"):
    graft(params, {"a/kernel": np.zeros(3)}, "test", strict=False)
  with pytest.raises(CheckpointError, match="b/bias: missing"):
    graft(params, {"a/kernel": new}, "test", strict=True)


def test_grafted_host_arrays_become_jit_arguments_not_constants():
  rng = np.random.default_rng(0)
  weights = {"a/kernel": rng.normal(size=(512, 512)).astype(np.float32),  # 1 MB each
             "b/kernel": jnp.asarray(rng.normal(size=(512, 512)), jnp.float32)}

  def init(key, x):
    params = Two().init(key, x)["params"]
    return graft(plain(params), weights, "test", strict=False)[0]

  key, x = jax.random.key(0), jnp.zeros((1, 512))
  jax.eval_shape(init, key, x)  # as the engine does first: a cached trace must not hide them
  g, values = hoist_grafted(init, key, x)
  assert len(values) == 2 and {v.shape for v in values} == {(512, 512)}
  embedded = len(jax.jit(init).lower(key, x).as_text())
  hoisted = len(jax.jit(g).lower(values, key, x).as_text())
  assert embedded > 2_000_000 > 100_000 > hoisted, (embedded, hoisted)
  want, got = jax.jit(init)(key, x), jax.jit(g)(values, key, x)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got["a"]["kernel"], weights["a/kernel"])
  # outside hoist_grafted, graft is unchanged
  np.testing.assert_array_equal(init(key, x)["b"]["kernel"], weights["b/kernel"])
