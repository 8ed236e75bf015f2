"""Export a training run for PyTorch users: `export_checkpoint(run, out)`.

A segmenter (or supervised) run becomes a self-contained PyTorch module with safetensors
weights and ONNX graphs (sketchseg_jax.export.segmenter_export); a teacher run becomes
Hugging Face CLIP tower folders with its prompts, and a distillation run the same with its
distilled photo tower beside the teacher's sketch tower (sketchseg_jax.convert.teacher_export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sketchseg_jax.errors import UserError

SEGMENTER_STAGES = ("segmenter", "supervised")
# Files whose presence marks a folder as an earlier export, which may be replaced.
_EXPORT_MARKERS = ("sketchseg.json", "teacher.json")


def _workdir(checkpoint) -> Path:
  """The run's workdir from a workdir or its checkpoints/ folder."""
  path = Path(checkpoint)
  if not path.exists():
    raise UserError(f"checkpoint {path} does not exist")
  if not path.is_dir():
    raise UserError(f"checkpoint {path} is a file; pass a training run's workdir")
  if path.name == "checkpoints" and (path.parent / "config.json").exists():
    path = path.parent
  if not (path / "config.json").exists() and (path / "segmenter" / "config.json").exists():
    path = path / "segmenter"  # the quickstart's workdir: its segmenter run
  if not (path / "checkpoints").is_dir():
    raise UserError(f"{path} has no checkpoints/ folder; is it a training run's workdir?")
  if not (path / "config.json").exists():
    raise UserError(f"{path} holds no config.json; is it a training run's workdir?")
  return path


def _check_out(out: Path, workdir: Path):
  """Refuse an OUT whose replacement would destroy something that is not an export."""
  out_abs, work_abs = out.absolute().resolve(), workdir.absolute().resolve()
  if out_abs == work_abs or out_abs in work_abs.parents:
    raise UserError(f"--out {out} holds the run being exported; choose another folder")
  if out.exists():
    if not out.is_dir():
      raise UserError(f"--out {out} exists and is a file")
    if any(out.iterdir()) and not any((out / m).exists() for m in _EXPORT_MARKERS):
      raise UserError(f"--out {out} exists and is not an earlier export; refusing to replace it")


def export_checkpoint(checkpoint, out, *, step: Optional[int] = None, onnx: bool = True) -> dict:
  """Export the run in `checkpoint` (its workdir) at `step` (default: the newest) to `out`.
  Returns {"stage", "step", "out", "files"}."""
  from sketchseg_jax.train import config_lib, stage as stage_lib

  workdir = _workdir(checkpoint)
  out = Path(out)
  _check_out(out, workdir)
  config = config_lib.read_saved_config(workdir)
  name = config.get("stage")
  if name not in SEGMENTER_STAGES + ("teacher", "distill"):
    raise UserError(f"{workdir} is a {name!r} run; export handles segmenter, supervised, "
                    "teacher and distill runs")
  stage = stage_lib.build_saved(config, workdir)
  from sketchseg_jax.train.checkpoints import read_params
  params, got = read_params(workdir / "checkpoints", step)
  if name == "teacher":
    from sketchseg_jax.convert.teacher_export import export_teacher
    export_teacher(stage.model, params, out)
  elif name == "distill":
    from sketchseg_jax.convert.teacher_export import export_distilled
    export_distilled(stage.teacher, params["teacher"], stage.student, params["student"], out)
  else:
    from sketchseg_jax.export.segmenter_export import export_segmenter
    export_segmenter(stage, params, out, onnx=onnx, step=int(got),
                     source=str(workdir.absolute()))
  files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  return {"stage": name, "step": int(got), "out": str(out), "files": files}


__all__ = ["export_checkpoint", "SEGMENTER_STAGES"]
