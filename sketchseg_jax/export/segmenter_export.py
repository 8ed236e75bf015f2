"""Export a trained segmenter (and the teacher's sketch tower it reads queries from) for
PyTorch and ONNX.

`export_segmenter(stage, params, out_dir)` writes one folder, whole or not at all:

  sketchseg_torch.py       the self-contained PyTorch module (a verbatim copy of
                           sketchseg_jax/export/torch_module.py; its docstring is the user guide)
  sketchseg.safetensors    float32 weights under that module's state_dict names
  sketchseg.json           architecture and preprocessing: sizes, normalisation, families,
                           prompts, the sketch tower's pooling, the ONNX files' inputs/outputs
  image_path.onnx          (B, S, S, 3) uint8 photo at the model's size -> (B, h, w, E) features
  query_path.onnx          (N, R, R) float rasters (ink = 1) and (1, h, w, E) features ->
                           (N, h, w) low-resolution logits

Only what segmentation needs is written: the segmenter and the teacher's sketch tower with
its sketch prompts, not the photo tower (nor a distillation student). The ONNX graphs come
from torch.onnx.export of the same torch module, with the position tables for the model's
image and raster sizes computed once and stored as constants.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import numpy as np

from sketchseg_jax.convert.apply import flatten, unstack_layers
from sketchseg_jax.convert.files import atomic_output, write_safetensors
from sketchseg_jax.errors import UserError
from sketchseg_jax.models.preprocess import MEAN_STD
from sketchseg_jax.models.vit_config import ViTConfig

TEMPLATE = Path(__file__).with_name("torch_module.py")
MODULE_FILE = "sketchseg_torch.py"
WEIGHTS_FILE = "sketchseg.safetensors"
CONFIG_FILE = "sketchseg.json"
IMAGE_ONNX = "image_path.onnx"
QUERY_ONNX = "query_path.onnx"
# Kept equal to torch_module.FORMAT / VERSION (a test checks), without importing torch here.
FORMAT = "sketchseg_jax.segmenter_torch"
VERSION = 3


# ---------------------------------------------------------------- Flax -> torch names

class _Taker:
  """Reads a flat Flax subtree once per key, so what is left over can be named."""

  def __init__(self, flat: dict, where: str):
    self.flat, self.where, self.used = flat, where, set()

  def __call__(self, key: str) -> np.ndarray:
    if key not in self.flat:
      raise UserError(f"{self.where}: parameter {key!r} is missing; the checkpoint does not "
                      "match the run's configured model")
    self.used.add(key)
    return np.asarray(self.flat[key], np.float32)

  def has(self, key: str) -> bool:
    return key in self.flat

  def linear(self, out: dict, name: str, key: str):
    out[f"{name}.weight"] = self(f"{key}/kernel").T
    if self.has(f"{key}/bias"):
      out[f"{name}.bias"] = self(f"{key}/bias")

  def norm(self, out: dict, name: str, key: str):
    out[f"{name}.weight"] = self(f"{key}/scale")
    out[f"{name}.bias"] = self(f"{key}/bias")

  def check_all_used(self, ignored=()):
    left = sorted(k for k in self.flat if k not in self.used
                  and not any(k == i or k.startswith(i + "/") for i in ignored))
    if left:
      raise UserError(f"{self.where}: parameters the export does not know: {left[:6]}"
                      f"{' ...' if len(left) > 6 else ''}")


def vit_tensors(flat: dict, cfg: ViTConfig, with_pooling: bool, where: str) -> dict:
  """Torch `ViT` state dict (torch_module.py) from a Flax VisionTransformer's flat params.
  with_pooling keeps CLIP's post_layernorm and projection (the sketch tower's embedding)."""
  take = _Taker(unstack_layers(flat, cfg), where)
  dino = cfg.family == "dinov2"
  out = {"patch_embedding.weight": take("patch_embedding/kernel").transpose(3, 2, 0, 1)}
  if dino:
    out["patch_embedding.bias"] = take("patch_embedding/bias")
  out["class_embedding"] = take("class_embedding")
  out["position_embedding"] = take("position_embedding")
  if cfg.num_registers:
    out["register_tokens"] = take("register_tokens")
  if not dino:
    take.norm(out, "pre_layernorm", "pre_layernorm")
  mlp = (("gate_proj", "up_proj", "down_proj") if cfg.mlp == "swiglu" else ("fc1", "fc2"))
  for i in range(cfg.depth):
    src, dst = f"encoder/layers_{i}", f"layers.{i}"
    take.norm(out, f"{dst}.layer_norm1", f"{src}/layer_norm1")
    take.norm(out, f"{dst}.layer_norm2", f"{src}/layer_norm2")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      take.linear(out, f"{dst}.attn.{name}", f"{src}/attn/{name}")
    for name in mlp:
      take.linear(out, f"{dst}.mlp.{name}", f"{src}/mlp/{name}")
    if dino:
      out[f"{dst}.layer_scale1"] = take(f"{src}/layer_scale1/gamma")
      out[f"{dst}.layer_scale2"] = take(f"{src}/layer_scale2/gamma")
  ignored = ["mask_token"]  # masked-image modelling only
  if dino:
    take.norm(out, "layernorm", "layernorm")
  elif with_pooling:
    take.norm(out, "post_layernorm", "post_layernorm")
    if cfg.projection_dim:
      take.linear(out, "projection", "projection")
  else:
    # The segmenter reads CLIP patch tokens before post_layernorm (its head has its own norm).
    ignored += ["post_layernorm", "projection"]
  take.check_all_used(ignored)
  return out


def _flat_params(params) -> dict:
  params = nn.unbox(params)
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  if not isinstance(params, dict):
    raise UserError(f"segmenter params must be a dict, got {type(params).__name__}")
  return flatten(params)


def _check_stage(stage):
  from sketchseg_jax.stages.segmenter import SegmenterStage
  if not isinstance(stage, SegmenterStage):
    raise UserError(f"export_segmenter needs a segmenter or supervised stage, got "
                    f"{type(stage).__name__}")


def torch_state_dict(stage, params) -> dict:
  """{torch_module name: float32 array} for the segmenter and the teacher's sketch tower of
  `params` ({"segmenter", "teacher", ["student"]}, boxed or not)."""
  _check_stage(stage)
  flat = _flat_params(params)
  have = sorted({k.split("/")[0] for k in flat})
  for part in ("segmenter", "teacher"):
    if part not in have:
      raise UserError(f"params have no {part}/ subtree (top level: {have}); are they a "
                      "segmenter run's parameters?")
  model, teacher = stage.model, stage.towers.teacher
  seg = {k[len("segmenter/"):]: v for k, v in flat.items() if k.startswith("segmenter/")}
  out = {f"segmenter.backbone.{k}": v for k, v in vit_tensors(
      {k[len("backbone/"):]: v for k, v in seg.items() if k.startswith("backbone/")},
      model.vit, False, "segmenter/backbone").items()}
  take = _Taker({k: v for k, v in seg.items() if not k.startswith("backbone/")}, "segmenter")
  if model.num_prompts:
    out["segmenter.prompts"] = take("prompts")
  take.norm(out, "segmenter.head.norm", "head/norm")
  take.linear(out, "segmenter.head.proj", "head/proj")
  if model.head == "mlp":
    take.linear(out, "segmenter.head.mlp_in", "head/mlp_in")
    take.linear(out, "segmenter.head.mlp_out", "head/mlp_out")
  if model.adapter:
    take.linear(out, "segmenter.adapter.fc1", "adapter/fc1")
    take.linear(out, "segmenter.adapter.fc2", "adapter/fc2")
  out["segmenter.alpha"] = take("alpha").reshape(())
  out["segmenter.beta"] = take("beta").reshape(())
  take.check_all_used()

  tower = "sketch_backbone" if teacher.separate_towers else "backbone"
  prefix = f"teacher/{tower}/"
  out.update({f"sketch_tower.backbone.{k}": v for k, v in vit_tensors(
      {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)},
      teacher.vit, True, f"teacher/{tower}").items()})
  if teacher.num_prompts:
    out["sketch_tower.prompts"] = _Taker(flat, "teacher")("teacher/sketch_prompts")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ---------------------------------------------------------------- sketchseg.json

def vit_entry(cfg: ViTConfig) -> dict:
  """What the torch ViT reads: the ViTConfig fields that shape the forward, plus the MLP's
  hidden width (SwiGLU keeps two thirds of mlp_dim)."""
  d = cfg.to_dict()
  for key in ("dtype", "param_dtype", "remat", "remat_policy", "scan_layers", "output_layers",
              "dense_projection", "attention"):
    d.pop(key, None)
  d["mlp_hidden"] = cfg.swiglu_hidden if cfg.mlp == "swiglu" else cfg.mlp_dim
  return d


def export_config(stage, *, step=None, source=None) -> dict:
  """The sketchseg.json contents for `stage` (a segmenter or supervised stage)."""
  _check_stage(stage)
  model, teacher = stage.model, stage.towers.teacher
  data = stage.data_config("eval")
  mean, std = MEAN_STD[model.vit.family]
  t_mean, t_std = MEAN_STD[teacher.vit.family]
  embed = int(model.embed_dim)
  return {
      "format": FORMAT, "version": VERSION, "module": MODULE_FILE, "weights": WEIGHTS_FILE,
      "stage": str(stage.config.stage), "step": step, "source": source,
      "image_size": int(data["image_size"]), "raster_size": int(data["raster_size"]),
      "sketch_width": float(data["sketch_width"]), "embed_dim": embed,
      "regions": float(data.get("regions") or 0.0),
      "min_component": float(stage.mcfg["min_component"]),
      "segmenter": {
          "vit": vit_entry(model.vit), "mean": list(mean), "std": list(std),
          "num_prompts": int(model.num_prompts), "head": model.head,
          "head_hidden": int(model.head_hidden or 2 * model.vit.width),
          "adapter": bool(model.adapter), "adapter_hidden": embed,
      },
      "sketch_tower": {
          "vit": vit_entry(teacher.vit), "mean": list(t_mean), "std": list(t_std),
          "num_prompts": int(teacher.num_prompts), "deep_prompts": bool(teacher.deep_prompts),
          "pool": teacher.pool,
          "params": "teacher/sketch_backbone" if teacher.separate_towers else "teacher/backbone",
      },
      "input": {
          "photo": ("(H, W, 3) RGB, uint8 or float in [0, 255], resized to image_size x "
                    "image_size (PIL bilinear in the training pipeline), normalised with the "
                    "segmenter's mean/std: (pixels / 255 - mean) / std"),
          "sketch": ("(R, R) float raster at raster_size, ink = 1 on paper = 0, drawn with "
                     "strokes sketch_width pixels wide; the sketch tower sees the grey photo "
                     "255 - round(255 * raster), normalised with the sketch tower's mean/std"),
      },
      "output": ("logits = alpha * <features, query> + beta on the (image_size / patch_size)^2 "
                 "grid; masks = sigmoid(bilinear upsample (align_corners=False) of the logits "
                 "to the photo's size); several sketches of one query: max of their masks. "
                 "With regions > 0 (a colour threshold): the logits upsampled to image_size, "
                 "their max over the sketches averaged over the resized photo's regions of "
                 "near-constant colour (the 4-connected components of 3x3-median-filtered "
                 "pixels closer than `regions` in RGB), then upsampled to the photo's size. "
                 "With min_component > 0: the mask's 4-connected components at 0.5 (at the "
                 "photo's size) smaller than that share of its largest are set to 0"),
  }


# ---------------------------------------------------------------- writing

def _load_template(folder: Path):
  """The torch module from the package (the same code as the copied file)."""
  from sketchseg_jax.export import torch_module
  return torch_module.load(folder)


def export_onnx(folder, *, check: bool = True) -> dict:
  """Write IMAGE_ONNX and QUERY_ONNX into `folder` (which holds the weights and config);
  returns their description for sketchseg.json. check: run each graph once in onnxruntime
  (when installed) against the torch module."""
  import torch
  folder = Path(folder)
  m = _load_template(folder)
  image_path, query_path = _onnx_wrappers(m)
  s, r = m.image_size, m.raster_size
  p = m.segmenter.backbone.cfg["patch_size"]
  h = s // p
  photo = torch.randint(0, 256, (2, s, s, 3), dtype=torch.uint8)
  rasters = (torch.rand(2, r, r) > 0.8).to(torch.float32)
  with torch.no_grad():
    features = image_path(photo[:1])
  batch = torch.export.Dim("batch", min=1, max=1024)
  sketches = torch.export.Dim("sketches", min=1, max=1024)
  _export(image_path, (photo,), folder / IMAGE_ONNX, ["image"], ["features"],
          {"image": {0: batch}})
  _export(query_path, (rasters, features), folder / QUERY_ONNX, ["rasters", "features"],
          ["logits"], {"rasters": {0: sketches}, "features": None})
  if check:
    _check_onnx(folder, image_path, query_path, photo, rasters, features)
  e = m.embed_dim
  return {
      "image_path": {"file": IMAGE_ONNX,
                     "inputs": {"image": f"(B, {s}, {s}, 3) uint8 RGB photo at the model's size"},
                     "outputs": {"features": f"(B, {h}, {h}, {e}) float32 unit features"}},
      "query_path": {"file": QUERY_ONNX,
                     "inputs": {"rasters": f"(N, {r}, {r}) float32 sketch rasters, ink = 1",
                                "features": f"(1, {h}, {h}, {e}) float32, image_path's output "
                                            "for one photo"},
                     "outputs": {"logits": f"(N, {h}, {h}) float32 low-resolution logits; "
                                           "masks: sigmoid of their bilinear upsampling"
                                           + ("; then pool over the photo's colour regions "
                                              "as `output` says (not in the graph)"
                                              if m.region_threshold else "")}},
  }


def _onnx_wrappers(m):
  import torch

  class ImagePath(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.segmenter = m.segmenter
      g = m.image_size // m.segmenter.backbone.cfg["patch_size"]
      with torch.no_grad():
        self.register_buffer("positions", m.segmenter.backbone.positions(g, g).detach().clone())

    def forward(self, image):
      return self.segmenter.features(image.to(torch.float32), positions=self.positions)

  class QueryPath(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.segmenter, self.sketch_tower = m.segmenter, m.sketch_tower
      g = m.raster_size // m.sketch_tower.backbone.cfg["patch_size"]
      with torch.no_grad():
        self.register_buffer("positions",
                             m.sketch_tower.backbone.positions(g, g).detach().clone())

    def forward(self, rasters, features):
      q = self.segmenter.queries(self.sketch_tower(rasters, positions=self.positions))
      return self.segmenter.logits(features, q[None])[0]

  return ImagePath().eval(), QueryPath().eval()


def _export(module, args, path: Path, inputs, outputs, dynamic_shapes):
  import logging
  import warnings

  import torch
  # The exporter logs about optional torchvision ops and warns about its own internals.
  quiet = logging.getLogger("torch.onnx")
  level = quiet.level
  quiet.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", FutureWarning)
      warnings.simplefilter("ignore", DeprecationWarning)
      program = torch.onnx.export(module, args, dynamo=True, input_names=inputs,
                                  output_names=outputs, dynamic_shapes=dynamic_shapes,
                                  optimize=True, verbose=False)
    program.save(str(path))
  except ImportError as e:
    raise UserError(f"the ONNX export needs the onnx and onnxscript packages ({e}); install "
                    "them or pass --no-onnx") from e
  finally:
    quiet.setLevel(level)


def _check_onnx(folder: Path, image_path, query_path, photo, rasters, features):
  """Each graph once in onnxruntime against the torch module: a broken graph fails here,
  not in the user's deployment."""
  try:
    import onnxruntime as ort
  except ImportError:
    return
  import torch
  with torch.no_grad():
    want_f = image_path(photo).numpy()
    want_z = query_path(rasters, features).numpy()
  opts = ort.SessionOptions()
  opts.log_severity_level = 3
  got_f = ort.InferenceSession(str(folder / IMAGE_ONNX), opts).run(
      None, {"image": photo.numpy()})[0]
  got_z = ort.InferenceSession(str(folder / QUERY_ONNX), opts).run(
      None, {"rasters": rasters.numpy(), "features": features.numpy()})[0]
  for name, got, want in (("image_path", got_f, want_f), ("query_path", got_z, want_z)):
    err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not err <= 1e-3:
      raise UserError(f"the exported {name}.onnx disagrees with the torch module "
                      f"(max |difference| {err:.3g}, shapes {got.shape} / {want.shape})")


def _need_onnx_packages():
  import importlib.util
  missing = [m for m in ("torch", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
  if missing:
    raise UserError(f"the ONNX graphs need {', '.join(missing)} (pip install "
                    f"{' '.join(missing)}); or pass --no-onnx for the PyTorch module alone")


def export_segmenter(stage, params, out_dir, *, onnx: bool = True, step=None,
                     source=None) -> Path:
  """Write the segmenter of `stage` with `params` to `out_dir` (see the module docstring);
  returns `out_dir`. onnx=False skips the ONNX files (then neither torch nor onnx is needed
  to export)."""
  if onnx:
    _need_onnx_packages()
  state = torch_state_dict(stage, params)
  config = export_config(stage, step=step, source=source)
  out_dir = Path(out_dir)
  with atomic_output(out_dir, is_dir=True) as tmp:
    (tmp / MODULE_FILE).write_text(TEMPLATE.read_text())
    write_safetensors(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if onnx:
      config["onnx"] = export_onnx(tmp)
      (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
  return out_dir


__all__ = ["export_segmenter", "export_onnx", "export_config", "torch_state_dict",
           "vit_tensors", "vit_entry"]
