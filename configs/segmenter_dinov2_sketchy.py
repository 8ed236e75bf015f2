"""The mask-free segmenter at real scale with a DINOv2 ViT-B/14 backbone (with or without
register tokens) imported from a local checkpoint, against a teacher trained with
configs/teacher_sketchy.py. Everything but the backbone is configs/segmenter_clip_sketchy.py.

  sketchseg train --config configs/segmenter_dinov2_sketchy.py:topology=v5e-64,eval_data=/path/to/evalfolder \
      --workdir gs://BUCKET/seg_dinov2 --config.teacher.workdir=gs://BUCKET/teacher \
      --config.model.init_from=/path/to/hf/dinov2-with-registers-base \
      --config.data.source.root=/path/to/sketchy
  sketchseg train --config configs/segmenter_dinov2_sketchy.py:registers=False,topology=gpu8 \
      --workdir /runs/seg_dinov2 --config.teacher.workdir=/runs/teacher \
      --config.model.init_from=/path/to/hf/dinov2-base --config.data.source.root=/path/to/sketchy
  python -m sketchseg_jax.train.step_estimate --config configs/segmenter_dinov2_sketchy.py:topology=v5e-64
  sketchseg train --config configs/segmenter_dinov2_sketchy.py:runlocal --workdir /tmp/segd \
      --config.teacher.workdir=/tmp/ts --config.data.source.root=/path/to/sketchy   # CPU smoke run

Arguments (`:k=v,...`): registers (True default: facebook/dinov2-with-registers-base, 4
register tokens; False: facebook/dinov2-base), topology, eval_data, runlocal (a tiny DINOv2 at
32 px with random weights, 2 steps), as in segmenter_clip_sketchy.py.

model.init_from is required: a Hugging Face DINOv2 folder (the default is a placeholder that
fails with its own name) or an official DINOv2 state dict (dinov2_vitb14[_reg4]_pretrain.pth;
that code interpolates positions differently: add --config.model.vit.pos_interp_offset=0.1).
model.vit keeps the checkpoint's 37x37 position table (image_size 518) and the 224 px photos
(16x16 patches) interpolate it the way Hugging Face does (antialiased with registers).
No CLIP head exists for DINOv2 tokens, so the dense head (an MLP into the teacher's space)
starts at random; the first 8 blocks stay frozen (tune="last_k", last_k=4), which keeps
DINOv2's dense features while the head learns and costs less than full fine-tuning.
"""

import math
from pathlib import Path

from sketchseg_jax.train.config_lib import load_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False, topology="auto", eval_data="", registers=True)
  inner = ",".join(filter(None, [f"topology={arg.topology}",
                                 f"eval_data={arg.eval_data}" if arg.eval_data else "",
                                 "runlocal" if arg.runlocal else ""]))
  c = load_config(str(Path(__file__).with_name("segmenter_clip_sketchy.py")) + ":" + inner)
  c.unlock()
  registers = 4 if arg.registers else 0
  c.model.vit = dict(variant="B/14", family="dinov2", num_registers=registers,
                     pos_interp_antialias=bool(registers), dtype="bfloat16",
                     attention="auto", remat=arg.topology == "v5e-64")
  c.model.init_from = ("/path/to/hf/dinov2-with-registers-base" if registers
                       else "/path/to/hf/dinov2-base")
  c.model.head = "mlp"
  c.model.head_hidden = 1536
  c.model.num_prompts = 0
  c.model.tune = "last_k"
  c.model.last_k = 4
  c.optimizer.lr = 1e-4 * math.sqrt(c.data.batch_size / 256)

  if arg.runlocal:
    # DINOv2's exact GELU and eps, as the B/14 variant above has them.
    c.model.vit = dict(family="dinov2", width=32, depth=2, num_heads=2, mlp_dim=64,
                       mlp="gelu", layer_norm_eps=1e-6,
                       patch_size=8, image_size=32, num_registers=registers,
                       pos_interp_antialias=bool(registers), dtype="float32",
                       remat=arg.topology == "v5e-64")
    c.model.init_from = ""
    c.model.head_hidden = 32
    c.model.last_k = 1
    c.optimizer.lr = 1e-4 * math.sqrt(c.data.batch_size / 256)
  return c
