#!/usr/bin/env python3
"""Expand a sweep of config overrides into `sketchseg train` runs, one workdir each.

Runs come from the product of three sources, each optional:
  --spec FILE.py     a module whose get_sweep() returns a list of {key: value} dicts;
  --grid KEY=V1,V2   one axis per flag, all axes crossed (first flag varies slowest);
  --zip KEY=V1,V2    all --zip flags advance together (their lists must be equally long).
A bare `--config.KEY=VALUE` is a constant override added to every run. Keys may be written
with or without the leading `config.`; values reach the engine as `--config.KEY=VALUE`.

Each run's workdir is WORKDIR_BASE/<name>, the name built from the values that vary across
the sweep (e.g. `lr=0.001_variant=S-16`). Names depend only on the values, not on the run's
position, so launching the same sweep again points every run at its old workdir, where the
engine resumes from the latest checkpoint.

Modes: --print (default) writes one shell-quoted command per run, for a cluster scheduler;
--dry-run describes what --run would do; --run runs them here one after another.

Standard library only, so it runs on a submission host without JAX installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from typing import Any, Optional, Sequence

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
# Characters kept in directory names; everything else becomes '-'. '=' and '+' are safe in
# POSIX paths, gs:// object names and unquoted shell words.
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
MAX_NAME_LEN = 100
OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}


class SweepError(ValueError):
  """A malformed sweep: the message says which flag or entry and why."""


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  workdir: str
  overrides: tuple  # ((key, value_string), ...) in sweep order, constants last
  argv: tuple


# ---------------------------------------------------------------------------------------------
# Parsing values and keys


def normalize_key(key: str, where: str) -> str:
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  if not KEY_RE.match(key):
    raise SweepError(f"{where}: {key!r} is not a dotted config key like optimizer.lr")
  return key


def split_values(text: str, where: str) -> list:
  """Split on commas outside brackets and outside a quoted value; `\\,` is a literal comma.

  So `--grid patch=(16,16),(14,14)` gives two values and `--grid name=a\\,b,c` gives `a,b` and
  `c`.
  """
  values, current, stack, quote = [], [], [], None
  chars = iter(text)
  for ch in chars:
    if ch == "\\":
      nxt = next(chars, None)
      if nxt is None:
        raise SweepError(f"{where}: trailing backslash in {text!r}")
      current.append(nxt if nxt == "," else ch + nxt)
    elif quote:
      current.append(ch)
      if ch == quote:
        quote = None
    elif ch in "'\"" and not "".join(current).strip():
      # Only a quote that opens a value groups; an apostrophe inside a word is a letter.
      quote = ch
      current.append(ch)
    elif ch in OPEN_TO_CLOSE:
      stack.append(OPEN_TO_CLOSE[ch])
      current.append(ch)
    elif ch in ")]}":
      if not stack or stack.pop() != ch:
        raise SweepError(f"{where}: unbalanced {ch!r} in {text!r}")
      current.append(ch)
    elif ch == "," and not stack:
      values.append("".join(current))
      current = []
    else:
      current.append(ch)
  if stack or quote:
    raise SweepError(f"{where}: unclosed bracket or quote in {text!r}")
  values.append("".join(current))
  values = [v.strip() for v in values]
  if any(v == "" for v in values):
    raise SweepError(f"{where}: empty value in {text!r}")
  return values


def parse_axis(flag_value: str, flag: str) -> tuple:
  """'KEY=V1,V2' -> (key, [V1, V2])."""
  key, eq, rest = flag_value.partition("=")
  where = f"{flag} {flag_value}"
  if not eq:
    raise SweepError(f"{where}: expected KEY=VALUE[,VALUE...]")
  return normalize_key(key, where), split_values(rest, where)


def format_value(value: Any, where: str) -> str:
  """A Python value from a spec file -> the text of a --config.KEY=TEXT override."""
  if isinstance(value, str):
    return value
  if value is None or isinstance(value, (bool, int, float)):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  raise SweepError(f"{where}: value {value!r} of type {type(value).__name__} cannot be "
                   "passed as a --config override; use a string, number, bool, None or tuple")


# ---------------------------------------------------------------------------------------------
# Sources -> list of override dicts


def load_spec(path: str) -> list:
  """Runs from a spec module: get_sweep() -> [{key: value}, ...]."""
  if not os.path.isfile(path):
    raise SweepError(f"--spec {path}: no such file")
  module_spec = importlib.util.spec_from_file_location("_sketchseg_sweep_spec", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise SweepError(f"--spec {path}: {e}") from None
  if not callable(getattr(module, "get_sweep", None)):
    raise SweepError(f"--spec {path}: defines no get_sweep() function")
  entries = module.get_sweep()
  if not isinstance(entries, (list, tuple)) or not entries:
    raise SweepError(f"--spec {path}: get_sweep() must return a non-empty list of dicts")
  runs = []
  for i, entry in enumerate(entries):
    where = f"--spec {path}: entry {i}"
    if not isinstance(entry, dict):
      raise SweepError(f"{where} is a {type(entry).__name__}, not a dict")
    run = {}
    for key, value in entry.items():
      if not isinstance(key, str):
        raise SweepError(f"{where}: key {key!r} is not a string")
      k = normalize_key(key, where)
      if k in run:
        raise SweepError(f"{where}: {key!r} given twice")
      run[k] = format_value(value, f"{where}, key {key!r}")
    runs.append(run)
  return runs


def grid_runs(axes: Sequence[tuple]) -> list:
  keys = [k for k, _ in axes]
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def zip_runs(axes: Sequence[tuple]) -> list:
  lengths = {k: len(v) for k, v in axes}
  if len(set(lengths.values())) > 1:
    detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
    raise SweepError(f"--zip lists must have equal lengths: {detail}")
  keys = [k for k, _ in axes]
  return [dict(zip(keys, values)) for values in zip(*(v for _, v in axes))]


def check_disjoint(named_keysets: Sequence[tuple]) -> None:
  """A key may come from one source only; two would silently overwrite each other."""
  seen = {}
  for source, keys in named_keysets:
    for k in keys:
      if k in seen:
        raise SweepError(f"config.{k} is set by both {seen[k]} and {source}")
      seen[k] = source


def expand(spec_runs: Optional[list] = None, grid: Sequence[tuple] = (),
           zipped: Sequence[tuple] = (), constants: Optional[dict] = None) -> list:
  """Product of the sources -> list of override dicts (constants excluded)."""
  grid_keys = [k for k, _ in grid]
  dup = {k for k in grid_keys if grid_keys.count(k) > 1}
  zip_keys = [k for k, _ in zipped]
  dup |= {k for k in zip_keys if zip_keys.count(k) > 1}
  if dup:
    raise SweepError(f"key given twice: {', '.join(sorted(dup))}")
  spec_keys = sorted({k for run in spec_runs or () for k in run})
  check_disjoint([("--spec", spec_keys), ("--grid", grid_keys), ("--zip", zip_keys),
                  ("a constant --config override", list(constants or {}))])
  sources = [spec_runs or [{}], grid_runs(grid) if grid else [{}],
             zip_runs(zipped) if zipped else [{}]]
  runs = []
  for parts in itertools.product(*sources):
    merged = {}
    for part in parts:
      merged.update(part)
    runs.append(merged)
  for i, run in enumerate(runs):
    for j in range(i):
      if runs[j] == run:
        raise SweepError(f"runs {j} and {i} are identical ({run_label(run)}); "
                         "they would share a workdir")
  return runs


def run_label(run: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in run.items()) or "no overrides"


# ---------------------------------------------------------------------------------------------
# Names


def short_labels(keys: Sequence[str]) -> dict:
  """Shortest dotted suffix of each key that tells it apart from the others."""
  labels = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      label = ".".join(parts[-n:])
      clash = [o for o in keys if o != key and
               (o == label or o.endswith("." + label))]
      if not clash:
        break
    labels[key] = label
  return labels


def sanitize_value(value: str) -> str:
  """'(16, 16)' -> '16-16', 'S/16' -> 'S-16': brackets and quotes at the ends go, inner runs
  of other characters become one '-'."""
  value = re.sub(r"^[^A-Za-z0-9._+=-]+|[^A-Za-z0-9._+=-]+$", "", value)
  return UNSAFE_NAME_CHARS.sub("-", value)


def sanitize(text: str) -> str:
  name = UNSAFE_NAME_CHARS.sub("-", text)
  name = re.sub(r"-{2,}", "-", name).strip("-")
  # A leading '.' would hide the directory; a leading '-' would read as a flag.
  if not name or name[0] in ".-":
    name = "run" + ("_" + name if name else "")
  if len(name) > MAX_NAME_LEN:
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    name = name[:MAX_NAME_LEN - 9].rstrip("-_.") + "-" + digest
  return name


def run_names(runs: Sequence[dict]) -> list:
  """Readable, unique, position-independent names from the values that vary."""
  keys = list(dict.fromkeys(k for run in runs for k in run))
  missing = object()
  varied = [k for k in keys if len({run.get(k, missing) for run in runs}) > 1]
  name_keys = varied or keys
  labels = short_labels(name_keys)
  names, taken = [], set()
  for run in runs:
    raw = "_".join(f"{labels[k]}={sanitize_value(run[k])}" for k in name_keys if k in run)
    base = sanitize(raw) if raw else "run"
    name, n = base, 1
    # Compared without case: case-insensitive filesystems would merge such names.
    while name.lower() in taken:
      n += 1
      name = f"{base}-{n}"
    taken.add(name.lower())
    names.append(name)
  return names


# ---------------------------------------------------------------------------------------------
# Commands


def join_workdir(base: str, name: str) -> str:
  # Plain string join keeps gs://bucket/... intact on every OS.
  return base.rstrip("/") + "/" + name


def build_runs(runs: Sequence[dict], constants: dict, config: str, workdir_base: str,
               command: Sequence[str], passthrough: Sequence[str] = ()) -> list:
  out = []
  for run, name in zip(runs, run_names(runs)):
    workdir = join_workdir(workdir_base, name)
    overrides = tuple(run.items()) + tuple(constants.items())
    argv = (tuple(command) + ("train", "--config", config, "--workdir", workdir)
            + tuple(f"--config.{k}={v}" for k, v in overrides) + tuple(passthrough))
    out.append(Run(name=name, workdir=workdir, overrides=overrides, argv=argv))
  return out


def default_command(for_running: bool) -> list:
  """`sketchseg`, or `python -m sketchseg_jax.cli` when running here without the script."""
  if for_running and shutil.which("sketchseg") is None:
    return [sys.executable, "-m", "sketchseg_jax.cli"]
  return ["sketchseg"]


def run_all(runs: Sequence[Run], keep_going: bool, out=None) -> int:
  """Run one after another; a SIGTERM to this process is passed to the running child, so
  the engine checkpoints before the sweep stops."""
  out = out or sys.stderr
  results = []
  child = {"proc": None, "terminated": False}

  def forward_term(signum, frame):
    child["terminated"] = True
    if child["proc"] is not None and child["proc"].poll() is None:
      child["proc"].send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward_term)
  try:
    for i, run in enumerate(runs):
      if child["terminated"]:
        break
      print(f"[sweep {i + 1}/{len(runs)}] {run.workdir}\n  $ {shlex.join(run.argv)}",
            file=out, flush=True)
      child["proc"] = None
      try:
        child["proc"] = subprocess.Popen(run.argv)
        rc = child["proc"].wait()
      except KeyboardInterrupt:
        # The child got the same SIGINT from the terminal; let it finish its exit.
        if child["proc"] is not None:
          child["proc"].wait()
        results.append((run, "interrupted"))
        break
      except OSError as e:
        rc = None
        results.append((run, f"could not start: {e}"))
      else:
        results.append((run, rc))
      if child["terminated"]:
        break
      if rc != 0 and not keep_going:
        break
  finally:
    signal.signal(signal.SIGTERM, previous)
  ok = sum(1 for _, rc in results if rc == 0)
  failed = [(r, rc) for r, rc in results if rc != 0]
  skipped = len(runs) - len(results)
  print(f"[sweep] {len(runs)} runs: {ok} ok, {len(failed)} failed, {skipped} not run",
        file=out)
  for r, rc in failed:
    if isinstance(rc, int):
      status = f"exit {rc}" if rc > 0 else f"killed by {signal.Signals(-rc).name}"
    else:
      status = rc
    print(f"  failed: {r.name} ({status})", file=out)
  return 0 if not failed and not skipped else 1


def describe(runs: Sequence[Run], out=None) -> None:
  out = out or sys.stdout
  for i, run in enumerate(runs):
    state = ""
    if "://" not in run.workdir and os.path.isdir(run.workdir):
      state = "  (exists: the engine resumes if it holds a checkpoint)"
    print(f"[{i + 1}/{len(runs)}] {run.name}{state}", file=out)
    for k, v in run.overrides:
      print(f"    {k} = {v}", file=out)
    print(f"  would run: {shlex.join(run.argv)}", file=out)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="sweep.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Examples:\n"
             "  launch/sweep.py --config configs/world_classifier.py:runlocal \\\n"
             "      --workdir-base /tmp/sweeps/lr --grid optimizer.lr=1e-3,3e-4 --print\n"
             "  launch/sweep.py --config configs/world_classifier.py --workdir-base gs://b/s \\\n"
             "      --zip optimizer.lr=1e-3,3e-4 --zip seed=0,1 --config.total_steps=500 --run\n"
             "Arguments after `--` are appended to every command unchanged.")
  p.add_argument("--config", required=True,
                 help="the engine's --config value, e.g. configs/world_classifier.py:runlocal")
  p.add_argument("--workdir-base", required=True, metavar="BASE",
                 help="each run gets BASE/<name> (a local path or gs://...)")
  p.add_argument("--spec", metavar="FILE.py", help="module with get_sweep() -> list of dicts")
  p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                 help="one axis of the cross product; repeatable")
  p.add_argument("--zip", action="append", default=[], metavar="KEY=V1,V2",
                 help="lists advanced together; repeatable, equal lengths")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--print", dest="mode", action="store_const", const="print",
                    help="print one shell-quoted command per run (default)")
  mode.add_argument("--dry-run", dest="mode", action="store_const", const="dry-run",
                    help="describe each run and the command --run would execute")
  mode.add_argument("--run", dest="mode", action="store_const", const="run",
                    help="run them here, one after another")
  mode.add_argument("--count", dest="mode", action="store_const", const="count",
                    help="print the number of runs (e.g. for a SLURM --array size)")
  p.add_argument("--index", type=int, metavar="I",
                 help="only run I (0-based), e.g. $SLURM_ARRAY_TASK_ID")
  p.add_argument("--keep-going", action="store_true",
                 help="with --run: go on after a failed run (default: stop)")
  p.add_argument("--sketchseg-cmd", metavar="CMD",
                 help="the command before `train` (default: sketchseg; with --run and "
                      "--dry-run, `python -m sketchseg_jax.cli` when sketchseg is not on PATH)")
  return p


def split_passthrough(argv: Sequence[str]) -> tuple:
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def parse_constants(unknown: Sequence[str]) -> dict:
  constants = {}
  for arg in unknown:
    if not arg.startswith("--config.") or "=" not in arg:
      raise SweepError(f"unrecognised argument {arg!r} (constant overrides are written "
                       "--config.KEY=VALUE; engine flags go after `--`)")
    key, _, value = arg[2:].partition("=")
    k = normalize_key(key, arg)
    if k in constants:
      raise SweepError(f"{arg}: config.{k} given twice")
    constants[k] = value
  return constants


def main(argv: Optional[Sequence[str]] = None) -> int:
  own, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, unknown = parser.parse_known_args(own)
  mode = args.mode or "print"
  try:
    constants = parse_constants(unknown)
    spec_runs = load_spec(args.spec) if args.spec else None
    grid = [parse_axis(g, "--grid") for g in args.grid]
    zipped = [parse_axis(z, "--zip") for z in args.zip]
    overrides = expand(spec_runs, grid, zipped, constants)
    if args.sketchseg_cmd:
      command = shlex.split(args.sketchseg_cmd)
      if not command:
        raise SweepError("--sketchseg-cmd is empty")
    else:
      command = default_command(for_running=mode in ("run", "dry-run"))
    runs = build_runs(overrides, constants, args.config, args.workdir_base, command,
                      passthrough)
    if args.index is not None:
      if not 0 <= args.index < len(runs):
        raise SweepError(f"--index {args.index} is outside 0..{len(runs) - 1}")
      runs = [runs[args.index]]
  except SweepError as e:
    parser.exit(2, f"sweep.py: error: {e}\n")
  if mode == "count":
    print(len(runs))
  elif mode == "print":
    for run in runs:
      print(shlex.join(run.argv))
  elif mode == "dry-run":
    describe(runs)
  else:
    return run_all(runs, keep_going=args.keep_going)
  return 0


if __name__ == "__main__":
  sys.exit(main())
