#!/usr/bin/env bash
# Train on a Cloud TPU pod slice with the gcloud CLI.
#
#   launch/tpu_pod.sh SUBCOMMAND... [-- --config.KEY=VALUE ...]
#
#   create   create the TPU VM slice (ACCELERATOR_TYPE, RUNTIME_VERSION; SPOT=1 for spot)
#   setup    copy this repository to every worker and install jax[tpu] + the project there
#   run      start `sketchseg train` on every worker in the background (nohup), logging to
#            ~/LOG_FILE on each; refuses if a run is still alive there
#   logs     follow the log of worker WORKER (default 0: the only process that logs metrics)
#   stop     SIGTERM the run on every worker: the engine saves a checkpoint, then exits
#   status   describe the slice
#   delete   delete the slice
#
# Several subcommands run in order: `launch/tpu_pod.sh create setup run logs`. Overrides after
# `--` are appended to the train command. DRY_RUN=1 prints every command instead of running
# it (the default when gcloud is not installed). Running `run` again on the same WORKDIR
# resumes from its latest checkpoint.
set -euo pipefail

# ---- the slice ------------------------------------------------------------------------------
PROJECT="${PROJECT:-my-gcp-project}"
ZONE="${ZONE:-us-west4-a}"          # must offer the type: gcloud compute tpus tpu-vm accelerator-types list --zone=Z
TPU_NAME="${TPU_NAME:-sketchseg-pod}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"  # 16 v5e chips on 4 hosts
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"  # v5e; v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base
SPOT="${SPOT:-0}"                   # 1: a spot slice (cheaper, preemptible; `run` again resumes)
# ---- the code -------------------------------------------------------------------------------
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
REMOTE_DIR="${REMOTE_DIR:-sketchseg}"       # on each worker, relative to the home directory
REMOTE_VENV="${REMOTE_VENV:-sketchseg_venv}"  # likewise
REMOTE_PYTHON="${REMOTE_PYTHON:-3.11}"      # jax needs >= 3.11; the TPU images ship 3.10, so uv fetches one
JAX_PIP_SPEC="${JAX_PIP_SPEC:-}"            # default: jax[tpu]==<the jax pin in requirements.txt>
# ---- the run --------------------------------------------------------------------------------
CONFIG="${CONFIG:-configs/world_classifier.py}"  # relative to REMOTE_DIR
WORKDIR="${WORKDIR:-gs://my-bucket/sketchseg/world_classifier}"  # shared by all hosts: gs://
EXTRA="${EXTRA:-}"                  # more overrides, space separated
# SKETCHSEG_DISTRIBUTED=1: the engine calls jax.distributed.initialize(), which reads the
# slice layout from the TPU metadata server (plain TPU VMs set no variable it could detect).
REMOTE_ENV="${REMOTE_ENV:-TF_CPP_MIN_LOG_LEVEL=1 SKETCHSEG_DISTRIBUTED=1}"  # KEY=VALUE words for the train command
LOG_FILE="${LOG_FILE:-sketchseg_train.log}"  # on each worker, in the home directory
PID_FILE="${PID_FILE:-sketchseg_train.pid}"
WORKER="${WORKER:-0}"               # which worker `logs` follows
DRY_RUN="${DRY_RUN:-}"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

run() {
  if [[ $DRY_RUN == 1 ]]; then show_cmd "$@"; else "$@"; fi
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

if [[ -z $DRY_RUN ]]; then
  if command -v gcloud > /dev/null; then
    DRY_RUN=0
  else
    echo "tpu_pod.sh: gcloud not found; printing the commands instead (DRY_RUN=1)" >&2
    DRY_RUN=1
  fi
fi

tpu_vm=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" --project="$PROJECT")

# Runs one shell command line on every worker at once.
on_all_workers() {
  run "${tpu_vm[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command "$1"
}

jax_pip_spec() {
  if [[ -n $JAX_PIP_SPEC ]]; then
    echo "$JAX_PIP_SPEC"
    return
  fi
  local version
  version=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$REPO_DIR/requirements.txt" 2> /dev/null || true)
  echo "jax[tpu]${version:+==$version}"
}

cmd_create() {
  local extra=()
  if [[ $SPOT == 1 ]]; then extra+=(--spot); fi
  run "${tpu_vm[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
}

cmd_setup() {
  local archive="${TMPDIR:-/tmp}/sketchseg_code.tgz" remote_archive="sketchseg_code.tgz"
  # A tarball rather than `scp --recurse`: one transfer per worker, without the local venv.
  run tar -czf "$archive" -C "$REPO_DIR" --exclude=./.venv --exclude=./.git \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache .
  run "${tpu_vm[@]}" scp "$archive" "$TPU_NAME:$remote_archive" "${where[@]}" --worker=all
  local dir venv
  dir=$(quote_word "$REMOTE_DIR")
  venv=$(quote_word "$REMOTE_VENV")
  on_all_workers "set -e; cd \"\$HOME\"; rm -rf $dir; mkdir -p $dir; \
tar -xzf $remote_archive -C $dir; \
python3 -m pip install --user -q -U uv || \
python3 -m pip install --user -q -U --break-system-packages uv; export PATH=\"\$HOME/.local/bin:\$PATH\"; \
uv venv -q --allow-existing --python $(quote_word "$REMOTE_PYTHON") $venv; \
uv pip install -q --python $venv/bin/python $(quote_word "$(jax_pip_spec)") -r $dir/requirements.txt; \
uv pip install -q --python $venv/bin/python --no-deps -e $dir; \
$venv/bin/python -c 'import jax, sketchseg_jax; print(\"jax\", jax.__version__, \"ready\")'"
}

cmd_run() {
  if [[ $WORKDIR != gs://* ]]; then
    echo "tpu_pod.sh: warning: WORKDIR=$WORKDIR is not gs://; every host must see the same" \
      "checkpoint directory" >&2
  fi
  local env_words=() extra=() train
  read -r -a env_words <<< "$REMOTE_ENV"
  read -r -a extra <<< "$EXTRA"
  if [[ -n ${LIBTPU_INIT_ARGS:-} ]]; then
    env_words+=("LIBTPU_INIT_ARGS=$LIBTPU_INIT_ARGS")  # the user's libtpu flags travel along
  fi
  # "$HOME" stays unquoted-by-us so the worker's shell expands it.
  train="$(show_cmd env "${env_words[@]}") \"\$HOME\"/$(quote_word "$REMOTE_VENV/bin/sketchseg") \
$(show_cmd train --config "$CONFIG" --workdir "$WORKDIR" "${extra[@]}" "$@")"
  local pid log
  pid=$(quote_word "$PID_FILE")
  log=$(quote_word "$LOG_FILE")
  on_all_workers "cd \"\$HOME\"; \
if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2> /dev/null; then \
echo \"\$(hostname): a run is still alive (pid \$(cat $pid)); stop it first\" >&2; exit 1; fi; \
cd $(quote_word "$REMOTE_DIR") || exit 1; \
nohup $train > \"\$HOME\"/$log 2>&1 < /dev/null & echo \$! > \"\$HOME\"/$pid; \
echo \"\$(hostname): started pid \$(cat \"\$HOME\"/$pid), log ~/$LOG_FILE\""
}

cmd_logs() {
  run "${tpu_vm[@]}" ssh "$TPU_NAME" "${where[@]}" --worker="$WORKER" \
    --command "tail -n +1 -F \"\$HOME\"/$(quote_word "$LOG_FILE")"
}

cmd_stop() {
  local pid
  pid=$(quote_word "$PID_FILE")
  on_all_workers "cd \"\$HOME\"; if [ -f $pid ] && kill -TERM \"\$(cat $pid)\" 2> /dev/null; \
then echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): no run alive\"; fi"
}

cmd_status() {
  run "${tpu_vm[@]}" describe "$TPU_NAME" "${where[@]}"
}

cmd_delete() {
  run "${tpu_vm[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
}

subcommands=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    break
  fi
  subcommands+=("$1")
  shift
done
((${#subcommands[@]})) || die "usage: tpu_pod.sh create|setup|run|logs|stop|status|delete ... [-- OVERRIDES]"
[[ -n $REMOTE_DIR && $REMOTE_DIR != /* && $REMOTE_DIR != *..* ]] ||
  die "REMOTE_DIR must be a path under the home directory, got '$REMOTE_DIR'"
for sub in "${subcommands[@]}"; do
  case $sub in
    create | setup | run | logs | stop | status | delete) ;;
    *) die "unknown subcommand '$sub' (create|setup|run|logs|stop|status|delete)" ;;
  esac
done
for sub in "${subcommands[@]}"; do
  if [[ $sub == run ]]; then cmd_run "$@"; else "cmd_$sub"; fi
done
