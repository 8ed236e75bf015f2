"""The `sketchseg` console command that `pip install -e .` installs (DESIGN.md's public
surface), and `python -m sketchseg_jax`."""

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sketchseg_jax.cli import COMMANDS


def _help(cmd):
  env = {**os.environ, "HF_HUB_OFFLINE": "1"}
  out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  for name in COMMANDS:
    assert name in out.stdout, name
  return out.stdout


def test_console_script_is_installed_and_lists_every_subcommand():
  scripts = [e for e in importlib.metadata.entry_points(group="console_scripts")
             if e.name == "sketchseg"]
  if not scripts:
    pytest.skip("the package is not installed (pip install -e .)")
  assert scripts[0].value == "sketchseg_jax.cli:main"
  exe = Path(sysconfig.get_path("scripts")) / "sketchseg"
  assert exe.exists(), f"{exe} missing although the entry point is registered"
  _help([str(exe)])


def test_python_dash_m_runs_the_same_command():
  assert "usage: sketchseg" in _help([sys.executable, "-m", "sketchseg_jax"])
