"""Configs as big_vision writes them: `configs/X.py` with `get_config(arg=None)`.

`configs/x.py:variant=B/16,runlocal` passes "variant=B/16,runlocal" to get_config, which
parses it with `parse_arg` into typed fields. Command-line overrides `--config.a.b=value` are
applied to the returned ConfigDict with type checks; unknown keys and wrong types are errors
before any compute starts.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Iterable

import ml_collections

from sketchseg_jax.errors import UserError


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
      return lowered == "true"
    return text


def _coerce(value, like, where: str):
  """`value` converted to the type of the existing `like`, or a UserError."""
  if like is None:
    return value
  if isinstance(like, bool):
    if isinstance(value, str):
      value = _literal(value)
    if isinstance(value, bool):
      return value
  elif isinstance(like, int):
    if isinstance(value, str):
      value = _literal(value)
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(like, float):
    if isinstance(value, str):
      value = _literal(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif isinstance(like, str):
    return str(value)
  elif isinstance(like, (tuple, list)):
    if isinstance(value, str):
      value = _literal(value)
    if isinstance(value, (tuple, list)):
      return type(like)(value)
  else:
    return value
  raise UserError(f"{where}: expected {type(like).__name__}, got {value!r}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x,flag' -> ConfigDict typed like `defaults`; a bare word sets a bool to True."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UserError(f"config argument {key!r} is not one of {sorted(defaults)}")
    if not eq:
      if not isinstance(defaults[key], bool):
        raise UserError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    else:
      out[key] = _coerce(value.strip(), defaults[key], f"config argument {key!r}")
  return ml_collections.ConfigDict(out)


def _import_file(path: Path):
  if not path.is_file():
    raise UserError(f"config file {path} does not exist")
  name = f"sketchseg_config_{abs(hash(str(path.resolve())))}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config(arg=None)")
  return module


def split_override(text: str) -> tuple:
  """'--config.a.b=v' or 'config.a.b=v' or 'a.b=v' -> ('a.b', 'v')."""
  text = text[2:] if text.startswith("--") else text
  text = text[len("config."):] if text.startswith("config.") else text
  key, eq, value = text.partition("=")
  if not eq or not key:
    raise UserError(f"override {text!r} must look like --config.a.b=value")
  return key, value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]):
  for item in overrides:
    key, value = split_override(item)
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        raise UserError(f"--config.{key}: no key {'.'.join(parts[:i + 1])!r} in the config")
      node = node[part]
    leaf = parts[-1]
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or leaf not in node:
      known = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
      raise UserError(f"--config.{key}: no such key; keys here: {known}")
    current = node[leaf]
    if isinstance(current, (ml_collections.ConfigDict, dict)):
      raise UserError(f"--config.{key} is a group of settings; set its fields one by one")
    new = _literal(value) if current is None else _coerce(value, current, f"--config.{key}")
    try:
      node[leaf] = new
    except TypeError as e:
      raise UserError(f"--config.{key}: {e}") from e


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """`path/to/config.py[:arg]` or a run's saved `WORKDIR/config.json` -> the ConfigDict with
  overrides applied, locked. The saved config continues a run as it was configured, for
  example further: `--config WORKDIR/config.json --config.total_steps=4000`."""
  path, _, arg = str(spec).partition(":")
  if path.endswith(".json"):
    if arg:
      raise UserError(f"{spec}: a saved config.json takes no ':ARG' (arguments were applied "
                      "when it was written); use --config.KEY=VALUE overrides")
    if not Path(path).is_file():
      raise UserError(f"config file {path} does not exist")
    cfg = _read_json_config(Path(path))
  else:
    cfg = _import_file(Path(path)).get_config(arg or None)
    if not isinstance(cfg, ml_collections.ConfigDict):
      cfg = ml_collections.ConfigDict(cfg)
  apply_overrides(cfg, overrides)
  cfg.lock()
  return cfg


def save_config(cfg: ml_collections.ConfigDict, workdir) -> Path:
  """Writes WORKDIR/config.json, the resolved config a run used (what `eval` reads)."""
  path = Path(workdir) / "config.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(cfg.to_json_best_effort(indent=2, sort_keys=True))
  tmp.replace(path)
  return path


def read_saved_config(workdir) -> ml_collections.ConfigDict:
  path = Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{workdir} holds no config.json; is it a training workdir?")
  return _read_json_config(path)


def _read_json_config(path: Path) -> ml_collections.ConfigDict:
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise UserError(f"{path} is not a saved config (invalid JSON: {e})") from e
