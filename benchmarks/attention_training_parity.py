"""Does cuDNN's fused attention train the segmenter as XLA's attention does? Both kernels train
the same B/16 segmenter (random teacher, same initial weights, same batches) for --steps
steps; the losses are printed side by side with a float32 XLA run as the yardstick, then how
far the segmenter's weights drifted apart, against how far training moved them. One run, one
table.

  python benchmarks/attention_training_parity.py [--steps 30] [--batch 8] [--size 224]
                                                 [--dtype bfloat16] [--width 768 --depth 12]

cuDNN's kernel runs only on an NVIDIA GPU in a 16-bit dtype (model.vit.attention); elsewhere
both columns run XLA's and the script says so. bf16 rounding makes any two kernels differ
in the last bits, and training amplifies that: the useful question is whether the cuDNN run
stays as close to the XLA run as 16-bit XLA stays to float32 XLA, or grows into a different
trajectory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_segmenter  # noqa: E402
from sketchseg_jax.models import vit as vit_lib  # noqa: E402
from sketchseg_jax.train import optim  # noqa: E402
from sketchseg_jax.train.loop import make_train_step  # noqa: E402


def batches(first: dict, steps: int, seed: int = 1) -> list:
  """`steps` batches shaped like `first`: its photos with their colour blocks shuffled across
  the batch and fresh random sketches, so that the loss does not just memorise one batch."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    b = dict(first)
    b["image"] = np.ascontiguousarray(first["image"][rng.permutation(len(first["image"]))])
    b["sketch"] = (rng.random(first["sketch"].shape) < 0.05).astype(np.uint8) * 255
    out.append(b)
  return out


def train(attention: str, dtype: str, args) -> tuple:
  stage, params, first, config = bench_segmenter.build(args.size, args.batch, dtype, 0,
                                                       None, attention, vit=vit_overrides(args))
  tx, sched = optim.build(config.optimizer, max(args.steps, 1), params, stage.frozen())
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
           "skipped": jnp.zeros((), jnp.int32)}
  step_fn = jax.jit(make_train_step(stage, tx, sched, 0, "stop"))
  losses = []
  for b in batches(first, args.steps):
    state, metrics = step_fn(state, b)
    losses.append(float(metrics["loss"]))
  kernel = "cuDNN" if vit_lib.cudnn_attention(stage.model.vit) else "XLA"
  return losses, params["segmenter"], state["params"]["segmenter"], kernel


def vit_overrides(args) -> dict:
  return dict(width=args.width, depth=args.depth, num_heads=max(1, args.width // 64),
              mlp_dim=4 * args.width)


def distance(a, b) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def relative(a: list, b: list) -> list:
  return [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)]


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  ap.add_argument("--width", type=int, default=768)
  ap.add_argument("--depth", type=int, default=12)
  args = ap.parse_args()
  if args.steps < 1:
    ap.error("--steps must be at least 1")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; segmenter and teacher "
        f"width {args.width}, depth {args.depth}, {args.size} px, batch {args.batch}, "
        f"{args.dtype}, {args.steps} steps", flush=True)
  xla, start, xla_end, _ = train("xla", args.dtype, args)
  cudnn, _, cudnn_end, kernel = train("cudnn", args.dtype, args)
  ref, _, ref_end, _ = train("xla", "float32", args)
  if kernel != "cuDNN":
    print("cuDNN's kernel needs an NVIDIA GPU and a 16-bit dtype: both 16-bit columns ran XLA's")
  print(f"| step | loss, XLA {args.dtype} | loss, {kernel} {args.dtype} | relative difference "
        f"| loss, XLA float32 | relative difference, XLA {args.dtype} vs float32 |")
  print("|---|---|---|---|---|---|")
  rel, rel_ref = relative(xla, cudnn), relative(ref, xla)
  for i in range(args.steps):
    if i < 5 or i == args.steps - 1 or (i + 1) % 10 == 0:
      print(f"| {i + 1} | {xla[i]:.5f} | {cudnn[i]:.5f} | {rel[i]:.1e} | {ref[i]:.5f} "
            f"| {rel_ref[i]:.1e} |")
  print(f"loss relative difference, {kernel} vs XLA ({args.dtype}): mean {np.mean(rel):.1e}, "
        f"max {max(rel):.1e}; XLA {args.dtype} vs float32: mean {np.mean(rel_ref):.1e}, "
        f"max {max(rel_ref):.1e}")
  moved = distance(xla_end, start)
  print(f"segmenter weights after {args.steps} steps, distance / distance moved from the start "
        f"({moved:.3e}): {kernel} vs XLA {distance(cudnn_end, xla_end) / moved:.3f}, "
        f"XLA {args.dtype} vs float32 {distance(ref_end, xla_end) / moved:.3f}")


if __name__ == "__main__":
  main()
