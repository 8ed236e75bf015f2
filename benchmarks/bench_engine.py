"""Engine overhead and model FLOPs utilisation, one run.

  python benchmarks/bench_engine.py [--variant B/16] [--size 224] [--batch 8] [--steps 6]
                                    [--dtype float32|bfloat16] [--peak-tflops X]
                                    [--workers N]

Trains the world classifier with a ViT backbone (random init) for a few steps through the
engine (`sketchseg_jax.train.loop.train`: data pipeline, sharded state, donation, metrics,
checkpoint bookkeeping) and times the same model and optimizer in a plain hand-written
`jax.jit` step on one fixed batch, the floor. Prints both step times, examples/s, the
engine's overhead, and the achieved FLOP/s with MFU = achieved / peak. The step's FLOPs come
from the model (analytic ViT matmul and attention FLOPs; XLA's own count is printed beside it).
Peak: --peak-tflops, else a table of known accelerators (bf16 dense); on a CPU MFU is not
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def peak_for(kind: str):
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops
  return None


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="B/16")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--peak-tflops", type=float, default=None)
  p.add_argument("--workers", type=int, default=0,
                 help="data worker processes for the engine run (0: in the main process)")
  args = p.parse_args(argv)

  from sketchseg_jax.train.config_lib import load_config
  from sketchseg_jax.train import loop
  from sketchseg_jax.train.stage import build
  from sketchseg_jax.models.flops import vit_train_flops
  overrides = [
      f"--config.model.image_size={args.size}", f"--config.model.dtype={args.dtype}",
      f"--config.data.source.size={args.size}", f"--config.data.image_size={args.size}",
      f"--config.data.batch_size={args.batch}", f"--config.data.worker_count={args.workers}",
      f"--config.total_steps={args.steps}", "--config.log_every_steps=1",
      "--config.eval_every_steps=0", "--config.checkpoint.every_steps=100000",
      "--config.tensorboard=False"]
  config = load_config(f"{REPO}/configs/world_classifier.py:variant={args.variant}", overrides)
  kind = jax.devices()[0].device_kind
  print(f"jax {jax.__version__}, {jax.device_count()} x {kind}; ViT-{args.variant} at "
        f"{args.size}px, batch {args.batch}, {args.dtype}", flush=True)

  # The floor: the same model and optimizer, one fixed batch, a plain jit step.
  stage = build(config)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 255, (args.batch, args.size, args.size, 3), np.uint8)),
           "category_id": jnp.asarray(rng.integers(0, config.num_classes, args.batch), jnp.int32)}
  params = stage.init(jax.random.key(0), batch)
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)

  def plain_step(params, opt_state, batch, rng):
    (loss, _), grads = jax.value_and_grad(stage.loss, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(plain_step, donate_argnums=(0, 1))
  key = jax.random.key(1)
  compiled = step.lower(params, opt_state, batch, key).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  # MFU counts the model's FLOPs (matmuls and attention), as is usual: XLA's own count is
  # missing on a CPU and, on a GPU, leaves out the matmuls it hands to cuBLAS (seen: 0.30 T
  # against the model's 6.74 T for B/16 at batch 64 on an H100).
  flops = vit_train_flops(stage.vit, args.size, args.size, args.batch)
  params, opt_state, loss = step(params, opt_state, batch, key)
  loss.block_until_ready()
  times = []
  for _ in range(max(2, args.steps - 2)):
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batch, key)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  plain = float(np.median(times))
  del params, opt_state

  with tempfile.TemporaryDirectory() as workdir:
    loop.train(config, workdir)
    rows = [json.loads(l) for l in Path(workdir, "metrics.jsonl").read_text().splitlines()]
  engine_times = [r["step_time"] for r in rows if r["step"] > 2]  # after compile and warm-up
  engine = float(np.median(engine_times))

  print(f"{'':18s} {'step s':>8s} {'examples/s':>11s}")
  print(f"{'plain jax.jit':18s} {plain:8.4f} {args.batch / plain:11.2f}   (steps: {', '.join(f'{t:.3f}' for t in times)})")
  print(f"{'engine':18s} {engine:8.4f} {args.batch / engine:11.2f}   (steps: {', '.join(f'{t:.3f}' for t in engine_times)})")
  print(f"engine overhead: {100 * (engine / plain - 1):+.1f}% (goal <= +5%)")
  peak = args.peak_tflops or peak_for(kind)
  print(f"step FLOPs {flops / 1e12:.2f} T (model: matmuls and attention; XLA's cost "
        f"analysis counts {xla_flops / 1e12:.2f} T)")
  for name, seconds in (("plain jax.jit", plain), ("engine", engine)):
    achieved = flops / seconds / 1e12
    line = f"{name}: achieved {achieved:.3f} TFLOP/s"
    if peak:
      line += f"; MFU {100 * achieved / (peak * jax.device_count()):.1f}% of {peak:g} TFLOP/s/device"
    else:
      line += "; MFU: no peak known for this device (pass --peak-tflops)"
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main())
