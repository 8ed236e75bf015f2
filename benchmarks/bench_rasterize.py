"""Sketches per second on one core: this package's anti-aliased rasterizer against PIL.

Workload: 224x224 output, 20 strokes per sketch, each a pen-like random walk of 20-60 short
segments on a 256x256 canvas ("canvas" placement), stroke width 3 output pixels. Every renderer
returns a float32 ink map, so conversions are part of each figure.

  .venv/bin/python benchmarks/bench_rasterize.py [--seconds 3] [--cpu N]   (about 20 s)
"""

import argparse
import os
import sys

# One core: pin before numpy / numba load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
  os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sketchseg_jax.sketch.raster import rasterize  # noqa: E402
from sketchseg_jax.sketch.types import Sketch  # noqa: E402

SIZE = 224
CANVAS = 256.0
WIDTH = 3.0
STROKES = 20


def pen_sketch(rng: np.random.Generator) -> Sketch:
  """20 strokes, each a smoothly turning random walk of 20-60 steps of 2-6 canvas units."""
  strokes = []
  for _ in range(STROKES):
    n = int(rng.integers(20, 61))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, n))
    step = rng.uniform(2.0, 6.0, n)
    start = rng.uniform(0.2 * CANVAS, 0.8 * CANVAS, 2)
    walk = np.cumsum(np.stack([np.cos(heading) * step, np.sin(heading) * step], 1), 0)
    pts = np.clip(np.vstack([start, start + walk]), 0, CANVAS)
    strokes.append(pts)
  return Sketch(strokes, (CANVAS, CANVAS))


def ours(sketch):
  return rasterize(sketch, SIZE, width=WIDTH)


def ours_aliased(sketch):
  return rasterize(sketch, SIZE, width=WIDTH, antialias=False)


def _pil_lines(sketch, factor):
  img = Image.new("L", (SIZE * factor, SIZE * factor), 0)
  draw = ImageDraw.Draw(img)
  scale = SIZE * factor / CANVAS
  w = max(1, int(round(WIDTH * factor)))
  for stroke in sketch.strokes:
    draw.line((stroke * scale).ravel().tolist(), fill=255, width=w, joint="curve")
  return img


def pil_2x(method):
  def render(sketch):
    img = _pil_lines(sketch, 2).resize((SIZE, SIZE), method)
    return np.asarray(img, np.float32) * (1.0 / 255.0)
  return render


def pil_aliased(sketch):
  return np.asarray(_pil_lines(sketch, 1), np.float32) * (1.0 / 255.0)


def rate(render, sketches, seconds):
  """Sketches per second, best of three timed passes over the set (after one warm pass)."""
  for s in sketches[:5]:
    render(s)
  best = 0.0
  for _ in range(3):
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 3:
      for s in sketches:
        render(s)
      count += len(sketches)
    best = max(best, count / (time.perf_counter() - t0))
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=3.0, help="time per renderer")
  parser.add_argument("--cpu", type=int, default=None, help="core to pin to (default: lowest)")
  parser.add_argument("--sketches", type=int, default=100)
  args = parser.parse_args()
  cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpu})
  rng = np.random.default_rng(0)
  sketches = [pen_sketch(rng) for _ in range(args.sketches)]
  segments = np.mean([sum(len(s) - 1 for s in sk.strokes) for sk in sketches])
  print(f"{SIZE}x{SIZE}, {STROKES} strokes/sketch, {segments:.0f} segments/sketch, "
        f"width {WIDTH:g}px, pinned to cpu {cpu}")
  rows = [
      ("sketchseg_jax rasterize (anti-aliased)", ours),
      ("PIL ImageDraw 2x + BOX downsample", pil_2x(Image.Resampling.BOX)),
      ("PIL ImageDraw 2x + LANCZOS downsample", pil_2x(Image.Resampling.LANCZOS)),
      ("PIL ImageDraw aliased (1x)", pil_aliased),
      ("sketchseg_jax rasterize (aliased)", ours_aliased),
  ]
  rates = {}
  for name, render in rows:
    rates[name] = rate(render, sketches, args.seconds)
    print(f"  {name:<42s} {rates[name]:9.0f} sketches/s")
  best_2x = max(rates[rows[1][0]], rates[rows[2][0]])
  ratio = rates[rows[0][0]] / best_2x
  print(f"  {'ratio ours / PIL 2x (faster of BOX, LANCZOS)':<42s} {ratio:9.1f}x")


if __name__ == "__main__":
  main()
