"""The SBIR teacher on the procedural world's SBIR kind (one object a photo, 30% on plain
backgrounds), trained from scratch: no pretrained CLIP exists for this world.

  sketchseg train --config configs/teacher_world.py:runlocal --workdir /tmp/teacher   # ~1 min
  sketchseg train --config configs/teacher_world.py --workdir /tmp/teacher            # CPU, ~15 min
  sketchseg eval --workdir /tmp/teacher

Partition-aware pairs: half the pairs are aligned (the sketch sits where the object is), and a
partitioned sketch of an aligned pair meets its photo blanked outside the same region with the
mean fill the segmenter's loop uses.
"""

import ml_collections

from sketchseg_jax.train.config_lib import parse_arg
from sketchseg_jax.train.mesh import DEFAULT_LOGICAL_RULES


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = ml_collections.ConfigDict()
  c.stage = "teacher"
  c.seed = 0
  c.total_steps = 3000
  c.log_every_steps = 25
  c.eval_every_steps = 1000
  c.nan_policy = "stop"
  c.tensorboard = True

  c.model = dict(
      vit=dict(family="clip", width=128, depth=4, num_heads=4, mlp_dim=512, patch_size=8,
               image_size=48, mlp="gelu", projection_dim=128, dtype="float32"),
      num_prompts=4, deep_prompts=False, separate_towers=True, pool="cls",
      # From scratch the whole backbone must learn and the two modalities learn faster in their
      # own towers; with pretrained CLIP share one tower and use tune="prompts_ln".
      tune="full")
  # The category term (every photo of the sketch's category a positive) lifted acc@5 / mAP@all
  # of the full sketches from 0.163 / 0.30 (1,500 steps without) to 0.175 / 0.33 in 1,000
  # steps (the quickstart's teacher).
  c.loss = dict(triplet=1.0, infonce=1.0, category=1.0, shuffle=0.0, margin=0.2,
                negatives="hard", same_category=False, tau=0.07)

  c.data = dict(
      source=dict(name="world", kind="sbir", size=48, num=200_000, aligned_share=0.5,
                  plain_background_share=0.3),
      augment=[dict(name="partition", prob=0.3, mode=["grid", "box"], blank_photo=True, fill="mean"),
               dict(name="zoom_out", prob=0.4, scale=(0.3, 0.8), fill="mean"),
               dict(name="stroke_dropout", prob=0.3, p=0.1),
               dict(name="point_jitter", prob=0.3, sigma=0.004),
               dict(name="hflip", prob=0.5),
               dict(name="colour_jitter", prob=0.5)],
      image_size=48, raster_size=48, sketch_width=2.0, batch_size=64, worker_count=1, seed=0)
  c.eval = dict(split="val", num=300, heldout=True, batch_size=100, seed=0,
                # galleries of `num` photos each: more queries, same difficulty, narrower intervals
                galleries=1)

  c.optimizer = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=200,
                     weight_decay=0.05, grad_clip_norm=1.0)
  c.mesh = [("data", -1)]
  c.sharding = dict(rules=[(".*", "logical")], logical=list(DEFAULT_LOGICAL_RULES))
  c.checkpoint = dict(every_steps=500, keep_last=2, keep_best=1, best_metric="eval/acc@5",
                      best_mode="max", async_save=True)

  if arg.runlocal:
    c.total_steps = 150
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.model.vit = dict(family="clip", width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=8,
                       image_size=32, mlp="gelu", projection_dim=64, dtype="float32")
    c.data.source.size = 32
    c.data.source.num = 20_000
    c.data.image_size = 32
    c.data.raster_size = 32
    c.data.batch_size = 32
    c.data.worker_count = 0
    c.eval.num = 100
    c.optimizer.warmup_steps = 20
    c.checkpoint.every_steps = 50
  return c
