"""Where training metrics go: WORKDIR/metrics.jsonl (one JSON object per logged step, `step`
and every scalar), TensorBoard event files under WORKDIR/tensorboard, and the terminal (a
progress line with ETA when interactive, plain log lines otherwise). Only the process that
`is_main` writes anything."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def image_grid(images: np.ndarray, columns: int = 4) -> np.ndarray:
  """(N, H, W, 3) uint8 -> one (rows*H, columns*W, 3) uint8 image."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * h, columns * w, c), images.dtype)
  for i, img in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
  return grid


def truncate_metrics(path: Path, last_step: int):
  """Drop lines logged after `last_step`: a resumed run logs those steps again."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line).get("step", 0) <= last_step:
        keep.append(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(l + "\n" for l in keep))
  tmp.replace(path)


class Reporter:
  def __init__(self, workdir, total_steps: int, is_main: bool, tensorboard: bool = True,
               stream=None):
    self.is_main = is_main
    self.total = total_steps
    self.stream = stream or sys.stderr
    self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
    self.t0 = time.perf_counter()
    self.first_step = None
    self.workdir = Path(workdir)
    self.jsonl_path = self.workdir / "metrics.jsonl"
    self._jsonl = None
    self._tb = None
    if is_main:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(self.jsonl_path, "a", buffering=1)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

  def resumed_at(self, step: int):
    """Forget lines logged after `step` (the resumed run logs those steps again)."""
    if self._jsonl is None:
      return
    self._jsonl.close()
    truncate_metrics(self.jsonl_path, step)
    self._jsonl = open(self.jsonl_path, "a", buffering=1)

  def scalars(self, step: int, metrics: Mapping[str, float]):
    if not self.is_main:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
    self._console(step, row)

  def images(self, step: int, images: Mapping[str, np.ndarray]):
    """(H, W, 3) uint8 or float [0,1] images into TensorBoard."""
    if self._tb is None:
      return
    for k, img in images.items():
      self._tb.add_image(k, np.asarray(img), step, dataformats="HWC")

  def _console(self, step, row):
    if self.first_step is None:
      self.first_step, self.t_first = step, time.perf_counter()
    done = step - self.first_step
    rate = done / max(time.perf_counter() - self.t_first, 1e-9) if done else 0.0
    eta = (self.total - step) / rate if rate else float("nan")
    keys = [k for k in ("loss", "lr", "grad_norm", "examples_per_sec") if k in row]
    keys += [k for k in row if k.startswith("eval/")]
    text = " ".join(f"{k}={row[k]:.4g}" for k in keys)
    pct = 100.0 * step / max(self.total, 1)
    eta_text = _fmt_duration(eta) if math.isfinite(eta) else "?"
    line = f"step {step}/{self.total} ({pct:.0f}%) {text} eta {eta_text}"
    if self.interactive:
      width = 24
      filled = int(width * step / max(self.total, 1))
      self.stream.write("\r[" + "#" * filled + "." * (width - filled) + "] " + line + "\x1b[K")
      if step >= self.total:
        self.stream.write("\n")
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def message(self, text: str):
    if self.is_main:
      if self.interactive:
        self.stream.write("\n")
      self.stream.write(text + "\n")
      self.stream.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
