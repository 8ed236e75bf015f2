"""The mask-free segmenter at real scale: Sketchy pairs, a CLIP ViT-B/16 backbone, against a
teacher trained with configs/teacher_sketchy.py (or its distilled tower, configs/distill_sketchy.py).

  sketchseg train --config configs/teacher_sketchy.py:topology=v5e-64 --workdir gs://BUCKET/teacher \
      --config.model.init_from=/path/to/hf/clip-vit-base-patch16 \
      --config.data.source.root=/path/to/sketchy
  sketchseg train --config configs/segmenter_clip_sketchy.py:topology=v5e-64,eval_data=/path/to/evalfolder \
      --workdir gs://BUCKET/segmenter --config.teacher.workdir=gs://BUCKET/teacher \
      --config.data.source.root=/path/to/sketchy
  sketchseg eval --workdir gs://BUCKET/segmenter            # on eval.data; or --data FOLDER
  python -m sketchseg_jax.train.step_estimate --config configs/segmenter_clip_sketchy.py:topology=v5e-64
  sketchseg train --config configs/segmenter_clip_sketchy.py:runlocal --workdir /tmp/seg \
      --config.teacher.workdir=/tmp/ts --config.data.source.root=/path/to/sketchy   # CPU smoke run

Arguments (`:k=v,...`): topology (auto default, gpu8, v4-32, v5e-64; see
sketchseg_jax.train.step_estimate), eval_data (an evaluation folder, below), runlocal (tiny
backbone at 32 px, 2 steps, against a teacher trained with teacher_sketchy.py:runlocal).

What to give:
  teacher.workdir         a teacher_sketchy (or distill_sketchy) run; required
  data.source.root        the Sketchy release, as for the teacher (svg_root likewise)
  eval_data               an evaluation folder with masks (sketchseg_jax.data.sources.eval_folder
                          layout; Sketchy has no masks): the in-training evaluation every 1000
                          steps and `sketchseg eval`'s default data. Without it there is no
                          in-training evaluation (eval_every_steps=0) and `sketchseg eval` needs
                          --data. Set later: --config.eval.data=DIR --config.eval_every_steps=1000.

The backbone starts from the teacher's photo tower (model.init_from="teacher"): CLIP B/16
weights the teacher imported, its tuned LayerNorms and photo prompts, and its post-LayerNorm
and projection as the dense head, so step 0 is the zero-shot dense similarity map. To start
from CLIP itself instead: --config.model.init_from=/path/to/hf/clip-vit-base-patch16
--config.model.num_prompts=0 (the head then starts at random). No mask is read in training.

Per topology (global batch, mesh, parameter sharding; bf16 compute, float32 weights):
  auto     batch 32    data over every device            logical rules (replicated weights)
  gpu8     batch 128   data 8                            replicated
  v4-32    batch 256   data 4 x fsdp 4 (16 chips)        backbone weights (and the frozen
  v5e-64   batch 512   data 8 x fsdp 8 (64 chips)        teacher's) fsdp; remat on v5e
Steps cover about 20 epochs of Sketchy's ~65k training pairs; the learning rate scales with
the square root of the batch from 5e-5 at 256 (full fine-tuning).
"""

import math

import ml_collections

from sketchseg_jax.train.config_lib import parse_arg
from sketchseg_jax.train.step_estimate import hardware, parallelism

SKETCHY_TRAIN_SKETCHES = 65_000
EPOCHS = 20
BATCH = {"auto": 32, "gpu8": 128, "v4-32": 256, "v5e-64": 512}


def sketchy_source() -> dict:
  return dict(name="sketchy", root="/path/to/sketchy", svg_root="sketches",
              tx="tx_000000000000", test_list="info/testset.txt")


def segmenter_augment() -> list:
  """Partial queries (no photo blanking: the segmenter must find the part in the whole
  photo), stroke noise, and sketches moved off their photo (a user draws on their own
  canvas). Thick, sparse and wobbly styles stay unseen for the robustness evaluation."""
  return [dict(name="partition", prob=0.4, mode=["grid", "box", "cluster"]),
          dict(name="stroke_dropout", prob=0.3, p=0.1),
          dict(name="point_jitter", prob=0.3, sigma=0.003),
          dict(name="affine", prob=0.5),
          dict(name="hflip", prob=0.5),
          dict(name="colour_jitter", prob=0.5)]


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, topology="auto", eval_data="")
  mesh, sharding = parallelism(arg.topology)
  batch = BATCH[arg.topology]

  c = ml_collections.ConfigDict()
  c.stage = "segmenter"
  c.seed = 0
  c.total_steps = int(round(EPOCHS * SKETCHY_TRAIN_SKETCHES / batch, -2))
  c.log_every_steps = 50
  c.eval_every_steps = 1000 if arg.eval_data else 0
  c.nan_policy = "stop"
  c.tensorboard = True
  c.hardware = hardware(arg.topology)

  c.teacher = dict(workdir="", step=-1, random_init=False,
                   kind="", model={}, student={}, data={})  # filled from the run
  c.model = dict(
      vit=dict(variant="B/16", family="clip", dtype="bfloat16", attention="auto",
               remat=arg.topology == "v5e-64"),
      init_from="teacher", head="linear", head_hidden=0, adapter=False,
      num_prompts=-1,  # the teacher's photo prompts
      alpha_init=10.0, beta_init=-2.0, tune="full", last_k=None)
  # Sketchy's objects fill much of the photo: a wide area band, the size set by the linear
  # cost with L_out rather than by the band.
  total = c.total_steps
  c.loss = dict(in_weight=1.0, tau=0.07, drop_same_category=False, out=0.5, margin=0.1,
                area=1.0, area_low=0.05, area_high=0.7, area_linear=0.2, tv=0.1,
                bin=0.1, bin_ramp=(total // 5, 3 * total // 5), straight_through=False,
                fill="mean", blur_sigma=3.0, edge_tv=0.0, edge_sigma=0.1, edge_offsets=(1, 2, 4))
  # Teacher-ranked colour-region proposals (configs/segmenter_world.py uses them): off here,
  # since real photos' regions are less often whole objects; --config.proposals.weight=3.
  c.proposals = dict(weight=0.0, count=12, threshold=20.0, min_area=0.004, max_area=0.4,
                     zoom=1.5, zoom_min=0.15, keep=1.0)

  c.data = dict(source=sketchy_source(), augment=segmenter_augment(), image_size=224,
                raster_size=0, sketch_width=0.0,  # 0: the teacher's
                max_queries=1, batch_size=batch, worker_count=8, seed=2)
  c.eval = dict(data=arg.eval_data, split="val", num=500, heldout=True, batch_size=64, seed=0,
                grid=12, quick_num=256, styles=["thick", "sparse", "wobbly"],
                granularities=["object", "part", "group", "instance", "category"])

  c.optimizer = dict(name="adamw", lr=5e-5 * math.sqrt(batch / 256), schedule="cosine",
                     warmup_steps=max(total // 20, 1), weight_decay=0.05, grad_clip_norm=1.0)
  c.mesh = mesh
  c.sharding = sharding
  c.checkpoint = dict(every_steps=500, keep_last=2, keep_best=1 if arg.eval_data else 0,
                      best_metric="eval/miou/all" if arg.eval_data else None,
                      best_mode="max", async_save=True)

  if arg.runlocal:
    # The teacher's tiny architecture (teacher_sketchy.py:runlocal) at 32 px on a CPU.
    c.total_steps = 2
    c.log_every_steps = 1
    c.tensorboard = False
    c.model.vit = None
    c.data.image_size = 32
    c.data.batch_size = 8
    c.data.worker_count = 0
    c.eval.num = 8
    c.eval.quick_num = 8
    c.eval.batch_size = 8
    c.eval.grid = 4
    c.loss.bin_ramp = (0, 2)
    c.optimizer.warmup_steps = 1
    c.checkpoint.async_save = False
  return c
