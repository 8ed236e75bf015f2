"""The teacher's photo tower against the distilled one: forward+backward time per photo (the
gradient with respect to the photo, as the segmenter takes it), one run, one table.

  python benchmarks/bench_distill.py [--workdir DISTILL_DIR] [--batch 32] [--clip-batch 2]
                                     [--iters 10] [--clip-students B/32,S/16] [--no-clip]

Rows: the world configs (configs/teacher_world.py against configs/distill_world.py, runlocal
and full size), a CLIP ViT-B/16 teacher (4 shallow prompt tokens) against compact students at
224 px, and with --workdir the towers of a distillation run with their retrieval on the
evaluation sets ("full": acc@5 of (teacher sketch, teacher photo) and (teacher sketch,
student photo), and keeps = their ratio). Weights are random where no run is given: the time
does not depend on them. Both towers are timed alternately on the same batch, fastest of
--iters. GFLOPs are XLA's count for one photo's forward+backward. Goal (issue 7): keeps >= 0.95
at a time ratio <= 1/3.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sketchseg_jax.models.sbir import SBIRTeacher  # noqa: E402
from sketchseg_jax.models.vit_config import from_config, variant  # noqa: E402
from sketchseg_jax.param_tree import plain  # noqa: E402
from sketchseg_jax.stages.distill import (  # noqa: E402
    PhotoStudent, embed_width, input_grad_flops, student_from_config)
from sketchseg_jax.train.config_lib import load_config  # noqa: E402


def teacher_from_model_config(m) -> SBIRTeacher:
  vit = from_config(m["vit"])
  if m.get("pool", "cls") == "mean":
    vit = vit.replace(dense_projection=True)
  return SBIRTeacher(vit, num_prompts=int(m["num_prompts"]), deep_prompts=bool(m["deep_prompts"]),
                     separate_towers=bool(m["separate_towers"]), pool=str(m.get("pool", "cls")))


def towers(teacher: SBIRTeacher, student: PhotoStudent, size: int, params=None):
  """(teacher fn, teacher params, student fn, student params) for photos of `size`."""
  if params is None:
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    ink = jnp.zeros((1, size, size), jnp.float32)
    params = {"teacher": plain(jax.jit(teacher.init)(jax.random.key(0), x, ink)["params"]),
              "student": plain(jax.jit(student.init)(jax.random.key(1), x)["params"])}
  t_fn = lambda p, im: teacher.apply({"params": p}, im, method=SBIRTeacher.photo)
  s_fn = lambda p, im: student.apply({"params": p}, im)
  return t_fn, params["teacher"], s_fn, params["student"]


def input_grad_step(fn, params, batch: int, size: int):
  """A jitted photo -> d(sum(w . embedding))/d(photo) and the batch it runs on."""
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)), jnp.float32)
  width = jax.eval_shape(fn, params, x[:1]).shape[-1]
  w = jnp.asarray(np.random.default_rng(1).normal(size=(batch, width)), jnp.float32)
  step = jax.jit(jax.grad(lambda p, im: jnp.sum(fn(p, im) * w), argnums=1))
  return lambda: step(params, x).block_until_ready()


def time_pair(run_a, run_b, iters: int) -> tuple:
  """Fastest seconds of each over `iters`, timed alternately: on a shared machine the minimum
  is the run least disturbed by other work, and alternating exposes both to the same load."""
  for _ in range(2):
    run_a()
    run_b()
  ta, tb = [], []
  for _ in range(iters):
    t0 = time.perf_counter()
    run_a()
    ta.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    run_b()
    tb.append(time.perf_counter() - t0)
  return float(np.min(ta)), float(np.min(tb))


def row(name, teacher, student, size, batch, iters, params=None, retrieval=None):
  t_fn, t_p, s_fn, s_p = towers(teacher, student, size, params)
  t_s, s_s = time_pair(input_grad_step(t_fn, t_p, batch, size),
                       input_grad_step(s_fn, s_p, batch, size), iters)
  t_fl, s_fl = input_grad_flops(t_fn, t_p, size), input_grad_flops(s_fn, s_p, size)
  acc = "       -        -      -"
  if retrieval:
    acc = f"{retrieval['teacher']:8.3f} {retrieval['student']:8.3f} {retrieval['keeps']:6.3f}"
  print(f"{name:34s} {size:4d} {batch:5d} {1e3 * t_s / batch:10.3f} {1e3 * s_s / batch:10.3f} "
        f"{s_s / t_s:6.3f} {t_fl / 1e9:8.3f} {s_fl / 1e9:8.3f} {s_fl / t_fl:6.3f} {acc}", flush=True)


def world_rows(args):
  configs = REPO / "configs"
  for arg in ("runlocal", ""):
    tc = load_config(str(configs / "teacher_world.py") + (f":{arg}" if arg else ""))
    dc = load_config(str(configs / "distill_world.py") + (f":{arg}" if arg else ""))
    teacher = teacher_from_model_config(tc.model.to_dict())
    student = student_from_config(dc.model.to_dict(), teacher.vit)
    row(f"world{'/' + arg if arg else ''} config", teacher, student, int(tc.data.image_size),
        args.batch, args.iters)


def clip_rows(args):
  teacher = SBIRTeacher(variant("B/16", "clip"), num_prompts=4)
  for name in args.clip_students.split(","):
    student = PhotoStudent(variant(name, "clip"), embed_width(teacher.vit), num_prompts=4)
    row(f"CLIP B/16 -> {name}", teacher, student, 224, args.clip_batch, max(2, args.iters // 2))


def run_row(args):
  from sketchseg_jax.train import stage as stage_lib
  from sketchseg_jax.train.checkpoints import read_state
  from sketchseg_jax.train.config_lib import read_saved_config
  config = read_saved_config(args.workdir)
  config.lock()
  stage = stage_lib.build(config)
  state, step = read_state(Path(args.workdir) / "checkpoints")
  params = plain(state["params"])
  report = stage.eval_report(params)
  size = int(stage.evaluator.data_config("eval")["image_size"])
  full = {"teacher": report["teacher"]["full"]["acc@5"], "student": report["full"]["acc@5"],
          "keeps": report["full"]["keeps"]}
  row(f"run {Path(args.workdir).name} (step {step})", stage.teacher, stage.student, size,
      args.batch, args.iters, params=params, retrieval=full)
  print(f"\nretrieval of run {args.workdir}, (teacher sketch, teacher photo) / (teacher sketch, "
        "student photo):")
  for name in [k for k in report if k not in ("teacher", "cost")]:
    t, s = report["teacher"][name], report[name]
    print(f"  {name:8s} " + " ".join(f"{k} {t[k]:.3f}/{s[k]:.3f}"
                                     for k in ("acc@1", "acc@5", "acc@10", "mAP@all"))
          + f" keeps {s['keeps']:.3f} (90% interval {s['keeps_ci90'][0]:.2f}-"
          f"{s['keeps_ci90'][1]:.2f}); student vs teacher photo embeddings: cosine "
          f"{s['cosine_to_teacher']:.3f}, match@1 {s['match@1']:.3f} "
          f"(gallery {s['gallery_size']} x {s.get('galleries', 1)})")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", help="a distillation run's workdir: its towers and retrieval")
  p.add_argument("--batch", type=int, default=32, help="photos per step, world sizes")
  p.add_argument("--clip-batch", type=int, default=2, help="photos per step, CLIP sizes")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--clip-students", default="B/32,S/16")
  p.add_argument("--no-clip", action="store_true", help="skip the CLIP B/16 rows (slow on a CPU)")
  args = p.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; "
        "times are forward+backward w.r.t. the photo, per photo")
  print(f"{'setting':34s} {'size':>4s} {'batch':>5s} {'teacher ms':>10s} {'student ms':>10s} "
        f"{'ratio':>6s} {'T GFLOP':>8s} {'S GFLOP':>8s} {'ratio':>6s} {'T acc@5':>8s} "
        f"{'S acc@5':>8s} {'keeps':>6s}")
  world_rows(args)
  if not args.no_clip:
    clip_rows(args)
  if args.workdir:
    run_row(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
