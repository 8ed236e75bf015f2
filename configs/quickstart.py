"""The quickstart: the whole method on the procedural world, on a laptop CPU.

  sketchseg train --config configs/quickstart.py --workdir /tmp/quickstart

trains, in order and each in its own workdir under /tmp/quickstart:
  teacher/     the SBIR teacher (configs/teacher_world.py, shortened)
  distill/     a compact photo tower distilled from it (configs/distill_world.py)
  segmenter/   the mask-free segmenter against the teacher (configs/segmenter_world.py:
               logits pooled over colour regions)
  supervised/  the same segmenter (colour-region pooling too) trained on true masks: the
               upper bound
then evaluates every stage (each workdir's eval/metrics.json), writes report.md (the table)
and grid.png, and exports the segmenter to export/ (PyTorch + ONNX). A second run of the
same command resumes (finished stages are kept). `sketchseg eval --workdir /tmp/quickstart`
re-runs the evaluations and the report.

The segmenter trains against the full teacher here (links.segmenter="teacher"): at 48 px its
photo tower costs little, and it is the reference signal;
`--config.links.segmenter=distill` trains against the distilled tower instead.
Any stage's setting is overridable: --config.segmenter.total_steps=2000.
`:runlocal` is a smoke run of the whole chain (a couple of minutes; the tests run it).
"""

from pathlib import Path

import ml_collections

from sketchseg_jax.train.config_lib import load_config, parse_arg

HERE = Path(__file__).parent


def _load(name, arg=""):
  return load_config(str(HERE / name) + (f":{arg}" if arg else ""))


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  local = "runlocal" if arg.runlocal else ""
  c = ml_collections.ConfigDict()
  c.stage = "chain"
  c.chain = ["teacher", "distill", "segmenter", "supervised"]
  # stage -> the stage whose workdir its config.teacher.workdir names
  c.links = {"distill": "teacher", "segmenter": "teacher", "supervised": "teacher"}
  c.report = dict(export=True)

  teacher = _load("teacher_world.py", local)
  distill = _load("distill_world.py", local)
  segmenter = _load("segmenter_world.py", local)
  supervised = _load("segmenter_world.py", ",".join(filter(None, [local, "supervised"])))
  for sub in (teacher, distill, segmenter, supervised):
    sub.unlock()
    sub.tensorboard = False
    sub.eval_every_steps = 0
    sub.checkpoint.keep_best = 0

  if arg.runlocal:
    for sub in (teacher, distill, segmenter, supervised):
      sub.total_steps = 3
      sub.log_every_steps = 1
      sub.checkpoint.async_save = False
    teacher.eval.num = 16
    distill.eval.num = 16
    distill.data.batch_size = 16
    for sub in (segmenter, supervised):
      sub.data.batch_size = 8
      sub.data.source.size = 32
      sub.data.image_size = 32
      sub.eval.num = 8
      sub.eval.batch_size = 8
      sub.eval.grid = 4
  else:
    teacher.total_steps = 1000
    teacher.loss.category = 1.0
    teacher.eval.num = 200
    teacher.checkpoint.every_steps = 1000
    # Sized for the 20-minute budget on 2 cores: 350 segmenter steps (the config's 500 took
    # 434 s of a 25-minute chain on a slow day), a 200-step distillation.
    distill.total_steps = 200
    distill.eval.num = 200
    segmenter.total_steps = 350
    supervised.total_steps = 300
    segmenter.eval.num = 150
    supervised.eval.num = 150
    supervised.eval.styles = []

  c.teacher, c.distill, c.segmenter, c.supervised = teacher, distill, segmenter, supervised
  return c
