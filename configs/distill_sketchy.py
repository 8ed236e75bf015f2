"""A compact photo tower distilled from a configs/teacher_sketchy.py teacher at real scale:
a CLIP ViT-B/32 student for the B/16 teacher, a quarter of the teacher's tokens and about a
quarter of its FLOPs in every segmenter step.

  sketchseg train --config configs/distill_sketchy.py:topology=v5e-64 --workdir gs://BUCKET/distill \
      --config.teacher.workdir=gs://BUCKET/teacher \
      --config.data.source.root=/path/to/sketchy
  python -m sketchseg_jax.train.step_estimate --config configs/distill_sketchy.py:topology=v5e-64
  sketchseg train --config configs/distill_sketchy.py:runlocal --workdir /tmp/ds \
      --config.teacher.workdir=/tmp/ts --config.data.source.root=/path/to/sketchy   # CPU smoke run

Then train the segmenter against it: segmenter_clip_sketchy.py with
--config.teacher.workdir=gs://BUCKET/distill (queries keep the teacher's sketch tower).

Arguments (`:k=v,...`): topology (auto default, gpu8, v4-32, v5e-64), runlocal (a tiny
student at 32 px with random weights, 2 steps, against a teacher_sketchy.py:runlocal run).
model.init_from="teacher" (default) starts the student as the teacher's photo tower run on the
photo at half size: its blocks, prompts and projection, the patch kernel resampled to 32 px
patches and the position grid to 7 x 7 (on the world's towers this start kept 0.83 of the
teacher's acc@5 after 600 steps where a random start kept 0.53). It also takes anything
sketchseg_jax.backbones.load reads (imported CLIP B/32 weights, say).
The photos are Sketchy's (the teacher's data block), seen clean, softly masked and blanked
outside a box, as the segmenter's loop shows them to the tower. In-training evaluation is off,
as for the teacher: the paired retrieval evaluator reads the world or a tfds set only.
Batches, meshes and sharding per topology are the teacher's (teacher_sketchy.py).
"""

import math
from pathlib import Path

import ml_collections

from sketchseg_jax.train.config_lib import load_config, parse_arg

EPOCHS = 10
SKETCHY_TRAIN_SKETCHES = 65_000


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, topology="auto")
  teacher = load_config(str(Path(__file__).with_name("teacher_sketchy.py"))
                        + f":topology={arg.topology}" + (",runlocal" if arg.runlocal else ""))
  batch = int(teacher.data.batch_size)
  c = ml_collections.ConfigDict()
  c.stage = "distill"
  c.seed = 0
  c.total_steps = int(round(EPOCHS * SKETCHY_TRAIN_SKETCHES / batch, -2))
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.nan_policy = "stop"
  c.tensorboard = True
  c.hardware = teacher.hardware.to_dict()

  # run: the teacher run's saved config, filled in at training time (see distill_world.py)
  c.teacher = dict(workdir="", step=-1, random_init=False, model=teacher.model.to_dict(), run={})
  c.model = dict(
      vit=dict(variant="B/32", family="clip", dtype="bfloat16", remat=False, attention="auto"),
      pool="cls", init_from="teacher",
      # the teacher's shallow photo prompts come along with init_from="teacher"
      num_prompts=0 if teacher.model.deep_prompts else int(teacher.model.num_prompts))
  c.distill = dict(views=["clean", "masked", "partial"], cosine=1.0, relational=1.0,
                   contrastive=0.0, tau=0.05, retrieval=0.0, retrieval_tau=0.05,
                   fill="mean", mask_grid=4,  # see distill_world.py
                   mask_sharpness=(2.0, 20.0), box_area=(0.15, 0.6))
  c.data = dict(source=teacher.data.source.to_dict(),
                augment=[dict(name="hflip", prob=0.5), dict(name="colour_jitter", prob=0.5)],
                image_size=0, raster_size=0, sketch_width=0.0,  # 0: the teacher run's
                batch_size=batch, worker_count=teacher.data.worker_count, seed=1)
  c.eval = teacher.eval.to_dict()
  c.optimizer = dict(name="adamw", lr=1e-4 * math.sqrt(batch / 256), schedule="cosine",
                     warmup_steps=max(c.total_steps // 20, 1), weight_decay=0.05,
                     grad_clip_norm=1.0)
  c.mesh = list(teacher.mesh)
  c.sharding = teacher.sharding.to_dict()
  c.checkpoint = dict(every_steps=500, keep_last=2, keep_best=0, best_metric=None,
                      best_mode="max", async_save=True)

  if arg.runlocal:
    c.total_steps = 2
    c.log_every_steps = 1
    c.tensorboard = False
    c.model.vit = dict(family="clip", width=32, depth=1, num_heads=2, mlp_dim=64,
                       patch_size=16, image_size=32, mlp="quick_gelu", projection_dim=32,
                       dtype="float32")
    c.optimizer.warmup_steps = 1
    c.checkpoint.async_save = False
  return c
