"""`sketchseg eval`: the full evaluation of a trained stage, written to WORKDIR/eval/metrics.json."""

import math
import numbers
import os

from sketchseg_jax.errors import UserError


def register(sub):
  p = sub.add_parser(
      "eval", help="evaluate a trained workdir; writes WORKDIR/eval/metrics.json",
      description="Evaluate the newest checkpoint of WORKDIR (or --step N) with the stage's "
                  "evaluation report. The config is WORKDIR/config.json unless --config is "
                  "given; --config.a.b=value overrides apply to either. --data evaluates on "
                  "another data path than the config's.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--config", metavar="FILE[:ARG]",
                 help="config to use instead of WORKDIR/config.json")
  p.add_argument("--data", metavar="PATH", help="evaluation data to use instead of the config's")
  p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  p.set_defaults(handler=run, accepts_overrides=True)


def run(args):
  import logging
  from pathlib import Path

  from sketchseg_jax.train import config_lib
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

  workdir = Path(args.workdir)
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist")
  if args.config:
    config = config_lib.load_config(args.config, args.overrides)
  else:
    config = config_lib.read_saved_config(workdir)
    config_lib.apply_overrides(config, args.overrides)
    config.lock()
  if "stage" not in config:
    raise UserError(f"config of {workdir} names no stage (config.stage)")
  if config.stage == "chain":
    from sketchseg_jax.train import chain
    chain.evaluate(config, workdir, data=args.data)
    return 0
  result = evaluate_workdir(workdir, config, data=args.data, step=args.step)
  if result is None:
    return 0
  report, path, step = result
  for line in summary_lines(report):
    print(line)
  print(f"wrote {path} (checkpoint step {step})")
  return 0


def evaluate_workdir(workdir, config, data=None, step=None):
  """Runs the stage's evaluation report on WORKDIR's checkpoint and writes
  WORKDIR/eval/metrics.json; (report, path, step) on the main process, else None."""
  from sketchseg_jax.train import stage as stage_lib
  stage = stage_lib.build_saved(config, workdir)
  # Fail before the (slow) checkpoint read when the stage cannot evaluate at all.
  if type(stage).eval_report is stage_lib.Stage.eval_report:
    raise UserError(f"stage {config.stage!r} has no evaluation report")

  from sketchseg_jax.train.checkpoints import read_params
  params, step = read_params(workdir / "checkpoints", step)
  import inspect
  kwargs = {}
  if "out_dir" in inspect.signature(stage.eval_report).parameters:
    kwargs["out_dir"] = workdir / "eval"  # figures (a PNG grid) beside metrics.json
  report = stage.eval_report(params, data=data, **kwargs)
  if not isinstance(report, dict):
    raise UserError(f"stage {config.stage!r} returned a {type(report).__name__} as its "
                    "evaluation report, not a dict")
  report = _jsonable(report, "report")

  import jax
  if jax.process_index() != 0:
    return None
  return report, _write_json(workdir / "eval" / "metrics.json", report), step


def _jsonable(value, where):
  """numpy / jax scalars and arrays to plain Python; NaN and infinities to null (strict JSON)."""
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      if not isinstance(k, str):
        raise UserError(f"evaluation report key {k!r} in {where} is not a string")
      out[k] = _jsonable(v, f"{where}/{k}")
    return out
  if isinstance(value, (list, tuple)):
    return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if value is None or isinstance(value, (bool, str)):
    return value
  if hasattr(value, "__array__") and not isinstance(value, numbers.Number):
    import numpy as np
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
      raise UserError(f"evaluation report entry {where} is an array of {array.dtype}")
    return _jsonable(array.tolist(), where)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    value = float(value)
    return value if math.isfinite(value) else None
  raise UserError(f"evaluation report entry {where} is a {type(value).__name__}, "
                  "which JSON cannot hold")


def _write_json(path, report):
  import json
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def _format(value):
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, list):
    return f"[{len(value)} values]"
  return str(value)


def summary_lines(report: dict, prefix: str = "") -> list:
  """One line per group of scalars (`full/acc@1=0.53 full/acc@5=0.8 ...`; nested groups such
  as `untrained/full/...` get lines of their own), then one line with the top-level scalars."""
  lines, scalars = [], []
  for key, value in report.items():
    if isinstance(value, dict):
      lines += summary_lines(value, f"{prefix}{key}/")
    else:
      scalars.append(f"{prefix}{key}={_format(value)}")
  if scalars:
    lines.insert(0, " ".join(scalars)) if prefix else lines.append(" ".join(scalars))
  return lines
