"""Expected time of one training step of a config, from the analytic FLOPs of its ViTs, and the
accelerator slices the real-scale configs are written for.

  python -m sketchseg_jax.train.step_estimate --config configs/segmenter_clip_sketchy.py:topology=v5e-64
  python -m sketchseg_jax.train.step_estimate --config configs/teacher_sketchy.py:topology=gpu8 \\
      --accelerator a100 --utilization 0.35

FLOPs of one step (2 per multiply-add; the ViT blocks' matmuls and attention, the patch
embedding and the projection: sketchseg_jax.models.flops), by what each tower must compute:
  trained backbone (its weights get gradients)            3x forward (forward, input and
                                                          weight gradients)
  frozen tower a gradient flows through to its input      2x forward (forward, input
  (the teacher's photo tower in the segmenter's loop;     gradients; no weight gradients)
  a backbone tuned only in its prompts and LayerNorms)
  frozen tower under no gradient (the sketch tower in     1x forward
  the segmenter, the teacher in distillation)
Prompt tokens count as tokens. With remat (model.vit.remat) every tower that runs backward
recomputes its forward once more: `executed_flops` counts that, `model_flops` does not (the
MFU convention). The step time is executed_flops / (chips x bf16 peak x utilization), the
utilization an assumption (default 0.4) to be replaced by a measured one.

TOPOLOGIES: name -> the accelerator, chip and host count, and the mesh and sharding rules the
real-scale configs (configs/*_sketchy.py) use there (`parallelism(name)`):
  auto     data parallel over every device found; the hardware unknown to the estimate
  gpu8     one host with 8 GPUs (H100 assumed): data parallel, parameters replicated
  v4-32    TPU v4 slice, 16 chips on 4 hosts (each chip one JAX device: the two TensorCores of
           a v4 chip act as one, megacore): data 4 x fsdp 4
  v5e-64   TPU v5e slice (v5litepod-64), 64 chips on 16 hosts, 16 GiB HBM a chip: data 8 x fsdp 8
On the fsdp meshes every backbone weight (and its optimizer state) is split over the fsdp
axis (ZeRO-3 style: gathered for each use), the batch over data x fsdp.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from sketchseg_jax.errors import UserError
from sketchseg_jax.models.flops import vit_forward_flops
from sketchseg_jax.models.vit_config import ViTConfig, from_config
from sketchseg_jax.train.mesh import DEFAULT_LOGICAL_RULES

# Dense bf16 peak FLOP/s of one chip (H100: SXM, without sparsity).
PEAK_FLOPS = {"v4": 275e12, "v5e": 197e12, "h100": 989e12, "a100": 312e12}

TOPOLOGIES = {
    "auto": dict(accelerator="", chips=0, hosts=0, mesh=[("data", -1)], fsdp=False),
    "gpu8": dict(accelerator="h100", chips=8, hosts=1, mesh=[("data", 8)], fsdp=False),
    "v4-32": dict(accelerator="v4", chips=16, hosts=4, mesh=[("data", -1), ("fsdp", 4)], fsdp=True),
    "v5e-64": dict(accelerator="v5e", chips=64, hosts=16, mesh=[("data", -1), ("fsdp", 8)],
                   fsdp=True),
}

# The teacher a segmenter config is estimated against when its config.teacher names no run
# that exists here: configs/teacher_sketchy.py's default (shared CLIP B/16 towers, 4 prompts).
DEFAULT_TEACHER = dict(model=dict(vit=dict(variant="B/16", family="clip"), num_prompts=4,
                                  deep_prompts=False, separate_towers=False, pool="cls"),
                       data=dict(image_size=224, raster_size=224))


def topology(name: str) -> dict:
  if name not in TOPOLOGIES:
    raise UserError(f"unknown topology {name!r}; choose from {', '.join(TOPOLOGIES)}")
  return dict(TOPOLOGIES[name])


def parallelism(name: str) -> tuple:
  """(config.mesh, config.sharding) of a topology (see the module docstring)."""
  t = topology(name)
  logical = [tuple(r) for r in DEFAULT_LOGICAL_RULES]
  if t["fsdp"]:
    # Activations split over both batch axes: with batch on "data" alone every fsdp shard
    # would compute the same examples.
    logical = [("batch", ("data", "fsdp")) if r[0] == "batch" else r for r in logical]
    rules = [("backbone/", "fsdp"), (".*", "logical")]
  elif name == "gpu8":
    rules = [(".*", "replicate")]
  else:
    rules = [(".*", "logical")]
  return list(t["mesh"]), dict(rules=rules, logical=logical)


def hardware(name: str) -> dict:
  """The config.hardware block of a topology: what the estimate divides by."""
  t = topology(name)
  return dict(topology=name, accelerator=t["accelerator"], chips=t["chips"], hosts=t["hosts"])


# ------------------------------------------------------------------------------ FLOPs

def forward_flops(cfg: ViTConfig, size: int, extra_tokens: int = 0) -> float:
  """One image's forward FLOPs at size x size with `extra_tokens` prompt tokens."""
  base = vit_forward_flops(cfg, size, size)
  if not extra_tokens:
    return base
  n = (size // cfg.patch_size) ** 2 + 1 + cfg.num_registers
  d, p = cfg.width, int(extra_tokens)
  mlp = 3 * d * cfg.swiglu_hidden if cfg.mlp == "swiglu" else 2 * d * cfg.mlp_dim
  extra = cfg.depth * (p * (4 * d * d + mlp) + 2 * ((n + p) ** 2 - n ** 2) * d)
  return base + 2.0 * extra


def _part(name, cfg: ViTConfig, size: int, count: int, passes: float, tokens: int = 0,
          note: str = "") -> dict:
  """A tower's work in one step: `count` images, `passes` forward-equivalents each."""
  fwd = forward_flops(cfg, size, tokens)
  model = count * passes * fwd
  # remat recomputes the forward of every block that runs backward.
  executed = model + (count * fwd if cfg.remat and passes > 1 else 0.0)
  return dict(name=name, images=int(count), image_size=int(size), passes=float(passes),
              forward_gflops_per_image=fwd / 1e9, model_flops=model, executed_flops=executed,
              note=note)


def _vit(block) -> ViTConfig:
  return from_config(block.to_dict() if hasattr(block, "to_dict") else dict(block))


def _get(block, key, default=None):
  try:
    value = block[key]
  except (KeyError, AttributeError, TypeError):
    return default
  return default if value is None else value


def _tune_passes(tune: str, depth: int, last_k, prompts: int) -> float:
  """Forward-equivalents of a segmenter backbone under a fine-tuning mode."""
  if tune == "full":
    return 3.0
  if tune == "frozen":
    return 1.0
  if tune == "ln_prompts":
    return 2.0
  if tune == "last_k":
    k = int(last_k or 0) / max(depth, 1)
    # Trained prompts at the input need input gradients through every block.
    return 2.0 + k if prompts else 1.0 + 2.0 * k
  raise UserError(f"model.tune {tune!r}: no FLOPs rule (full, frozen, ln_prompts, last_k)")


def teacher_parts(config) -> list:
  m, d = config.model, config.data
  vit = _vit(m.vit)
  prompts = int(_get(m, "num_prompts", 0))
  passes = 3.0 if _get(m, "tune", "full") == "full" else 2.0
  b = int(d.batch_size)
  image = int(_get(d, "image_size", 0) or vit.image_size)
  raster = int(_get(d, "raster_size", 0) or image)
  parts = [_part("photo tower", vit, image, b, passes, prompts),
           _part("sketch tower", vit, raster, b, passes, prompts)]
  if float(_get(config.loss, "shuffle", 0.0) or 0.0):
    parts.append(_part("patch-shuffle passes", vit, image, 2 * b, passes, prompts,
                       "two shuffled photos per pair"))
    parts.append(_part("patch-shuffle sketches", vit, raster, b, passes, prompts))
  return parts


def _teacher_of(config, teacher: Optional[dict]) -> tuple:
  """(resolved {model, student, data}, where it came from) for a segmenter or distill config."""
  if teacher is not None:
    return teacher, "given"
  t = config.teacher
  if _get(t, "model"):
    model = t.model.to_dict() if hasattr(t.model, "to_dict") else dict(t.model)
    student = _get(t, "student", {})
    student = student.to_dict() if hasattr(student, "to_dict") else dict(student)
    data = _get(t, "data", {})
    data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    return dict(model=model, student=student, data=data), "config.teacher.model"
  workdir = _get(t, "workdir", "")
  if workdir:
    from pathlib import Path
    if Path(workdir).exists():
      from sketchseg_jax.stages import towers
      r = towers.resolve(t)
      return dict(model=r["model"], student=r["student"], data=r["data"]), str(workdir)
  return dict(DEFAULT_TEACHER, student={}), "assumed: CLIP B/16, 4 prompts, 224 px"


def _teacher_from_run(workdir) -> dict:
  """{model, student, data} of a teacher or distillation run's towers."""
  import ml_collections

  from sketchseg_jax.stages import towers
  r = towers.resolve(ml_collections.ConfigDict(dict(workdir=str(workdir))))
  return dict(model=r["model"], student=r["student"], data=r["data"])


def segmenter_parts(config, teacher: Optional[dict] = None) -> tuple:
  t, source = _teacher_of(config, teacher)
  tmodel, tdata = t["model"], t.get("data", {}) or {}
  tvit = _vit(tmodel["vit"])
  t_image = int(tdata.get("image_size") or tvit.image_size)
  t_raster = int(tdata.get("raster_size") or t_image)
  t_prompts = int(tmodel.get("num_prompts", 0) or 0)
  m, d = config.model, config.data
  vit = _vit(m.vit) if _get(m, "vit") else tvit.replace(dense_projection=False)
  prompts = int(_get(m, "num_prompts", -1))
  if prompts < 0:
    from_teacher = _get(m, "init_from", "teacher") == "teacher"
    prompts = t_prompts if from_teacher and not tmodel.get("deep_prompts") else 0
  b = int(d.batch_size)
  image = int(_get(d, "image_size", 0) or vit.image_size)
  queries = int(_get(d, "max_queries", 1))
  passes = _tune_passes(str(_get(m, "tune", "full")), vit.depth, _get(m, "last_k"), prompts)
  parts = [_part("segmenter backbone", vit, image, b, passes, prompts,
                 f"tune={_get(m, 'tune', 'full')}")]
  grid = (image // vit.patch_size) ** 2
  embed = int(tvit.projection_dim or tvit.width)
  head = 2.0 * b * grid * vit.width * embed * 3.0
  parts.append(dict(name="dense head", images=b, image_size=image, passes=3.0,
                    forward_gflops_per_image=head / 3.0 / b / 1e9, model_flops=head,
                    executed_flops=head, note="LayerNorm + Dense into the teacher space"))
  parts.append(_part("sketch tower (frozen, no gradient)", tvit, t_raster, b * queries, 1.0,
                     t_prompts))
  if config.stage != "supervised":
    if t.get("student"):
      svit = _vit(t["student"]["vit"])
      parts.append(_part("distilled photo tower (2 masked photos, input gradients)", svit,
                         t_image, 2 * b, 2.0))
    else:
      parts.append(_part("teacher photo tower (2 masked photos, input gradients)", tvit,
                         t_image, 2 * b, 2.0, t_prompts))
  return parts, source


def distill_parts(config, teacher: Optional[dict] = None) -> tuple:
  t, source = _teacher_of(config, teacher)
  tvit = _vit(t["model"]["vit"])
  t_prompts = int(t["model"].get("num_prompts", 0) or 0)
  svit = _vit(config.model.vit)
  d = config.data
  image = int(_get(d, "image_size", 0) or (t.get("data") or {}).get("image_size") or tvit.image_size)
  views = len(list(_get(config.distill, "views", ("clean", "masked", "partial"))))
  n = int(d.batch_size) * views
  return [_part("teacher photo tower (no gradient)", tvit, image, n, 1.0, t_prompts),
          _part("student photo tower", svit, image, n, 3.0)], source


def estimate(config, accelerator: Optional[str] = None, chips: Optional[int] = None,
             utilization: float = 0.4, teacher: Optional[dict] = None) -> dict:
  """FLOPs of one training step of `config` and its expected time (see the module docstring).

  accelerator / chips default to config.hardware (set by a config's topology argument);
  `teacher` ({"model", "student", "data"}) replaces the teacher a segmenter or distill config
  names. Without a known accelerator the result has per_accelerator times instead of one."""
  stage = config.stage
  source = ""
  if stage == "teacher":
    parts = teacher_parts(config)
  elif stage in ("segmenter", "supervised"):
    parts, source = segmenter_parts(config, teacher)
  elif stage == "distill":
    parts, source = distill_parts(config, teacher)
  else:
    raise UserError(f"no step estimate for stage {stage!r} (teacher, distill, segmenter, "
                    "supervised)")
  if not 0.0 < utilization <= 1.0:
    raise UserError(f"utilization must be in (0, 1], got {utilization}")
  hw = _get(config, "hardware", {}) or {}
  accelerator = (accelerator or _get(hw, "accelerator", "") or "").lower()
  chips = int(chips or _get(hw, "chips", 0) or 0)
  if accelerator and accelerator not in PEAK_FLOPS:
    raise UserError(f"unknown accelerator {accelerator!r}; known: {', '.join(PEAK_FLOPS)}")
  batch = int(config.data.batch_size)
  model = sum(p["model_flops"] for p in parts)
  executed = sum(p["executed_flops"] for p in parts)
  out = dict(stage=stage, topology=_get(hw, "topology", ""), batch_size=batch, parts=parts,
             model_flops=model, executed_flops=executed, flops_per_example=executed / batch,
             utilization=utilization, accelerator=accelerator, chips=chips)
  if source:
    out["teacher"] = source

  def timing(acc, n):
    peak = PEAK_FLOPS[acc]
    t = executed / (n * peak * utilization)
    return dict(peak_flops_per_chip=peak, step_time_s=t, examples_per_s=batch / t,
                examples_per_chip=batch / n)
  if accelerator:
    out.update(timing(accelerator, max(chips, 1)))
  else:
    out["per_accelerator"] = {a: timing(a, max(chips, 1)) for a in PEAK_FLOPS}
  return out


def format_report(r: dict) -> str:
  lines = [f"stage {r['stage']}  topology {r['topology'] or '-'}  global batch {r['batch_size']}"]
  if r.get("teacher"):
    lines.append(f"teacher: {r['teacher']}")
  for p in r["parts"]:
    lines.append(f"  {p['name']:<58} {p['images']:>6} x {p['image_size']:>3}px x "
                 f"{p['passes']:.2f} fwd x {p['forward_gflops_per_image']:8.2f} GFLOP = "
                 f"{p['model_flops'] / 1e12:9.2f} TFLOP")
  lines.append(f"model FLOPs / step {r['model_flops'] / 1e12:.2f} T, executed (with remat) "
               f"{r['executed_flops'] / 1e12:.2f} T, {r['flops_per_example'] / 1e9:.1f} G / example")
  u = r["utilization"]
  if r["accelerator"]:
    lines.append(f"{r['chips']} x {r['accelerator']} at {r['peak_flops_per_chip'] / 1e12:.0f} "
                 f"TFLOP/s bf16 peak, {u:.0%} utilization: {r['step_time_s'] * 1e3:.1f} ms / step, "
                 f"{r['examples_per_s']:.0f} examples / s")
  else:
    n = max(r["chips"], 1)
    lines.append(f"hardware unknown (topology auto; --accelerator/--chips set it); on {n} chip(s) "
                 f"at {u:.0%} utilization:")
    for a, t in r["per_accelerator"].items():
      lines.append(f"  {a:<6} {t['step_time_s'] * 1e3:9.1f} ms / step  {t['examples_per_s']:8.0f} "
                   "examples / s")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m sketchseg_jax.train.step_estimate",
      description="Expected training step time of a config from its FLOPs. Arguments "
                  "--config.a.b=value override the config.")
  p.add_argument("--config", required=True, metavar="FILE[:ARG]")
  p.add_argument("--accelerator", choices=sorted(PEAK_FLOPS), help="default: the topology's")
  p.add_argument("--chips", type=int, help="default: the topology's")
  p.add_argument("--utilization", type=float, default=0.4,
                 help="assumed share of the bf16 peak achieved (default 0.4)")
  p.add_argument("--teacher", metavar="WORKDIR",
                 help="a teacher or distillation run to estimate a segmenter against")
  p.add_argument("--json", action="store_true", help="print the estimate as JSON")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognised arguments: {' '.join(bad)}")
  from sketchseg_jax.train.config_lib import load_config
  try:
    config = load_config(args.config, rest)
    teacher = _teacher_from_run(args.teacher) if args.teacher else None
    r = estimate(config, args.accelerator, args.chips, args.utilization, teacher)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(r, indent=2, default=float) if args.json else format_report(r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
