"""A compact photo tower distilled from a teacher trained with configs/teacher_world.py.

  sketchseg train --config configs/teacher_world.py:runlocal --workdir /tmp/teacher
  sketchseg train --config configs/distill_world.py:runlocal --workdir /tmp/distill \
      --config.teacher.workdir=/tmp/teacher
  sketchseg eval --workdir /tmp/distill
  python benchmarks/bench_distill.py --workdir /tmp/distill     # accuracy and cost, one table

Without `runlocal` the student goes with the full-size teacher_world teacher (width 128,
depth 4, patch 8 at 48 px): the same width, depth 3 and patch 16, a quarter of the tokens and
0.26x the teacher's forward+backward FLOPs. It starts as the teacher's photo tower run on the
photo at half size (model.init_from="teacher": blocks 0, 2 and 3, prompts and projection, the
patch kernel and position grid resampled), which distils much faster than a random start.
"""

from pathlib import Path

import ml_collections

from sketchseg_jax.train.config_lib import load_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  teacher_world = load_config(str(Path(__file__).with_name("teacher_world.py"))
                              + (":runlocal" if arg.runlocal else ""))
  c = ml_collections.ConfigDict()
  c.stage = "distill"
  c.seed = 0
  # Against a 4,000-step teacher, 4,000 steps (17 min on 2 cores) keep 1.01-1.02 / 1.01 /
  # 0.98-1.02 of its acc@5 (full / partial / held-out, two seeds, ten galleries of 200);
  # 1,500 keep 0.92 / 0.86 / 0.97.
  c.total_steps = 4000
  c.log_every_steps = 25
  c.eval_every_steps = 1000
  c.nan_policy = "stop"
  c.tensorboard = True

  c.teacher = dict(
      # The workdir of a teacher training run (its config.json and checkpoints/); required,
      # pass --config.teacher.workdir=DIR. Empty only with random_init.
      workdir="",
      step=-1,  # teacher checkpoint step; -1: the newest
      # Test mode: a randomly initialised teacher of architecture `model` (tests, benchmarks).
      random_init=False,
      model=teacher_world.model.to_dict(),
      # Filled from the teacher run at training time (its saved config; its model into
      # `model`) and saved, so evaluation and export need only this run's workdir.
      run={})

  c.model = dict(
      vit=dict(family="clip", width=128, depth=3, num_heads=4, mlp_dim=512, patch_size=16,
               image_size=48, mlp="gelu", projection_dim=128, dtype="float32"),
      pool="cls",
      num_prompts=4,  # shallow prompt tokens; the teacher's photo prompts with init_from="teacher"
      # "" random; "teacher": the teacher photo backbone's weights wherever their shapes fit
      # (same width: layers evenly spaced; a larger patch: the patch kernel and position grid
      # resampled); or a path to backbone weights (backbones.load).
      init_from="teacher")
  c.distill = dict(views=["clean", "masked", "partial"], cosine=1.0, relational=1.0,
                   # InfoNCE against the teacher's batch embeddings. It helped a student from
                   # scratch (runlocal match@1 0.32 -> 0.63 at 0.3), but one started from the
                   # teacher keeps more without it: at 0.3, acc@5 keeps 0.86 / 0.99 / 0.86
                   # (full / partial / held-out), at 0 0.94 / 0.97 / 0.92 (1,500 steps against
                   # a 2,000-step teacher, ten galleries of 200).
                   contrastive=0.0, tau=0.05,
                   # KL between the teacher's and the student's softmax over the batch's
                   # photos for each of its sketches (teacher sketch tower): ranks as retrieval
                   # reads them. At 1: keeps 0.99 / 1.06 / 0.87 (as above; at 0 0.94 / 0.97 /
                   # 0.92): the seen categories gain, the held-out ones do not.
                   retrieval=0.0, retrieval_tau=0.05,
                   fill="mean", mask_grid=4, mask_sharpness=(2.0, 20.0), box_area=(0.15, 0.6))

  c.data = dict(
      source=dict(name="world", kind="sbir", size=48, num=200_000, aligned_share=0.5),
      augment=[dict(name="partition", prob=0.3, mode=["grid", "box"], blank_photo=True, fill="mean"),
               dict(name="hflip", prob=0.5),
               dict(name="colour_jitter", prob=0.5)],
      # 0: as the teacher run's data config (its photos' size).
      image_size=0, raster_size=0, sketch_width=0.0,
      batch_size=64, worker_count=1, seed=1)
  # Overrides the teacher run's eval block; the sets come from the teacher's data source.
  c.eval = dict(split="val", num=300, heldout=True, batch_size=100, seed=0,
                # galleries of `num` photos each: more queries, same difficulty, narrower intervals
                galleries=1)

  # A student that starts as the teacher needs a gentler rate than one from scratch (1e-3).
  c.optimizer = dict(name="adamw", lr=3e-4, schedule="cosine", warmup_steps=50,
                     weight_decay=0.05, grad_clip_norm=1.0)
  c.mesh = [("data", -1)]
  # The teacher's rules: its subtree is sharded as in its own run.
  c.sharding = dict(rules=[(".*", "logical")],
                    logical=[tuple(r) for r in teacher_world.sharding.logical])
  c.checkpoint = dict(every_steps=500, keep_last=2, keep_best=1, best_metric="eval/acc@5",
                      best_mode="max", async_save=True)

  if arg.runlocal:
    c.total_steps = 150
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.model.vit = dict(family="clip", width=64, depth=1, num_heads=2, mlp_dim=128, patch_size=16,
                       image_size=32, mlp="gelu", projection_dim=64, dtype="float32")
    c.data.source.size = 32
    c.data.source.num = 20_000
    c.data.batch_size = 32
    c.data.worker_count = 0
    c.eval.num = 100
    c.optimizer.warmup_steps = 10
    c.checkpoint.every_steps = 50
  return c
