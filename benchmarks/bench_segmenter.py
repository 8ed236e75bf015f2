"""One mask-free segmenter step at ViT-B/16 size, with the full and with a distilled teacher,
and the share of its time in each part. One run, one table.

  python benchmarks/bench_segmenter.py [--batch 4] [--iters 3] [--size 224]
                                       [--student-width 384 --student-depth 6]
                                       [--dtype float32|bfloat16] [--proposals K]
                                       [--step-only] [--attention xla|cudnn]
                                       [--teachers full,distilled]

Parts (unless --step-only), each jitted alone on the same batch and timed (fastest of --iters):
  segmenter   backbone + head forward and backward (masks and the mask-only loss terms)
  photo tower the teacher's (or the distilled) photo tower on the 2B masked photos, forward
              and backward with respect to the photos (its weights get no gradient)
  sketch      the sketch tower's forward on the B queries (no gradient at all)
  proposals   with --proposals K: the photo tower's forward on the B x K candidate regions
              (no gradient), which the proposal term ranks against the query
  step        the whole jitted training step (loss, gradients, AdamW update)
The parts overlap inside XLA's fused step, so their shares are of their sum, beside the step
time. Weights are random (the time does not depend on them); the teacher is CLIP ViT-B/16 with
4 shallow prompt tokens and separate towers, the segmenter a CLIP ViT-B/16 initialised from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sketchseg_jax.data.proposals import (DEFAULTS as PROPOSAL_SETTINGS, colour_regions,  # noqa: E402
                                          region_proposals)
from sketchseg_jax.param_tree import plain  # noqa: E402
from sketchseg_jax.train import optim, stage as stage_lib  # noqa: E402
from sketchseg_jax.train.config_lib import load_config  # noqa: E402
from sketchseg_jax.train.loop import make_train_step  # noqa: E402
from sketchseg_jax.train.step_estimate import segmenter_parts  # noqa: E402

B16 = dict(family="clip", width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16,
           image_size=224, mlp="quick_gelu", projection_dim=512, dtype="float32")


def build(size: int, batch: int, dtype: str, proposals: int, student=None, attention="xla",
          vit=None):
  """The segmenter stage against a random B/16 teacher (`vit` overrides its architecture's
  fields), its initial parameters, one synthetic batch and the config."""
  c = load_config(str(REPO / "configs" / "segmenter_world.py"))
  c.unlock()
  c.proposals.weight = 3.0 if proposals else 0.0
  c.proposals.count = max(proposals, 1)
  c.teacher.random_init = True
  c.teacher.model = dict(vit={**B16, **(vit or {}), "image_size": size, "dtype": dtype,
                              "attention": attention},
                         num_prompts=4,
                         deep_prompts=False, separate_towers=True, pool="cls", tune="prompts_ln")
  c.teacher.data = dict(image_size=size, raster_size=size, sketch_width=3.0)
  if student:
    c.teacher.kind = "distill"
    c.teacher.student = dict(vit=student, pool="cls")
  c.data.image_size = size
  c.data.batch_size = batch
  c.data.source.size = size
  stage = stage_lib.build(c)
  rng = np.random.default_rng(0)
  # Flat colour blocks rather than noise, so that the colour-region proposals find regions.
  blocks = rng.integers(0, 255, (batch, 8, 8, 3), dtype=np.uint8)
  cell = -(-size // 8)
  images = np.repeat(np.repeat(blocks, cell, axis=1), cell, axis=2)[:, :size, :size]
  batch_np = {"image": np.ascontiguousarray(images),
              "sketch": (rng.random((batch, 1, size, size)) < 0.05).astype(np.uint8) * 255,
              "sketch_valid": np.ones((batch, 1), bool),
              "category_id": np.arange(batch, dtype=np.int32),
              "granularity": np.zeros(batch, np.int32)}
  if proposals:
    cut = [region_proposals(im, **{k: c.proposals[k] for k in PROPOSAL_SETTINGS}) for im in images]
    batch_np["proposals"] = np.stack([m for m, _ in cut]).astype(np.uint8)
    batch_np["proposals_valid"] = np.stack([v for _, v in cut])
  if float(c.model.get("regions", 0.0)):
    batch_np["regions"] = np.stack([colour_regions(im, float(c.model.regions)) for im in images])
  params = plain(jax.jit(stage.init)(jax.random.key(0), batch_np))
  return stage, params, batch_np, c


def best_time(name: str, fn, *args, iters: int) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  # Progress: on a GPU the compiles (autotuning) take far longer than the runs.
  print(f"  {name}: {1e3 * min(times):.1f} ms (first call, with compile: {first:.1f} s)", flush=True)
  return min(times)


def measure(stage, params, batch, config, iters: int, step_only: bool) -> dict:
  frozen = {k: v for k, v in params.items() if k != "segmenter"}
  tx, sched = optim.build(config.optimizer, 1000, params, stage.frozen())
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "skipped": jnp.zeros((), jnp.int32)}
  step_fn = jax.jit(make_train_step(stage, tx, sched, 0, "stop"))
  out = {"step": best_time("step", lambda s, bt: step_fn(s, bt)[1]["loss"], state, batch,
                           iters=iters)}
  if step_only:
    return out

  def seg_part(seg):
    z, low, _, _ = stage.query_logits({**frozen, "segmenter": seg}, batch["image"],
                                      batch["sketch"], batch["sketch_valid"],
                                      regions=batch.get("regions"))
    return jnp.mean(jax.nn.sigmoid(z)) + jnp.mean(jnp.abs(jnp.diff(jax.nn.sigmoid(low), axis=-1)))
  out["segmenter"] = best_time("segmenter", jax.jit(jax.grad(seg_part)), params["segmenter"],
                               iters=iters)

  def photo_part(x):
    return jnp.sum(stage.towers.photo(jax.lax.stop_gradient(frozen), x))
  x2 = jnp.asarray(np.concatenate([batch["image"]] * 2), jnp.float32)
  out["photo tower"] = best_time("photo tower", jax.jit(jax.grad(photo_part)), x2, iters=iters)
  out["sketch"] = best_time("sketch", jax.jit(lambda p, ink: stage.queries(p, ink)), frozen,
                            batch["sketch"], iters=iters)
  if "proposals" in batch:
    b, k = batch["proposals"].shape[:2]
    xk = jnp.asarray(np.repeat(batch["image"], k, axis=0), jnp.float32)
    prop_fn = jax.jit(lambda p, x: jax.lax.stop_gradient(stage.towers.photo(p, x)))
    out["proposals"] = best_time("proposals", prop_fn, frozen, xk, iters=iters)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--student-width", type=int, default=384)
  ap.add_argument("--student-depth", type=int, default=6)
  ap.add_argument("--proposals", type=int, default=0,
                  help="region proposals per photo (0: off, as in configs/segmenter_clip_sketchy.py)")
  ap.add_argument("--step-only", action="store_true",
                  help="time the whole step only, not its parts (a third of the compiles)")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="compute dtype of every tower (parameters stay float32)")
  ap.add_argument("--attention", default="xla", choices=("xla", "cudnn"),
                  help="attention kernel of every tower (cudnn: NVIDIA GPUs, bfloat16 only)")
  ap.add_argument("--teachers", default="full,distilled",
                  help="which rows to time: full, distilled or both (one row: no ratio)")
  args = ap.parse_args()
  student = dict(family="clip", width=args.student_width, depth=args.student_depth,
                 num_heads=max(1, args.student_width // 64), mlp_dim=4 * args.student_width,
                 patch_size=16, image_size=args.size, mlp="quick_gelu", projection_dim=None,
                 dtype=args.dtype, attention=args.attention)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch}, "
        f"{args.size} px, {args.dtype}, {args.attention} attention, fastest of {args.iters}")
  rows = {}
  kinds = {"full": ("full teacher (B/16)", None),
           "distilled": (f"distilled (width {args.student_width}, depth {args.student_depth})",
                         student)}
  unknown = set(args.teachers.split(",")) - set(kinds)
  if unknown:
    ap.error(f"--teachers: unknown {sorted(unknown)}; choose from {sorted(kinds)}")
  for key in args.teachers.split(","):
    name, st = kinds[key]
    t0 = time.perf_counter()
    stage, params, batch, config = build(args.size, args.batch, args.dtype, args.proposals, st,
                                         args.attention)
    print(f"{name}: built and initialised in {time.perf_counter() - t0:.1f} s", flush=True)
    rows[name] = measure(stage, params, batch, config, args.iters, args.step_only)
    # The model's own FLOPs (train/step_estimate: matmuls and attention), as bench_engine
    # counts them: XLA's count on a GPU leaves out what it hands to cuBLAS.
    rows[name]["flops"] = sum(p["model_flops"] for p in segmenter_parts(config)[0])
  parts = () if args.step_only else (
      ("segmenter", "photo tower", "sketch") + (("proposals",) if args.proposals else ()))
  print("| " + " | ".join(["teacher", "step ms", "model TFLOP/s"]
                         + [f"{p} ms (share)" for p in parts]) + " |")
  print("|---" * (len(parts) + 3) + "|")
  for name, r in rows.items():
    total = sum(r[p] for p in parts)
    cells = "".join(f" {1e3 * r[p]:.1f} ({r[p] / total:.0%}) |" for p in parts)
    print(f"| {name} | {1e3 * r['step']:.1f} | {r['flops'] / r['step'] / 1e12:.1f} |{cells}")
  if len(rows) == 2:
    full, dist = list(rows.values())
    print(f"step time, distilled / full teacher: {dist['step'] / full['step']:.2f}")


if __name__ == "__main__":
  main()
