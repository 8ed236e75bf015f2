"""Chained stages: one config that trains several stages in order, each in its own ordinary
workdir under the chain's, then evaluates them, writes report.md and exports the segmenter.

A chain config (config.stage == "chain") holds:
  chain:   the stage names in order, e.g. ["teacher", "distill", "segmenter", "supervised"]
  <name>:  each stage's full config (a ConfigDict, overridable as --config.<name>.a.b=v)
  links:   {"<name>": "<other name>"}: before <name> runs, its config.teacher.workdir is set
           to the absolute workdir of <other name> (e.g. segmenter: "distill"), so stages
           find the runs they build on
  report:  {"export": True}: export the stage called "segmenter" to WORKDIR/export
Every stage resumes like any run (a finished one only re-checks its last checkpoint), so the
chain command resumes too. `sketchseg eval --workdir CHAIN_DIR` re-runs every evaluation and
the report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ml_collections

from sketchseg_jax.errors import UserError


def _stage_config(config, name: str, workdir: Path) -> ml_collections.ConfigDict:
  if name not in config:
    raise UserError(f"chain names stage {name!r} but the config has no {name!r} block")
  sub = ml_collections.ConfigDict(config[name].to_dict())
  links = dict(config.get("links", {}))
  if name in links:
    source = links[name]
    if source not in config.chain or list(config.chain).index(source) >= list(config.chain).index(name):
      raise UserError(f"links.{name}={source!r} must name a stage that runs before {name!r} "
                      f"(chain: {list(config.chain)})")
    sub.teacher.workdir = str((workdir / source).absolute())
  return sub


def _export(run_dir: Path, out: Path):
  import importlib.util
  from sketchseg_jax.export import export_checkpoint
  # The ONNX graphs are traced from the PyTorch module: only where torch and onnx are
  # installed (requirements-test.txt); the PyTorch files themselves need neither.
  onnx = all(importlib.util.find_spec(m) for m in ("torch", "onnx", "onnxruntime", "onnxscript"))
  export_checkpoint(run_dir, out, onnx=onnx)
  if not onnx:
    _say("ONNX graphs skipped (torch, onnx, onnxruntime and onnxscript are not all installed; "
         f"`pip install -r requirements-test.txt`, then `sketchseg export --checkpoint {run_dir} "
         f"--out {out}` adds them)")


def _say(message: str):
  print(f"[chain] {message}", flush=True)


def train(config, workdir) -> dict:
  """Trains every stage of the chain, then evaluates, reports and exports."""
  from sketchseg_jax.train import loop
  from sketchseg_jax.train.config_lib import save_config
  workdir = Path(workdir)
  save_config(config, workdir)
  started = time.perf_counter()
  names = list(config.chain)
  for i, name in enumerate(names):
    sub = _stage_config(config, name, workdir)
    _say(f"stage {i + 1}/{len(names)}: {name} ({sub.stage}, {sub.total_steps} steps) "
         f"in {workdir / name}")
    t0 = time.perf_counter()
    last = loop.train(sub, workdir / name)
    if last.get("preempted"):
      _say(f"stopped in {name} (SIGTERM); run the same command to resume")
      return {}
    _say(f"{name} done in {time.perf_counter() - t0:.0f} s")
  return evaluate(config, workdir, started=started)


def evaluate(config, workdir, data=None, started=None) -> dict:
  """Evaluates every stage (WORKDIR/<name>/eval/metrics.json), writes WORKDIR/report.md and
  grid.png, exports the segmenter; returns {name: report}."""
  from sketchseg_jax.commands.eval import evaluate_workdir
  from sketchseg_jax.train.config_lib import read_saved_config
  from sketchseg_jax.train.report import write_report
  workdir = Path(workdir)
  started = time.perf_counter() if started is None else started
  reports = {}
  for name in config.chain:
    sub_dir = workdir / name
    if not (sub_dir / "checkpoints").is_dir():
      raise UserError(f"{sub_dir} has no checkpoints: train the chain first")
    sub = read_saved_config(sub_dir)
    t0 = time.perf_counter()
    # Each stage's own data: an evaluation folder (--data) fits only segmentation stages.
    stage_data = data if sub.stage in ("segmenter", "supervised") else None
    result = evaluate_workdir(sub_dir, sub, data=stage_data)
    if result is not None:
      reports[name] = result[0]
      _say(f"evaluated {name} in {time.perf_counter() - t0:.0f} s: {result[1]}")
  grid = workdir / "segmenter" / "eval" / "grid.png"
  if grid.exists():
    shutil.copyfile(grid, workdir / "grid.png")
  export_dir = None
  report_cfg = dict(config.get("report", {}))
  if report_cfg.get("export", True) and (workdir / "segmenter" / "checkpoints").is_dir():
    export_dir = workdir / "export"
    _export(workdir / "segmenter", export_dir)
    _say(f"exported the segmenter to {export_dir}")
  path = write_report(workdir, reports, export_dir, minutes=(time.perf_counter() - started) / 60)
  text = path.read_text()
  print()
  print(text.split("\n## ", 1)[0].strip())
  print()
  print(f"The tables, and what each figure means: {path}")
  print("## Files" + text.split("\n## Files", 1)[1].rstrip() if "\n## Files" in text else "")
  return reports
