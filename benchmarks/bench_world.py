"""Samples per second of the procedural world on one core, and where a scene's time goes.

Prints samples/s and ms/sample for scene(), sbir_pair() and query() (each granularity) at the
given size, then the split of a scene's cost into objects (geometry and layout), photo
(backdrop, distractors, painting), masks (label map -> instance and part masks) and sketches
(freehand drawing and placement, object-centred and aligned, for every object).

  .venv/bin/python benchmarks/bench_world.py [--size 224] [--num 200]   (about 15 s)
"""

import argparse
import os
import sys

# One core: pin before numpy loads its thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
  os.environ[_var] = "1"

import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sketchseg_jax.data.world import GRANULARITIES, World  # noqa: E402
from sketchseg_jax.data.world import world as world_module  # noqa: E402


def rate(fn, num):
  fn(10 ** 6)  # warm caches outside the timed loop
  t = time.perf_counter()
  for i in range(num):
    fn(i)
  dt = time.perf_counter() - t
  return num / dt, 1000 * dt / num


def scene_split(w, num):
  """Seconds per stage of scene(), replaying its steps on the same seeds."""
  totals = dict(objects=0.0, photo=0.0, masks=0.0, sketches=0.0)
  for i in range(num):
    t0 = time.perf_counter()
    rng = w._rng(i, "scene")
    objs = w._scene_objects(rng, int(rng.integers(w.min_objects, w.max_objects + 1)))
    t1 = time.perf_counter()
    _, labels, table, _ = w._render(rng, objs, False, w._occluder(rng))
    t2 = time.perf_counter()
    world_module._masks(labels, table, objs)
    t3 = time.perf_counter()
    for oid, obj in enumerate(objs):
      w._sketch(rng, obj, oid, False)
      w._sketch(rng, obj, oid, True)
    t4 = time.perf_counter()
    for k, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
      totals[k] += dt
  return {k: 1000 * v / num for k, v in totals.items()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--num", type=int, default=200)
  args = ap.parse_args()
  w = World(size=args.size, split="train", seed=0)
  print(f"World size={args.size}, {args.num} samples per line, one core")
  rows = [("scene", lambda i: w.scene(i)), ("sbir_pair", lambda i: w.sbir_pair(i)),
          ("sbir_pair aligned", lambda i: w.sbir_pair(i, aligned=True))]
  rows += [(f"query {g}", (lambda g: lambda i: w.query(i, g))(g)) for g in GRANULARITIES]
  for name, fn in rows:
    per_s, ms = rate(fn, args.num)
    print(f"  {name:<20} {per_s:8.1f} samples/s  {ms:6.2f} ms/sample")
  split = scene_split(w, args.num)
  total = sum(split.values())
  print("scene cost split (ms/sample): " + ", ".join(
      f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in split.items()) + f"; total {total:.2f}")


if __name__ == "__main__":
  main()
