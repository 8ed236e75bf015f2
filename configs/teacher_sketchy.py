"""The SBIR teacher at real scale: Sketchy, CLIP ViT-B/16 (or B/32) imported from a local
checkpoint, shared towers with learned prompts, LayerNorms tuned, the rest frozen.

  sketchseg train --config configs/teacher_sketchy.py:topology=v5e-64 --workdir gs://BUCKET/teacher \
      --config.model.init_from=/path/to/hf/clip-vit-base-patch16 \
      --config.data.source.root=/path/to/sketchy
  sketchseg train --config configs/teacher_sketchy.py:variant=B/32,topology=gpu8 --workdir /runs/t32 \
      --config.model.init_from=/path/to/hf/clip-vit-base-patch32 \
      --config.data.source.root=/path/to/sketchy
  python -m sketchseg_jax.train.step_estimate --config configs/teacher_sketchy.py:topology=v5e-64
  sketchseg train --config configs/teacher_sketchy.py:runlocal --workdir /tmp/ts \
      --config.data.source.root=/path/to/sketchy     # CPU smoke run: tiny random towers, 2 steps

Arguments (`:k=v,...`): variant (B/16 default, B/32), topology (auto default, gpu8, v4-32,
v5e-64: mesh, sharding, global batch; see sketchseg_jax.train.step_estimate), deep_prompts
(prompt tokens replaced before every block instead of only at the input), runlocal.

Paths to give (the defaults are placeholders that fail with their own name):
  model.init_from         a Hugging Face CLIP folder (openai/clip-vit-base-patch16 or -patch32,
                          the vision tower and visual projection are read), an OpenAI / open_clip
                          state dict, or a `sketchseg convert` output (sketchseg_jax.backbones.load)
  data.source.root        the Sketchy release: ROOT/256x256/photo/tx_000000000000/<class>/*.jpg
                          and ROOT/info/ (invalid-*.txt, testset.txt)
  data.source.svg_root    the SVG sketches, <svg_root>/<class>/<photo_id>-<k>.svg; default
                          ROOT/sketches (link the release's sketches folder there, or pass an
                          absolute path)
The official split: photos in info/testset.txt are held out; the invalid sketches listed in
info/ are left out. SVG sketches with the untouched tx_000000000000 photos make aligned pairs,
so a partitioned sketch meets its photo blanked outside the same region (mean fill, as the
segmenter's loop fills), the partition-aware positive of METHOD.md.

`sketchseg eval --workdir DIR` ranks eval.num sketches of the test split against their photos
(one gallery entry per photo; with heldout_classes set on the source, also the held-out
classes). In-training evaluation is off (eval_every_steps=0) to keep steps uninterrupted.

Per topology (global batch, mesh, parameter sharding; bf16 compute, float32 weights):
  auto     batch 64    data over every device            logical rules (replicated weights)
  gpu8     batch 256   data 8                            replicated
  v4-32    batch 512   data 4 x fsdp 4 (16 chips)        backbone weights fsdp over "fsdp"
  v5e-64   batch 1024  data 8 x fsdp 8 (64 chips)        backbone weights fsdp; remat on B/16
Steps cover about 30 epochs of Sketchy's ~65k training sketches at the topology's batch; the
learning rate scales with the square root of the batch from 5e-4 at 256.
"""

import math

import ml_collections

from sketchseg_jax.errors import UserError
from sketchseg_jax.train.config_lib import parse_arg
from sketchseg_jax.train.step_estimate import hardware, parallelism

SKETCHY_TRAIN_SKETCHES = 65_000  # about: 75,471 sketches less the test photos' and invalid ones
EPOCHS = 30
BATCH = {"auto": 64, "gpu8": 256, "v4-32": 512, "v5e-64": 1024}
VARIANTS = ("B/16", "B/32")


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, variant="B/16", topology="auto", deep_prompts=False)
  if arg.variant not in VARIANTS:
    raise UserError(f"teacher_sketchy: variant must be one of {VARIANTS}, got {arg.variant!r}")
  mesh, sharding = parallelism(arg.topology)
  batch = BATCH[arg.topology]
  patch = int(arg.variant.split("/")[1])

  c = ml_collections.ConfigDict()
  c.stage = "teacher"
  c.seed = 0
  c.total_steps = int(round(EPOCHS * SKETCHY_TRAIN_SKETCHES / batch, -2))
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.nan_policy = "stop"
  c.tensorboard = True
  c.hardware = hardware(arg.topology)

  c.model = dict(
      # The architecture of the checkpoint (Hugging Face / OpenAI CLIP: QuickGELU, eps 1e-5,
      # projection 512); compute in bf16, weights and optimizer state in float32; cuDNN's
      # attention kernel on NVIDIA GPUs (H200: the segmenter step 0.8x of XLA's).
      vit=dict(variant=arg.variant, family="clip", dtype="bfloat16", attention="auto",
               remat=arg.topology == "v5e-64" and patch == 16),
      init_from=f"/path/to/hf/clip-vit-base-patch{patch}",
      num_prompts=4, deep_prompts=arg.deep_prompts, separate_towers=False, pool="cls",
      tune="prompts_ln")
  # Fine-grained Sketchy: triplet negatives from the sketch's own category where the batch
  # has one; the category term keeps categories apart while the prompts are still untrained.
  c.loss = dict(triplet=1.0, infonce=1.0, category=0.2, shuffle=0.0, margin=0.3,
                negatives="hard", same_category=True, tau=0.07)

  c.data = dict(
      source=dict(name="sketchy", root="/path/to/sketchy", svg_root="sketches",
                  tx="tx_000000000000", test_list="info/testset.txt"),
      # partition first: it needs the aligned pair that affine then loosens.
      augment=[dict(name="partition", prob=0.3, mode=["grid", "box", "cluster"],
                    blank_photo=True, fill="mean"),
               dict(name="hflip", prob=0.5),
               dict(name="stroke_dropout", prob=0.3, p=0.1),
               dict(name="point_jitter", prob=0.3, sigma=0.003),
               dict(name="affine", prob=0.3, scale=(0.9, 1.1), rotation=(-10.0, 10.0),
                    shear=(-5.0, 5.0), translate=((-0.05, 0.05), (-0.05, 0.05))),
               dict(name="colour_jitter", prob=0.3)],
      image_size=224, raster_size=224, sketch_width=3.0, batch_size=batch,
      worker_count=8, seed=0)
  c.eval = dict(split="test", num=2000, heldout=True, batch_size=256, seed=0,
                # galleries of `num` photos each: more queries, same difficulty, narrower intervals
                galleries=1)

  c.optimizer = dict(name="adamw", lr=5e-4 * math.sqrt(batch / 256), schedule="cosine",
                     warmup_steps=max(c.total_steps // 20, 1),
                     # No decay: only prompts and LayerNorm scales train, and decay would pull
                     # the LayerNorm scales away from the pretrained ones towards 0.
                     weight_decay=0.0, grad_clip_norm=1.0)
  c.mesh = mesh
  c.sharding = sharding
  c.checkpoint = dict(every_steps=500, keep_last=2, keep_best=0, best_metric=None,
                      best_mode="max", async_save=True)

  if arg.runlocal:
    # Tiny random towers at 32 px on a CPU; the topology's mesh and sharding stay.
    c.total_steps = 2
    c.log_every_steps = 1
    c.tensorboard = False
    c.model.vit = dict(family="clip", width=32, depth=1, num_heads=2, mlp_dim=64,
                       patch_size=8 if patch == 16 else 16, image_size=32, mlp="quick_gelu",
                       projection_dim=32, dtype="float32", remat=c.model.vit.remat)
    c.model.init_from = ""
    c.data.image_size = 32
    c.data.raster_size = 32
    c.data.sketch_width = 1.5
    c.data.batch_size = 8
    c.data.worker_count = 0
    c.eval.batch_size = 8
    c.eval.num = 6
    c.optimizer.warmup_steps = 1
    c.checkpoint.async_save = False
  return c
