"""The engine's example stage: a ViT that names the world category of an SBIR photo.

Small enough to train on a laptop CPU in minutes, and exercising everything the real stages
use: a backbone with logical axes, the grain pipeline, sharding, checkpoints, evaluation.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.models.preprocess import normalize
from sketchseg_jax.models.vit import VisionTransformer
from sketchseg_jax.models.vit_config import ViTConfig, from_config
from sketchseg_jax.train import mesh as mesh_lib
from sketchseg_jax.train.stage import Stage


class Classifier(nn.Module):
  vit: ViTConfig
  num_classes: int

  @nn.compact
  def __call__(self, images):
    pooled = VisionTransformer(self.vit, name="backbone")(images)["pooled"]
    head = nn.Dense(self.num_classes, name="head",
                    kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("embed", "classes")))
    return head(pooled.astype(jnp.float32))


class ClassifierStage(Stage):

  def __init__(self, config):
    super().__init__(config)
    self.vit = from_config(config.model)
    self.num_classes = int(config.num_classes)
    self.model = Classifier(self.vit, self.num_classes)

  def _images(self, batch):
    return normalize(batch["image"], self.vit.family)

  def init(self, rng, batch):
    return self.model.init(rng, self._images(batch))["params"]

  def loss(self, params, batch, rng):
    logits = self.model.apply({"params": params}, self._images(batch))
    labels = batch["category_id"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, {"accuracy": accuracy}

  @functools.cached_property
  def _eval_step(self):
    return jax.jit(lambda p, b: jnp.sum(jnp.argmax(self.model.apply({"params": p}, self._images(b)), -1)
                                         == b["category_id"]))

  def evaluate(self, params, step):
    """Accuracy on config.eval_batches batches of the validation split (fixed order)."""
    cfg = {**self.data_config("val"), "shuffle": False, "num_epochs": 1, "augment": [],
           "worker_count": 0}
    sharding = mesh_lib.batch_sharding(jax.sharding.get_mesh())
    correct = total = 0
    for i, batch in enumerate(build_dataset(cfg, "val")):
      if i >= int(self.config.eval_batches):
        break
      correct += int(self._eval_step(params, mesh_lib.to_global(batch, sharding)))
      total += int(np.asarray(batch["category_id"]).shape[0]) * jax.process_count()
    return {"accuracy": correct / max(total, 1)}
