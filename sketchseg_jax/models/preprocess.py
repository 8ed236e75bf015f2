"""Photo normalisation each backbone family was trained with."""

from __future__ import annotations

import jax.numpy as jnp

MEAN_STD = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalize(images, family: str):
  """uint8 (or [0, 255] float) NHWC photos -> float32 normalised for `family`."""
  mean, std = MEAN_STD[family]
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
