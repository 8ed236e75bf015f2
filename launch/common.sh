# shellcheck shell=bash
# Shared by local.sh and tpu_pod.sh (sourced): print a command the way a shell would read it
# back, for DRY_RUN output. slurm_gpu.sbatch keeps its own copy because sbatch runs a spooled
# copy of the script, away from this folder.

quote_word() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

show_cmd() {
  local sep="" w
  for w in "$@"; do
    printf '%s' "$sep"
    quote_word "$w"
    sep=" "
  done
  printf '\n'
}
