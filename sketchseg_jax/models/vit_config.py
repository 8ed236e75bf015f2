"""ViTConfig: one dataclass describes both flavours (CLIP vision, DINOv2) of the backbone.

It is a plain frozen dataclass so it hashes (jit static argument), serialises to JSON next to
saved weights, and round-trips through ml_collections configs as a dict.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from sketchseg_jax.errors import UserError

FAMILIES = ("clip", "dinov2")
MLP_KINDS = ("quick_gelu", "gelu", "swiglu")
# jax.nn.dot_product_attention's implementations: XLA's (every platform), cuDNN's fused kernel
# (NVIDIA GPUs, bf16/fp16 compute only), or "auto": cuDNN's where it runs, else XLA's.
ATTENTION_KINDS = ("xla", "cudnn", "auto")

# name -> (width, depth, heads, mlp_dim). mlp_dim is the ViT default 4*width; DINOv2 giant
# uses SwiGLU (its hidden size comes from mlp_dim, see `swiglu_hidden`).
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1536, 40, 24, 6144),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture and numerics of a ViT backbone.

  pos_interp_offset / pos_interp_antialias choose how the position table is resized for other
  input sizes: (0, False) is Hugging Face CLIP and DINOv2, (0, True) Hugging Face DINOv2 with
  registers, (0.1, False/True) the official DINOv2 code without/with registers.
  dense_projection: also pass every patch token through the final norm and projection
  (CLIP only; MaskCLIP-style dense features in the joint space) into `patch_embeds`.
  attention: "xla", "cudnn" (cuDNN's fused kernel on NVIDIA GPUs, dtype bfloat16 or float16;
  other platforms run XLA's: the function and the weights are the same) or "auto" (cuDNN's
  where it runs: an NVIDIA GPU and a 16-bit dtype, else XLA's).
  """
  family: str = "clip"
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  image_size: int = 224
  num_channels: int = 3
  mlp: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  qkv_bias: bool = True
  projection_dim: Optional[int] = None
  num_registers: int = 0
  layerscale_init: float = 1.0
  pos_interp: bool = True
  pos_interp_offset: float = 0.0
  pos_interp_antialias: bool = False
  dense_projection: bool = False
  output_layers: tuple = ()
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  scan_layers: bool = False
  attention: str = "xla"

  def __post_init__(self):
    problems = []
    if self.family not in FAMILIES:
      problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
    if self.mlp not in MLP_KINDS:
      problems.append(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
    if self.num_heads <= 0 or self.width % self.num_heads:
      problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    if self.patch_size <= 0 or self.image_size % self.patch_size:
      problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    if self.family == "clip" and self.num_registers:
      problems.append("CLIP has no register tokens")
    if self.family == "dinov2" and self.projection_dim:
      problems.append("DINOv2 has no projection")
    if self.attention not in ATTENTION_KINDS:
      problems.append(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
    elif self.attention == "cudnn" and self.dtype not in ("bfloat16", "float16"):
      problems.append(f"attention='cudnn' needs dtype bfloat16 or float16, got {self.dtype!r}")
    if self.dense_projection and self.family != "clip":
      problems.append("dense_projection needs the CLIP family (post-LayerNorm + projection)")
    for i in self.output_layers:
      if not -self.depth <= i < self.depth:
        problems.append(f"output layer {i} out of range for depth {self.depth}")
    if problems:
      raise UserError("invalid ViTConfig: " + "; ".join(problems))
    object.__setattr__(self, "output_layers", tuple(int(i) % self.depth for i in self.output_layers))

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def swiglu_hidden(self) -> int:
    # DINOv2 keeps two thirds of the MLP width, rounded up to a multiple of 8.
    return (int(self.mlp_dim * 2 / 3) + 7) // 8 * 8

  def replace(self, **changes) -> "ViTConfig":
    return dataclasses.replace(self, **changes)

  def portable(self) -> "ViTConfig":
    """The architecture without this run's execution choices (layer scan, remat, the
    attention kernel): what saved and exported weights record, loadable anywhere."""
    return self.replace(scan_layers=False, remat=False, attention="xla")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["output_layers"] = list(self.output_layers)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ViTConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"unknown ViTConfig fields: {unknown}")
    d = dict(d)
    if "output_layers" in d:
      d["output_layers"] = tuple(d["output_layers"])
    return cls(**d)


def variant(name: str, family: str = "clip", **overrides) -> ViTConfig:
  """A config from a variant name such as 'B/16', 'S/14' or 'g/14', with family defaults.

  CLIP: QuickGELU, eps 1e-5, image 224, projection 512 (B) / 768 (L).
  DINOv2: exact GELU (SwiGLU for g), eps 1e-6, image 518 (the released 37x37 position table).
  """
  m = re.fullmatch(r"(Ti|S|B|L|H|g)/(\d+)", name)
  if not m:
    raise UserError(f"unknown variant {name!r}; expected SIZE/PATCH with SIZE in "
                    f"{sorted(VARIANTS)} (for example 'B/16', 'S/14')")
  width, depth, heads, mlp_dim = VARIANTS[m.group(1)]
  patch = int(m.group(2))
  if family == "clip":
    base = dict(family="clip", mlp="quick_gelu", layer_norm_eps=1e-5, image_size=224,
                projection_dim={"L": 768, "H": 1024, "g": 1024}.get(m.group(1), 512))
  elif family == "dinov2":
    base = dict(family="dinov2", mlp="swiglu" if m.group(1) == "g" else "gelu",
                layer_norm_eps=1e-6, image_size=37 * patch)
  else:
    raise UserError(f"family must be one of {FAMILIES}, got {family!r}")
  base.update(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=patch)
  base.update(overrides)
  return ViTConfig(**base)


def from_config(model_cfg) -> ViTConfig:
  """A ViTConfig from a config block: {"variant": "B/16", "family": "clip", **overrides}
  or the ViTConfig fields spelled out."""
  d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
  name = d.pop("variant", None)
  if "output_layers" in d:
    d["output_layers"] = tuple(d["output_layers"])
  if name:
    return variant(name, d.pop("family", "clip"), **d)
  return ViTConfig.from_dict(d)
