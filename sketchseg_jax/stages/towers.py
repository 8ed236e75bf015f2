"""The frozen SBIR towers a downstream stage trains against, read from a finished run.

`config.teacher.workdir` names either a teacher run (photo and sketch towers of the teacher)
or a distillation run (its compact photo tower, and the sketch tower of the teacher it was
distilled from). `FrozenTowers` resolves the architecture from the run's saved config, reads
the parameters from its checkpoint (outside any trace) and gives `photo` / `sketch`
functions of (params, input) for the stage's loss.

The resolved architecture is written back into the stage's config (teacher.model,
teacher.student, teacher.data, teacher.kind) and the engine saves that config, so a later
`sketchseg eval` or Predictor rebuilds the towers from the checkpoint alone, even where the
teacher's workdir no longer exists. teacher.random_init=True builds untrained towers of
teacher.model (tests and benchmarks only).
"""

from __future__ import annotations

import logging
from pathlib import Path
import jax
import jax.numpy as jnp

from sketchseg_jax.errors import CheckpointError, UserError
from sketchseg_jax.models.sbir import SBIRTeacher
from sketchseg_jax.models.vit_config import from_config
from sketchseg_jax.param_tree import flat

log = logging.getLogger(__name__)

KINDS = ("teacher", "distill")


def teacher_module(model_cfg: dict) -> SBIRTeacher:
  vit = from_config(model_cfg["vit"])
  if model_cfg.get("pool", "cls") == "mean":
    vit = vit.replace(dense_projection=True)
  return SBIRTeacher(vit, num_prompts=int(model_cfg.get("num_prompts", 4)),
                     deep_prompts=bool(model_cfg.get("deep_prompts", False)),
                     separate_towers=bool(model_cfg.get("separate_towers", False)),
                     pool=str(model_cfg.get("pool", "cls")))


def student_module(student_cfg: dict, teacher: SBIRTeacher):
  from sketchseg_jax.stages.distill import student_from_config
  return student_from_config(student_cfg, teacher.vit)


def _saved(workdir: Path):
  from sketchseg_jax.train.config_lib import read_saved_config
  if not (workdir / "checkpoints").is_dir():
    raise UserError(f"teacher workdir {workdir} has no checkpoints/; is it a teacher or "
                    "distillation training run's workdir?")
  saved = read_saved_config(workdir)
  if saved.get("stage") not in KINDS:
    raise UserError(f"{workdir} is a {saved.get('stage')!r} run; config.teacher.workdir must "
                    "be a teacher or a distillation run")
  return saved


def resolve(teacher_cfg) -> dict:
  """{kind, model, student, data} of the towers config.teacher names (see module doc)."""
  t = teacher_cfg
  workdir = Path(t.workdir).absolute() if t.get("workdir") else None
  if workdir is not None and workdir.exists():
    saved = _saved(workdir)
    if saved.stage == "teacher":
      return dict(kind="teacher", workdir=str(workdir), model=saved.model.to_dict(), student={},
                  data=_tower_data(saved.data))
    inner = Path(saved.teacher.workdir)
    if not inner.is_absolute():
      inner = (workdir / inner) if (workdir / inner).exists() else inner.absolute()
    if inner.exists():
      tsaved = _saved(inner)
      model, data = tsaved.model.to_dict(), _tower_data(tsaved.data)
    elif saved.teacher.get("run"):  # the teacher's config as the distillation run saved it
      model, data = saved.teacher.run.model.to_dict(), _tower_data(saved.teacher.run.data)
    else:
      model, data = saved.teacher.model.to_dict(), _tower_data(saved.data)
    return dict(kind="distill", workdir=str(workdir), model=model,
                student=saved.model.to_dict(), data=data)
  if workdir is not None and not t.get("model"):
    raise UserError(f"teacher workdir {workdir} does not exist")
  if workdir is None and not t.get("random_init"):
    raise UserError("config.teacher.workdir is empty: pass --config.teacher.workdir=DIR, the "
                    "workdir of a teacher or distillation run (teacher.random_init=True is "
                    "for tests)")
  # A config saved by an earlier run (the workdir has moved away) or a random-init test.
  return dict(kind=str(t.get("kind") or "teacher"), workdir=str(workdir or ""),
              model=t.model.to_dict(), student=t.student.to_dict() if t.get("student") else {},
              data=dict(t.data.to_dict()) if t.get("data") else {})


def _tower_data(data) -> dict:
  return {k: data[k] for k in ("image_size", "raster_size", "sketch_width") if k in data}


class FrozenTowers:
  """Photo and sketch towers of a resolved teacher config; params {"teacher", ["student"]}."""

  def __init__(self, resolved: dict):
    self.resolved = resolved
    self.teacher = teacher_module(resolved["model"])
    self.student = student_module(resolved["student"], self.teacher) if resolved["student"] else None
    self.embed_dim = int(self.teacher.vit.projection_dim or self.teacher.vit.width)
    self.image_size = int(resolved["data"].get("image_size") or self.teacher.vit.image_size)
    self.raster_size = int(resolved["data"].get("raster_size") or self.image_size)
    self.sketch_width = float(resolved["data"].get("sketch_width") or 2.0)

  def init(self, rng, photos, ink) -> dict:
    k_t, k_s = jax.random.split(rng)
    out = {"teacher": self.teacher.init(k_t, photos, ink)["params"]}
    if self.student is not None:
      out["student"] = self.student.init(k_s, photos)["params"]
    return out

  def read(self, step: int = -1) -> dict:
    """Flat {"teacher/...": array, ["student/...": array]} from the run's checkpoint."""
    from sketchseg_jax.train.checkpoints import read_state
    workdir = Path(self.resolved["workdir"])
    if not (workdir / "checkpoints").is_dir():
      raise UserError(f"cannot read the teacher's parameters: {workdir}/checkpoints is missing")
    state, got = read_state(workdir / "checkpoints", None if step < 0 else step)
    if not isinstance(state, dict) or "params" not in state:
      raise CheckpointError(f"checkpoint {workdir}/checkpoints/{got} holds no 'params'")
    params = state["params"]
    log.info("frozen towers from %s (%s run), step %d", workdir, self.resolved["kind"], got)
    if self.resolved["kind"] == "teacher":
      return {f"teacher/{k}": v for k, v in flat(params).items()}
    return {k: v for k, v in flat(params).items() if k.startswith(("teacher/", "student/"))}

  def photo(self, params, photos):
    """(B, H, W, 3) photos in [0, 255] -> (B, E) unit vectors; photos are resized to the
    tower's size when they differ (differentiably)."""
    x = jnp.asarray(photos, jnp.float32)
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, 3), "linear")
    if self.student is not None:
      return self.student.apply({"params": params["student"]}, x)
    return self.teacher.apply({"params": params["teacher"]}, x, method=SBIRTeacher.photo)

  def sketch(self, params, ink):
    """(B, R, R) rasters, ink in [0, 255] -> (B, E) unit vectors."""
    return self.teacher.apply({"params": params["teacher"]}, ink, method=SBIRTeacher.sketch)

  def photo_backbone(self, flat: dict) -> dict:
    """Flat backbone params of the photo tower (teacher's or student's) from `read()`."""
    prefix = "student/backbone/" if self.student is not None else "teacher/backbone/"
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}

  def photo_vit(self):
    return self.student.vit if self.student is not None else self.teacher.vit
