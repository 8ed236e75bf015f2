"""Latency of the Predictor on this machine: `.set_image` and `.segment` with a cached photo.

  python benchmarks/bench_predictor.py [--workdir RUN ...] [--iters 30] [--photo 640x480]
                                       [--no-world] [--no-b16]

Rows: each --workdir (a trained segmenter, e.g. a quickstart's segmenter/), the world-size
segmenter (configs/teacher_world.py towers, configs/segmenter_world.py photo size) and a
CLIP ViT-B/16-size segmenter at 224 px (photo backbone, separate sketch tower, 512-d
embeddings); the last two with random weights, which do not change the time. Both calls are
timed as a user sees them: set_image from an HxWx3 uint8 photo (resize + backbone), segment
from a `Sketch` (rasterise + sketch tower + head + bilinear upsample to the photo's size), a
new sketch each call ("seen": a sketch given before, whose sketch-tower embedding is cached,
as when one sketch of a group is redrawn in the demo). Times are milliseconds after two
warm-up calls (which compile).
Goal (issue 9): segment p50 < 100 ms at B/16 size on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sketchseg_jax.infer.predictor import Predictor  # noqa: E402
from sketchseg_jax.sketch import Sketch  # noqa: E402
from sketchseg_jax.train import stage as stage_lib  # noqa: E402
from sketchseg_jax.train.config_lib import load_config  # noqa: E402

B16 = dict(family="clip", width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16,
           image_size=224, projection_dim=512, mlp="quick_gelu", dtype="float32")


def random_predictor(teacher_model: dict, teacher_data: dict, image_size: int) -> Predictor:
  """A segmenter stage of configs/segmenter_world.py around random-init towers."""
  c = load_config(str(REPO / "configs" / "segmenter_world.py"))
  c.unlock()
  c.teacher.random_init = True
  c.teacher.model = teacher_model
  c.teacher.data = teacher_data
  c.data.image_size = image_size
  c.data.raster_size = teacher_data["raster_size"]
  stage = stage_lib.build(c)
  r = teacher_data["raster_size"]
  batch = {"image": np.zeros((1, image_size, image_size, 3), np.uint8),
           "sketch": np.zeros((1, 1, r, r), np.uint8)}
  params = jax.jit(stage.init)(jax.random.key(0), batch)
  return Predictor(stage, jax.device_get(params))


def world_predictor() -> Predictor:
  t = load_config(str(REPO / "configs" / "teacher_world.py"))
  s = load_config(str(REPO / "configs" / "segmenter_world.py"))
  model = t.model.to_dict()
  data = {k: t.data[k] for k in ("image_size", "raster_size", "sketch_width")}
  return random_predictor(model, data, int(s.data.image_size))


def b16_predictor() -> Predictor:
  model = dict(vit=B16, num_prompts=4, deep_prompts=False, separate_towers=True, pool="cls",
               tune="full")
  return random_predictor(model, dict(image_size=224, raster_size=224, sketch_width=3.0), 224)


def random_sketch(rng) -> Sketch:
  strokes = [np.cumsum(rng.normal(0, 6, (rng.integers(8, 30), 2)), axis=0) + rng.uniform(40, 200, 2)
             for _ in range(rng.integers(3, 12))]
  return Sketch(strokes, (256, 256))


def percentiles(fn, iters: int, warmup: int = 2) -> tuple:
  for i in range(warmup):
    fn(i)
  times = []
  for i in range(iters):
    t0 = time.perf_counter()
    fn(warmup + i)
    times.append(1e3 * (time.perf_counter() - t0))
  return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def bench(name: str, p: Predictor, args) -> list:
  rng = np.random.default_rng(0)
  w, h = args.photo
  photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(4)]
  # Fresh sketches for every call: the Predictor caches sketch embeddings by content.
  fresh = iter([random_sketch(rng) for _ in range(8 * (args.iters + 2))])
  kept = [random_sketch(rng) for _ in range(2)]

  def set_image(i):
    p.set_image(photos[i % len(photos)])
    jax.block_until_ready(p._features)

  rows = [(name, "set_image", *percentiles(set_image, args.iters))]
  p.set_image(photos[0])
  rows.append((name, "segment (1 sketch)",
               *percentiles(lambda i: p.segment(next(fresh)), args.iters)))
  rows.append((name, "segment (3 sketches)",
               *percentiles(lambda i: p.segment([next(fresh) for _ in range(3)]), args.iters)))
  p.segment(kept)
  rows.append((name, "segment (2 seen + 1 new)",
               *percentiles(lambda i: p.segment(kept + [next(fresh)]), args.iters)))
  rows.append((name, "segment (1 seen)",
               *percentiles(lambda i: p.segment(kept[0]), args.iters)))
  print(f"# {name}: image {p.image_size}, raster {p.raster_size}, traces "
        f"{dict(p.trace_counts)}", flush=True)
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", action="append", default=[], help="trained segmenter run(s)")
  ap.add_argument("--iters", type=int, default=30)
  ap.add_argument("--photo", default="640x480", help="photo size WxH (default 640x480)")
  ap.add_argument("--no-world", action="store_true")
  ap.add_argument("--no-b16", action="store_true")
  args = ap.parse_args(argv)
  args.photo = tuple(int(v) for v in args.photo.lower().split("x"))
  rows = []
  for wd in args.workdir:
    rows += bench(f"{wd}", Predictor.from_checkpoint(wd), args)
  if not args.no_world:
    rows += bench("world (random)", world_predictor(), args)
  if not args.no_b16:
    rows += bench("ViT-B/16 224 (random)", b16_predictor(), args)
  print(f"\nPredictor latency, {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"photo {args.photo[0]}x{args.photo[1]}, {args.iters} calls each")
  width = max(len(r[0]) for r in rows)
  print(f"{'model':<{width}}  {'call':<26} {'p50 ms':>8} {'p95 ms':>8}")
  for name, what, p50, p95 in rows:
    print(f"{name:<{width}}  {what:<26} {p50:8.1f} {p95:8.1f}")


if __name__ == "__main__":
  main()
