#!/usr/bin/env bash
# Train on this machine: one process, or NUM_PROCESSES processes joined through a loopback
# coordinator (a CPU rehearsal of a multi-host run).
#
#   launch/local.sh [--config.KEY=VALUE ...]
#   CONFIG=configs/world_classifier.py WORKDIR=/tmp/wc launch/local.sh --config.total_steps=200
#   DRY_RUN=1 launch/local.sh                        # print the commands, run nothing
#   NUM_PROCESSES=2 CPU_DEVICES=4 launch/local.sh    # 2 processes x 4 fake CPU devices
#
# Arguments are appended to the train command (config overrides). Relative paths in CONFIG
# and WORKDIR are taken from the repository root: the script runs from there. A WORKDIR that
# holds a checkpoint resumes.
set -euo pipefail

# ---- what to train --------------------------------------------------------------------------
CONFIG="${CONFIG:-configs/world_classifier.py:runlocal}"
WORKDIR="${WORKDIR:-/tmp/sketchseg/world_classifier}"
EXTRA="${EXTRA:-}"              # more overrides, space separated: "--config.seed=1 --config.a=2"
# ---- how ------------------------------------------------------------------------------------
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
SKETCHSEG="${SKETCHSEG:-}"      # words before `train`; default: sketchseg, else python -m sketchseg_jax.cli
NUM_PROCESSES="${NUM_PROCESSES:-1}"
COORDINATOR_PORT="${COORDINATOR_PORT:-12355}"
CPU_DEVICES="${CPU_DEVICES:-}"  # if set: JAX_PLATFORMS=cpu with this many fake devices per process
LOG_DIR="${LOG_DIR:-}"          # stdout of processes 1.. (process 0 prints here); default WORKDIR/process_logs
DRY_RUN="${DRY_RUN:-0}"
# ---- environment (see launch/README.md) ------------------------------------------------------
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"   # C++ INFO lines off, warnings on

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

die() { echo "local.sh: $*" >&2; exit 2; }

[[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES'"
[[ -z $CPU_DEVICES || $CPU_DEVICES =~ ^[1-9][0-9]*$ ]] || die "CPU_DEVICES must be a positive integer, got '$CPU_DEVICES'"

cd "$REPO_DIR"
if [[ -z $LOG_DIR ]]; then
  if [[ $WORKDIR == *://* ]]; then LOG_DIR="${TMPDIR:-/tmp}/sketchseg_process_logs"; else LOG_DIR="${WORKDIR%/}/process_logs"; fi
fi

if [[ -n $SKETCHSEG ]]; then
  read -r -a cmd <<< "$SKETCHSEG"
elif command -v sketchseg > /dev/null; then
  cmd=(sketchseg)
elif [[ -x .venv/bin/python ]]; then
  cmd=(.venv/bin/python -m sketchseg_jax.cli)
else
  cmd=(python3 -m sketchseg_jax.cli)
fi
read -r -a extra <<< "$EXTRA"
cmd+=(train --config "$CONFIG" --workdir "$WORKDIR" "${extra[@]}" "$@")

if [[ -n $CPU_DEVICES ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$CPU_DEVICES"
fi

if [[ $DRY_RUN == 1 ]]; then
  for var in TF_CPP_MIN_LOG_LEVEL JAX_PLATFORMS XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION \
             XLA_PYTHON_CLIENT_PREALLOCATE; do
    if [[ -n ${!var:-} ]]; then echo "export $var=$(quote_word "${!var}")"; fi
  done
  if (( NUM_PROCESSES == 1 )); then
    show_cmd "${cmd[@]}"
  else
    for ((i = 0; i < NUM_PROCESSES; i++)); do
      show_cmd env "JAX_COORDINATOR_ADDRESS=127.0.0.1:$COORDINATOR_PORT" \
        "JAX_NUM_PROCESSES=$NUM_PROCESSES" "JAX_PROCESS_ID=$i" "${cmd[@]}"
    done
  fi
  exit 0
fi

if (( NUM_PROCESSES == 1 )); then
  exec "${cmd[@]}"
fi

# Several processes: each gets the coordinator variables the engine passes to
# jax.distributed.initialize(). Process 0 talks to the terminal; the others log to files.
mkdir -p "$LOG_DIR"
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
}
trap 'stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  env_i=(env "JAX_COORDINATOR_ADDRESS=127.0.0.1:$COORDINATOR_PORT"
         "JAX_NUM_PROCESSES=$NUM_PROCESSES" "JAX_PROCESS_ID=$i")
  if (( i == 0 )); then
    "${env_i[@]}" "${cmd[@]}" &
  else
    "${env_i[@]}" "${cmd[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "local.sh: started $NUM_PROCESSES processes (${pids[*]}); processes 1.. log to $LOG_DIR" >&2

# A process that dies leaves the others waiting in a collective: stop them all.
status=0
for ((n = 0; n < NUM_PROCESSES; n++)); do
  if ! wait -n; then
    status=1
    echo "local.sh: a process failed; stopping the others (see $LOG_DIR)" >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
