#!/usr/bin/env bash
# The accelerator measurements in one call: the GPU or TPU host runs every benchmark that has an
# accelerator row in the README, each under its own time limit, so that one failure or overrun
# does not lose the others. Prints each benchmark's table; with OUT set, logs go there too.
#
#   bash benchmarks/device_suite.sh [SCALE]
#
# SCALE (default 1) multiplies every benchmark's time limit.
#
# Needs this repo's requirements beside an accelerator build of jax (README, "Launching").
set -u
cd "$(dirname "$0")/.."
scale=${1:-1}
out=${OUT:-/tmp/device_suite}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
# Compiles dominate a short lease (20-30 s for a B/16 segmenter step, 40 s for its init): a
# rerun on the same machine reuses them from this cache (seen on an H200: 20 s down to 6).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_compilation_cache}
# jax and torch share the card in bench_backbone: leave torch room.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}

python3 - <<'EOF'
import jax, flax, optax
print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
      f"{jax.device_count()} x {jax.devices()[0].device_kind}")
EOF

run() {
  local name=$1 limit; limit=$(python3 -c "print(int($2 * $scale))"); shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" python3 "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$out/$name.log"
  echo "=== $name: rc $rc, $((SECONDS - t0)) s"
}

# cuBLAS for every matmul rather than Triton's fusions: on an H200 the segmenter step ran as
# fast (29-35 ms against 30 at the defaults) and compiled in 20-25 s instead of 34. Do not
# turn XLA's autotuning off to save compile time: the first lease did, and its H100 (the
# same arithmetic as an H200) took 296 ms a step.
export XLA_FLAGS=${XLA_FLAGS:---xla_gpu_enable_triton_gemm=false}

run segmenter_bf16 240 benchmarks/bench_segmenter.py --batch 16 --iters 5 --dtype bfloat16
run segmenter_cudnn 100 benchmarks/bench_segmenter.py --batch 16 --iters 10 --dtype bfloat16 \
    --step-only --teachers full --attention cudnn
run attention_parity 200 benchmarks/attention_training_parity.py --steps 30
run backbone_bf16 90 benchmarks/bench_backbone.py --batch 64 --dtype bfloat16 --attention xla,cudnn
run engine_bf16 110 benchmarks/bench_engine.py --batch 64 --steps 10 --dtype bfloat16 --workers 12
run distill 90 benchmarks/bench_distill.py --clip-batch 32 --iters 10
run predictor 60 benchmarks/bench_predictor.py --no-world --iters 30
run segmenter_f32 180 benchmarks/bench_segmenter.py --batch 16 --iters 5
