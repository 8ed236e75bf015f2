"""Forward throughput of the Flax backbones against transformers' PyTorch models, one run.

  python benchmarks/bench_backbone.py [--batch 8] [--size 224] [--iters 10] [--dtype float32]
                                      [--attention xla[,cudnn]]

Both sides get the same weights (exported from the Flax init through the HF conversion), the
same batch, the same threads; the Flax side is jitted, the PyTorch side runs under
inference_mode. Prints images/s for each and the ratio Flax / PyTorch. On an accelerator host
run with --dtype bfloat16 to time the Flax compute dtype there (PyTorch then runs in bf16 too);
--attention xla,cudnn times the Flax side with each attention kernel (cuDNN's: NVIDIA GPUs, bf16
only) against the same PyTorch timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import jax
import numpy as np

from sketchseg_jax import backbones
from sketchseg_jax.models.vit_config import variant


def time_it(fn, iters, warmup=2):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench(name, family, args):
  import torch
  import transformers
  cfg = variant(name, family, image_size=args.size, dtype=args.dtype)
  params = backbones.init_params(cfg)
  with tempfile.TemporaryDirectory() as d:
    backbones.save(d, cfg, params, format="hf")
    arch = "CLIPVisionModelWithProjection" if family == "clip" else "Dinov2Model"
    torch_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = getattr(transformers, arch).from_pretrained(d, dtype=torch_dtype).eval()
  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  model = model.to(device)
  x = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
  x_dev, params_dev = jax.device_put(x), jax.device_put(params)
  flax_s, pooled = {}, {}
  for kind in args.attention.split(","):
    module = backbones.build(cfg.replace(attention=kind))
    fwd = jax.jit(lambda p, im, module=module: module.apply({"params": p}, im)["pooled"])
    pooled[kind] = np.asarray(fwd(params_dev, x_dev), np.float32)
    flax_s[kind] = time_it(lambda: fwd(params_dev, x_dev).block_until_ready(), args.iters)
  first = next(iter(pooled))
  for kind in list(pooled)[1:]:
    # Same weights, same batch: the kernels must agree to the compute dtype's precision.
    rel = np.linalg.norm(pooled[kind] - pooled[first]) / np.linalg.norm(pooled[first])
    print(f"  {family} {name}: pooled output, {kind} against {first}: relative difference {rel:.1e}")
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device, torch_dtype)

  def torch_step():
    with torch.inference_mode():
      out = model(xt)
    if device == "cuda":
      torch.cuda.synchronize()
    return out
  torch_s = time_it(torch_step, args.iters)
  torch_ips = args.batch / torch_s
  for kind, seconds in flax_s.items():
    flax_ips = args.batch / seconds
    print(f"{family:7s} {name:5s} {args.size:4d} {args.batch:5d} {args.dtype:9s} {kind:9s} "
          f"{flax_ips:12.1f} {torch_ips:14.1f} {flax_ips / torch_ips:7.2f}x", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--models", default="clip:B/16,dinov2:B/14")
  p.add_argument("--attention", default="xla",
                 help="comma-separated attention kernels for the Flax side: xla, cudnn")
  args = p.parse_args(argv)
  import torch
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; {os.cpu_count()} CPUs")
  print(f"{'family':7s} {'model':5s} {'size':>4s} {'batch':>5s} {'dtype':9s} {'attention':9s} "
        f"{'flax img/s':>12s} {'pytorch img/s':>14s} {'ratio':>8s}")
  for spec in args.models.split(","):
    family, name = spec.split(":")
    bench(name, family, args)


if __name__ == "__main__":
  sys.exit(main())
