"""Throughput of the data pipeline's full sample path against a bare source read, one run.

  python benchmarks/bench_pipeline.py [--size 224] [--num 256] [--seconds 8]

Builds two small on-disk data sets in a temporary folder from the procedural world: a TFDS
dataset (what `sketchseg data synth` writes) and a Sketchy-layout tree (JPEG photos, SVG
sketches) so JPEG and SVG decoding are in the path. For each it prints samples/s of:
  bare read   source[i] only (array_record read + record decode, or JPEG + SVG decode)
  full path   read + the training augmentations (crop, flip, colour jitter, partition,
              stroke dropout, jitter) + photo resize + sketch rasterisation, batched
on one core (no workers, one read thread) and with 2 worker processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from PIL import Image

from sketchseg_jax.data import tfds_store
from sketchseg_jax.data.pipeline import build_dataset
from sketchseg_jax.data.sources import WorldSource, build_source
from sketchseg_jax.sketch import save as save_sketch

AUGMENT = [
    {"name": "crop", "prob": 0.8, "scale": (0.6, 1.0)},
    {"name": "hflip", "prob": 0.5},
    {"name": "colour_jitter", "prob": 0.8},
    {"name": "partition", "prob": 0.3, "mode": "box"},
    {"name": "stroke_dropout", "prob": 0.5, "p": 0.1},
    {"name": "point_jitter", "prob": 0.5, "sigma": 0.004},
]


def rate(fn, seconds, count_per_call=1):
  fn()  # warm up (numba cache, imports, worker start)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    fn()
    n += count_per_call
  return n / (time.perf_counter() - t0)


def make_sketchy(root, world, num):
  photo_dir = os.path.join(root, "256x256", "photo", "tx_000000000000")
  sketch_dir = os.path.join(root, "256x256", "sketch", "tx_000000000000")
  svg_dir = os.path.join(root, "svg")
  for i in range(num):
    s = world[i]
    cat = s["category"]
    for d in (photo_dir, svg_dir):
      os.makedirs(os.path.join(d, cat), exist_ok=True)
    os.makedirs(os.path.join(sketch_dir, cat), exist_ok=True)
    Image.fromarray(s["image"]).save(os.path.join(photo_dir, cat, f"p{i:05d}.jpg"), quality=90)
    save_sketch(s["sketch"], os.path.join(svg_dir, cat, f"p{i:05d}-1.svg"))
    Image.new("L", (8, 8), 255).save(os.path.join(sketch_dir, cat, f"p{i:05d}-1.png"))
  return {"name": "sketchy", "root": root, "svg_root": svg_dir, "split": "all",
          "exclude_invalid": False}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--num", type=int, default=256)
  p.add_argument("--seconds", type=float, default=8.0)
  p.add_argument("--batch", type=int, default=32)
  args = p.parse_args(argv)
  try:
    os.sched_setaffinity(0, {0})  # the one-core figures are per core
  except (AttributeError, OSError):
    pass
  world = WorldSource(kind="sbir", size=args.size, num=args.num, aligned_share=0.5)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    tfds_store.write(tmp, "bench_world", {"train": (args.num, world.__getitem__)})
    tfds_cfg = {"name": "tfds", "path": tmp, "split": "train"}
    sketchy_cfg = make_sketchy(os.path.join(tmp, "sketchy"), world, args.num)
    print(f"data sets of {args.num} samples at {args.size}px written in "
          f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs")
    print(f"{'source':8s} {'path':10s} {'workers':>7s} {'samples/s':>10s}")
    for name, source_cfg in (("tfds", tfds_cfg), ("sketchy", sketchy_cfg)):
      source = build_source(source_cfg)
      idx = iter(range(10 ** 9))
      bare = rate(lambda: source[next(idx) % len(source)], args.seconds)
      print(f"{name:8s} {'bare read':10s} {0:7d} {bare:10.0f}", flush=True)
      for workers in (0, 2):
        if workers:
          try:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
          except (AttributeError, OSError):
            pass
        cfg = {"source": source_cfg, "augment": AUGMENT, "image_size": args.size,
               "raster_size": args.size, "batch_size": args.batch, "worker_count": workers,
               "read_threads": 1}
        it = iter(build_dataset(cfg, "train", process_index=0, process_count=1))
        full = rate(lambda: next(it), args.seconds, args.batch)
        print(f"{name:8s} {'full path':10s} {workers:7d} {full:10.0f}  "
              f"({full / bare:.2f}x of bare read)", flush=True)
        it = None  # its worker processes end with it
  return 0


if __name__ == "__main__":
  sys.exit(main())
