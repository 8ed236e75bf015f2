"""The engine's example: a small ViT classifying procedural-world categories from photos.

  sketchseg train --config configs/world_classifier.py:runlocal --workdir /tmp/wc
  sketchseg train --config configs/world_classifier.py --workdir /tmp/wc --config.total_steps=5000

Arguments (after the colon): runlocal (a CPU smoke run of about two minutes),
variant=S/16 etc. (a standard ViT size instead of the small default).
"""

import ml_collections

from sketchseg_jax.data.world import CATEGORY_NAMES
from sketchseg_jax.train.config_lib import parse_arg
from sketchseg_jax.train.mesh import DEFAULT_LOGICAL_RULES


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, variant="")
  c = ml_collections.ConfigDict()
  c.stage = "world_classifier"
  c.seed = 0
  c.total_steps = 3000
  c.log_every_steps = 25
  c.eval_every_steps = 500
  c.eval_batches = 8
  c.nan_policy = "stop"
  c.tensorboard = True
  c.num_classes = len(CATEGORY_NAMES)

  c.model = dict(family="clip", width=192, depth=6, num_heads=3, mlp_dim=768, patch_size=8,
                 image_size=64, mlp="gelu", dtype="float32", remat=False, scan_layers=False)
  if arg.variant:
    c.model = dict(variant=arg.variant, family="clip", image_size=64, dtype="float32")

  c.data = dict(
      source=dict(name="world", kind="sbir", size=64, num=100_000),
      augment=[dict(name="crop", prob=0.5, scale=(0.7, 1.0)), dict(name="hflip", prob=0.5),
               dict(name="colour_jitter", prob=0.5)],
      image_size=64, raster_size=16, batch_size=64, worker_count=2, seed=0)

  c.optimizer = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=200,
                     weight_decay=0.05, grad_clip_norm=1.0)
  # Data parallel over every device; for FSDP use mesh [("data", 2), ("fsdp", -1)] and
  # sharding.rules [(".*", "fsdp")]; for tensor parallel, a "model" axis with the logical
  # rules below.
  c.mesh = [("data", -1)]
  c.sharding = dict(rules=[(".*", "logical")], logical=list(DEFAULT_LOGICAL_RULES))
  c.checkpoint = dict(every_steps=500, keep_last=3, keep_best=1, best_metric="eval/accuracy",
                      best_mode="max", async_save=True)

  if arg.runlocal:
    c.total_steps = 60
    c.log_every_steps = 5
    c.eval_every_steps = 30
    c.eval_batches = 2
    c.model = dict(family="clip", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
                   image_size=32, mlp="gelu", dtype="float32", remat=False, scan_layers=False)
    c.data.source.size = 32
    c.data.source.num = 2000
    c.data.image_size = 32
    c.data.batch_size = 16
    c.data.worker_count = 0
    c.optimizer.warmup_steps = 5
    c.checkpoint.every_steps = 10
  return c
