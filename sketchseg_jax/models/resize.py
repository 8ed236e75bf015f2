"""PyTorch-exact bicubic resizing of position-embedding grids.

`jax.image.resize` does not reproduce `torch.nn.functional.interpolate(mode="bicubic")`: torch
uses Keys' a=-0.75 with clamped borders, a different kernel (a=-0.5, PIL-style, normalised) when
`antialias=True`, and DINOv2's official code samples by a scale factor (with a 0.1 offset) rather
than by output size. The weights depend only on static shapes, so they are built in numpy at trace
time and applied as two small matmuls; the result matches torch to float rounding.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def bicubic_weights(in_size: int, out_size: int, scale_factor: float | None = None,
                    antialias: bool = False) -> np.ndarray:
  """(out_size, in_size) float64 matrix equal to torch's 1-D bicubic resampling.

  scale_factor: when given, torch samples with 1/scale_factor instead of in/out (DINOv2's
  official interpolation passes `(n + 0.1) / M` here). align_corners is always False.
  """
  scale = (1.0 / scale_factor) if scale_factor else in_size / out_size
  w = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    for i in range(out_size):
      src = scale * (i + 0.5) - 0.5
      base = math.floor(src)
      t = src - base
      for k, coeff in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
        w[i, min(max(base + k, 0), in_size - 1)] += coeff
    return w
  # torch's separable anti-aliased kernel: support widens with the downscale factor.
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    js = np.arange(lo, hi)
    k = _cubic((js - center + 0.5) * invscale, -0.5)
    total = k.sum()
    w[i, lo:hi] = k / total if total != 0.0 else k
  return w


def resize_grid(grid: jnp.ndarray, out_hw: tuple[int, int], *, offset: float = 0.0,
                antialias: bool = False) -> jnp.ndarray:
  """Resize a (H, W, D) grid to out_hw like torch bicubic (align_corners=False).

  offset > 0 reproduces the official DINOv2 call: scale_factor = (out + offset) / in.
  Computed in float32 whatever the grid's dtype, as both references do.
  """
  in_h, in_w = grid.shape[0], grid.shape[1]
  out_h, out_w = out_hw
  sf_h = (out_h + offset) / in_h if offset else None
  sf_w = (out_w + offset) / in_w if offset else None
  wh = jnp.asarray(bicubic_weights(in_h, out_h, sf_h, antialias), jnp.float32)
  ww = jnp.asarray(bicubic_weights(in_w, out_w, sf_w, antialias), jnp.float32)
  g = grid.astype(jnp.float32)
  hp = "highest"
  g = jnp.einsum("oh,hwd->owd", wh, g, precision=hp)
  g = jnp.einsum("pw,owd->opd", ww, g, precision=hp)
  return g.astype(grid.dtype)


def area_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) 1-D area resampling: each output cell averages the input cells it
  overlaps, weighted by the overlap (box averaging when shrinking by an integer factor,
  nearest-neighbour copying when growing by one)."""
  w = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    lo, hi = i * in_size / out_size, (i + 1) * in_size / out_size
    for j in range(int(math.floor(lo)), min(int(math.ceil(hi)), in_size)):
      w[i, j] = min(hi, j + 1) - max(lo, j)
    w[i] /= w[i].sum()
  return w


def resample_patch_kernel(kernel, patch: int):
  """A (p, p, C, D) patch-embedding kernel turned into a (patch, patch, C, D) one that embeds
  a patch as the original embeds that patch area-resampled to p x p: exactly the original
  backbone run on the image resized by p / patch. (FlexiViT's PI-resize solves the inverse
  problem; here the composition is exact, so no pseudo-inverse is needed.)"""
  r = jnp.asarray(area_weights(patch, kernel.shape[0]), jnp.float32)  # (p, patch)
  out = jnp.einsum("iy,jx,ijcd->yxcd", r, r, jnp.asarray(kernel, jnp.float32), precision="highest")
  return out.astype(kernel.dtype)


def resize_position_table(table, grid: int, leading: int = 1):
  """A (leading + g*g, D) position table (CLS rows first) resized to a grid x grid patch
  grid; bicubic, anti-aliased when shrinking (as torch's)."""
  g = math.isqrt(table.shape[0] - leading)
  if g * g != table.shape[0] - leading:
    raise ValueError(f"position table of {table.shape[0]} rows is not {leading} + a square grid")
  if g == grid:
    return table
  cells = resize_grid(jnp.asarray(table[leading:]).reshape(g, g, -1), (grid, grid),
                      antialias=grid < g)
  return jnp.concatenate([jnp.asarray(table[:leading]), cells.reshape(grid * grid, -1)], axis=0)
