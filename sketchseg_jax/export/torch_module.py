"""sketchseg_torch: a sketch-guided segmenter trained with sketchseg_jax, in plain PyTorch.

`sketchseg export --checkpoint RUN --out OUT` writes this file as OUT/sketchseg_torch.py, with
the weights in OUT/sketchseg.safetensors and the architecture and preprocessing in
OUT/sketchseg.json. It needs torch, numpy and safetensors, nothing else (no JAX, no
transformers). With OUT on sys.path (or this file beside your code), numpy as np and PIL's
Image to read the files, the five lines a PyTorch user needs:

    m = sketchseg_torch.load("OUT")                                # an nn.Module, eval mode
    image = np.asarray(Image.open("photo.jpg").convert("RGB"))     # H x W x 3 uint8
    raster = 1 - np.asarray(Image.open("sketch.png").convert("L").resize((m.raster_size,) * 2)) / 255
    mask = m.segment(image, raster)                                # H x W float32 in [0, 1]
    binary = mask > 0.5

`segment(image, sketch)`: the image is H x W x 3 (uint8 or float in [0, 255]); one not at the
model's size (`m.image_size` square) is resized to it first with a bilinear, anti-aliased
resize rounded to uint8 values, which agrees with the PIL bilinear resize the training pipeline
uses to within one grey level. Give the photo already at the model's size (for example resized
with PIL's `Image.BILINEAR`) and the result matches the Flax model to float rounding; for the
Flax Predictor's mask of a photo of another size, resize it with PIL and use the building
blocks: `m.masks_from(m.image_features(resized), m.query(rasters), photo.shape[:2]).amax(0)`. The
sketch is a float raster, ink = 1 on paper = 0 (or uint8 with ink = 255), `m.raster_size`
square; ink is rounded to 1/255 steps, the uint8 levels the model was trained on. A list or an
(N, R, R) stack of rasters gives the max over their masks (separate sketches of one query).
The mask comes back at the image's own size: the low-resolution logits are upsampled
bilinearly (align_corners=False) straight to it, as the Flax Predictor does.
A segmenter trained with colour-region pooling ("regions" > 0 in sketchseg.json: a colour
threshold) instead upsamples the logits to the model's size, takes the max over the sketches,
averages it over the resized photo's regions of near-constant colour (`colour_regions`) and
upsamples that to the image's size; `segment` does this, `masks_from` does not pool.
With "min_component" > 0, `segment` then sets the mask's 4-connected components (at 0.5)
smaller than that share of its largest to 0 (`drop_small_components`).

The building blocks, for batching and caching (all torch tensors):
  m.image_features(images)           (B, H, W, 3) photos in [0, 255] -> (B, h, w, E) unit features
  m.query(rasters)                   (N, R, R) rasters, ink = 1 -> (N, E) unit queries
  m.logits(features, queries)        (h, w, E), (N, E) -> (N, h, w) low-resolution logits
  m.masks_from(features, queries, size)  -> (N, H, W) probabilities, bilinearly upsampled
                                        logits (align_corners=False) through a sigmoid
  m.regions(resized)                 (S, S) colour-region ids of a photo at the model's size
                                     (`colour_regions`; used when the config has "regions")
  m.sketch_embedding(rasters)        the teacher sketch tower's (N, E) embedding, before the
                                     segmenter's query adapter

The model (see sketchseg.json for the numbers):
  features = l2norm(head(ViT(normalise(photo)).patch_tokens))    head = LayerNorm -> Linear
             (+ a residual GELU MLP when "head" is "mlp"); the ViT may carry shallow prompts
  query    = adapter(l2norm(sketch_tower(255 - round(255 * raster) as a grey photo)))
             (adapter: l2norm(q + fc2(gelu(fc1(q)))) when present, else q)
  logits   = alpha * <features, query> + beta
l2norm(x) = x / sqrt(sum(x^2) + 1e-6). Sketch tower: the teacher's ViT with its sketch prompts
inserted after the CLS (and register) tokens, embedding = the projected, post-LayerNormed CLS
token ("pool": "cls") or the mean of the projected, post-LayerNormed patch tokens ("mean").

Weight names in sketchseg.safetensors (float32, torch layouts: Linear weights (out, in), the
patch convolution (D, 3, p, p)) are this module's state_dict keys:
  segmenter.backbone.<vit>         the photo ViT
  segmenter.prompts                (P, D) shallow prompt tokens, when the segmenter has them
  segmenter.head.norm.{weight,bias}, segmenter.head.proj.weight,
  segmenter.head.mlp_in.{weight,bias}, segmenter.head.mlp_out.{weight,bias}  (head "mlp")
  segmenter.adapter.fc1.{weight,bias}, segmenter.adapter.fc2.{weight,bias}   (with an adapter)
  segmenter.alpha, segmenter.beta  scalars
  sketch_tower.backbone.<vit>      the teacher's sketch tower
  sketch_tower.prompts             (P, D), or (depth, P, D) for deep prompts
<vit>: patch_embedding.weight [patch_embedding.bias], class_embedding (D,),
  position_embedding (1 + g*g, D), [register_tokens (R, D)], [pre_layernorm.{weight,bias}],
  layers.<i>.layer_norm1.*, layers.<i>.attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias},
  layers.<i>.layer_norm2.*, layers.<i>.mlp.{fc1,fc2}.* or layers.<i>.mlp.{gate_proj,up_proj,
  down_proj}.* (SwiGLU), [layers.<i>.layer_scale1, layers.<i>.layer_scale2 (D,)],
  [layernorm.* (DINOv2)], [post_layernorm.*, projection.weight (CLIP sketch tower)].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "sketchseg_jax.segmenter_torch"
VERSION = 3   # 2: "regions" (colour-region pooling of the logits); 3: "min_component"
WEIGHTS_FILE = "sketchseg.safetensors"
CONFIG_FILE = "sketchseg.json"
L2_EPS = 1e-6


def l2_normalize(x, eps: float = L2_EPS):
  return x / torch.sqrt(torch.sum(x * x, dim=-1, keepdim=True) + eps)


def colour_regions(image, threshold: float):
  """(H, W, 3) photo in [0, 255] -> (H, W) int64 region ids: the 4-connected components of
  pixels whose 3x3-median-filtered colours differ by less than `threshold` (RGB distance),
  the regions the training pipeline cuts with scipy (numbered differently, the same sets)."""
  x = torch.as_tensor(np.asarray(image, np.float32)) if not isinstance(image, torch.Tensor) \
      else image.to(torch.float32)
  h, w = x.shape[:2]
  padded = F.pad(x.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")
  med = F.unfold(padded, 3).reshape(3, 9, h * w).median(dim=1).values.T.reshape(h, w, 3)
  limit = float(threshold) ** 2
  right = torch.sum((med[:, 1:] - med[:, :-1]) ** 2, dim=-1) < limit
  down = torch.sum((med[1:] - med[:-1]) ** 2, dim=-1) < limit
  return torch.unique(_components(right, down), return_inverse=True)[1]


def _components(right, down):
  """(H, W) int64: each pixel labelled with the smallest flat index of its 4-connected
  component, where right (H, W-1) / down (H-1, W) say which neighbours are joined.
  Minimum-label propagation with pointer jumping: a few dozen tensor passes."""
  h, w = right.shape[0], down.shape[1]
  label = torch.arange(h * w, device=right.device).reshape(h, w)
  while True:
    new = label.clone()
    new[:, :-1] = torch.where(right, torch.minimum(new[:, :-1], label[:, 1:]), new[:, :-1])
    new[:, 1:] = torch.where(right, torch.minimum(new[:, 1:], label[:, :-1]), new[:, 1:])
    new[:-1] = torch.where(down, torch.minimum(new[:-1], label[1:]), new[:-1])
    new[1:] = torch.where(down, torch.minimum(new[1:], label[:-1]), new[1:])
    flat = new.reshape(-1)
    new = flat[flat].reshape(h, w)
    if torch.equal(new, label):
      return label
    label = new


def drop_small_components(probs, min_share: float):
  """(H, W) probabilities with the 4-connected components of `probs > 0.5` smaller than
  `min_share` of the largest set to 0 (the config's "min_component")."""
  on = probs > 0.5
  if not min_share or not bool(on.any()):
    return probs
  label = _components(on[:, 1:] & on[:, :-1], on[1:] & on[:-1])[on]
  sizes = torch.bincount(label, minlength=on.numel())
  small = torch.zeros_like(on)
  small[on] = sizes[label] < min_share * sizes.max()
  return torch.where(small, torch.zeros_like(probs), probs)


def region_mean(z, regions):
  """(..., H, W) values averaged over the (H, W) regions' pixels."""
  ids = regions.reshape(-1).to(z.device)
  n = int(ids.max()) + 1
  flat = z.reshape(-1, ids.numel())
  total = torch.zeros(flat.shape[0], n, dtype=z.dtype, device=z.device).index_add_(1, ids, flat)
  count = torch.bincount(ids, minlength=n).to(z.dtype)
  return (total / count)[:, ids].reshape(z.shape)


def upsample(z, size):
  """(..., h, w) -> (..., H, W): bilinear, half-pixel centres (align_corners=False)."""
  lead = z.shape[:-2]
  z = F.interpolate(z.reshape(-1, 1, *z.shape[-2:]), size=tuple(int(s) for s in size),
                    mode="bilinear", align_corners=False)
  return z.reshape(*lead, *z.shape[-2:])


def quick_gelu(x):
  return x * torch.sigmoid(1.702 * x)


def normalize(pixels, mean, std):
  """(..., 3) values in [0, 255] -> float32 (pixels / 255 - mean) / std."""
  x = pixels.to(torch.float32) / 255.0
  mean = torch.tensor(mean, dtype=torch.float32, device=x.device)
  std = torch.tensor(std, dtype=torch.float32, device=x.device)
  return (x - mean) / std


# ------------------------------------------------------------------------------ the ViT

class Attention(nn.Module):

  def __init__(self, width: int, heads: int, qkv_bias: bool):
    super().__init__()
    self.heads = heads
    self.q_proj = nn.Linear(width, width, bias=qkv_bias)
    self.k_proj = nn.Linear(width, width, bias=qkv_bias)
    self.v_proj = nn.Linear(width, width, bias=qkv_bias)
    self.out_proj = nn.Linear(width, width)

  def forward(self, x):
    b, n, d = x.shape
    hd = d // self.heads
    split = lambda t: t.reshape(b, n, self.heads, hd).transpose(1, 2)
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    # Written out rather than F.scaled_dot_product_attention so every exporter sees plain ops.
    weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (hd ** -0.5), dim=-1)
    y = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d)
    return self.out_proj(y)


class Mlp(nn.Module):

  def __init__(self, width: int, hidden: int, kind: str):
    super().__init__()
    self.kind = kind
    if kind == "swiglu":
      self.gate_proj = nn.Linear(width, hidden)
      self.up_proj = nn.Linear(width, hidden)
      self.down_proj = nn.Linear(hidden, width)
    else:
      self.fc1 = nn.Linear(width, hidden)
      self.fc2 = nn.Linear(hidden, width)

  def forward(self, x):
    if self.kind == "swiglu":
      return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
    h = self.fc1(x)
    # Exact erf GELU for "gelu" (Hugging Face CLIP and DINOv2); OpenAI CLIP uses QuickGELU.
    h = quick_gelu(h) if self.kind == "quick_gelu" else F.gelu(h)
    return self.fc2(h)


class Block(nn.Module):
  """Pre-norm residual block; DINOv2 scales both branches (LayerScale)."""

  def __init__(self, cfg: dict):
    super().__init__()
    width, eps = cfg["width"], cfg["layer_norm_eps"]
    self.layer_norm1 = nn.LayerNorm(width, eps=eps)
    self.attn = Attention(width, cfg["num_heads"], cfg["qkv_bias"])
    self.layer_norm2 = nn.LayerNorm(width, eps=eps)
    self.mlp = Mlp(width, cfg["mlp_hidden"], cfg["mlp"])
    self.layerscale = cfg["family"] == "dinov2"
    if self.layerscale:
      self.layer_scale1 = nn.Parameter(torch.ones(width))
      self.layer_scale2 = nn.Parameter(torch.ones(width))

  def forward(self, x):
    y = self.attn(self.layer_norm1(x))
    x = x + (y * self.layer_scale1 if self.layerscale else y)
    y = self.mlp(self.layer_norm2(x))
    return x + (y * self.layer_scale2 if self.layerscale else y)


class ViT(nn.Module):
  """A CLIP or DINOv2 vision transformer as sketchseg_jax builds it.

  `forward(x, prompts, deep, positions)` takes normalised NCHW images and returns the final
  hidden states (B, 1 + R + P + h*w, D) (DINOv2: after the final LayerNorm; CLIP: before
  post_layernorm) and the number of leading non-patch tokens 1 + R + P.
  with_pooling: keep CLIP's post_layernorm and projection (the sketch tower's embedding).
  """

  def __init__(self, cfg: dict, with_pooling: bool):
    super().__init__()
    self.cfg = dict(cfg)
    d, p = cfg["width"], cfg["patch_size"]
    self.dino = cfg["family"] == "dinov2"
    self.grid = cfg["image_size"] // p
    self.patch_embedding = nn.Conv2d(cfg.get("num_channels", 3), d, p, stride=p, bias=self.dino)
    self.class_embedding = nn.Parameter(torch.zeros(d))
    self.position_embedding = nn.Parameter(torch.zeros(1 + self.grid ** 2, d))
    self.num_registers = int(cfg.get("num_registers") or 0)
    if self.num_registers:
      self.register_tokens = nn.Parameter(torch.zeros(self.num_registers, d))
    if not self.dino:
      self.pre_layernorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
    self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["depth"]))
    if self.dino:
      self.layernorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
    self.with_pooling = with_pooling and not self.dino
    if self.with_pooling:
      self.post_layernorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
      self.projection = (nn.Linear(d, cfg["projection_dim"], bias=False)
                         if cfg.get("projection_dim") else None)

  def positions(self, gh: int, gw: int):
    """The position table for a gh x gw patch grid: torch bicubic (align_corners=False) of
    the stored grid, by output size, or by scale factor (size + offset) / grid as the
    official DINOv2 code does; anti-aliased where the config says so."""
    table = self.position_embedding
    g = self.grid
    if (gh, gw) == (g, g):
      return table
    cfg = self.cfg
    if not cfg.get("pos_interp", True):
      raise ValueError(f"a {gh}x{gw} patch grid differs from the native {g}x{g} and this "
                       "backbone has position interpolation off")
    grid = table[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).to(torch.float32)
    offset = float(cfg.get("pos_interp_offset") or 0.0)
    antialias = bool(cfg.get("pos_interp_antialias"))
    if offset:
      grid = F.interpolate(grid, scale_factor=((gh + offset) / g, (gw + offset) / g),
                           mode="bicubic", align_corners=False, antialias=antialias)
    else:
      grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False,
                           antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(table.dtype)
    return torch.cat([table[:1], grid], dim=0)

  def forward(self, x, prompts=None, deep: bool = False, positions=None):
    b = x.shape[0]
    x = self.patch_embedding(x)
    gh, gw = x.shape[-2], x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = self.class_embedding.reshape(1, 1, -1).expand(b, 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + (self.positions(gh, gw) if positions is None else positions)[None]
    front = 1
    if self.num_registers:
      reg = self.register_tokens[None].expand(b, -1, -1)
      x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
      front += self.num_registers
    if not self.dino:
      x = self.pre_layernorm(x)
    per_layer = None
    if prompts is not None:
      per_layer = prompts if deep else None
      first = prompts[0] if deep else prompts
      n = first.shape[0]
      x = torch.cat([x[:, :front], first[None].expand(b, -1, -1), x[:, front:]], dim=1)
    for i, layer in enumerate(self.layers):
      if per_layer is not None:
        # Deep prompts: block i starts from prompts[i] in the prompt slots.
        x = torch.cat([x[:, :front], per_layer[i][None].expand(b, -1, -1), x[:, front + n:]],
                      dim=1)
      x = layer(x)
    if self.dino:
      x = self.layernorm(x)
    return x, front + (0 if prompts is None else n)

  def pool(self, x, front: int, pool: str):
    """The embedding the family's `pooled` output gives: projected post-LayerNormed CLS
    (CLIP), the normalised CLS (DINOv2), or for pool="mean" the mean over the patch tokens
    of the projected post-LayerNormed tokens (CLIP)."""
    if self.dino:
      if pool != "cls":
        raise ValueError("mean pooling needs a CLIP backbone")
      return x[:, 0]
    tokens = x[:, 0] if pool == "cls" else x[:, front:]
    e = self.post_layernorm(tokens)
    if self.projection is not None:
      e = self.projection(e)
    return e if pool == "cls" else e.mean(dim=1)


# ------------------------------------------------------------------------------ the two parts

class Head(nn.Module):
  """Patch tokens (..., D) -> (..., E): LayerNorm -> Linear (+ residual GELU MLP)."""

  def __init__(self, width: int, embed_dim: int, kind: str, hidden: int, eps: float):
    super().__init__()
    self.norm = nn.LayerNorm(width, eps=eps)
    self.proj = nn.Linear(width, embed_dim, bias=False)
    self.kind = kind
    if kind == "mlp":
      self.mlp_in = nn.Linear(width, hidden)
      self.mlp_out = nn.Linear(hidden, embed_dim)

  def forward(self, tokens):
    x = self.norm(tokens.to(torch.float32))
    out = self.proj(x)
    if self.kind == "mlp":
      out = out + self.mlp_out(F.gelu(self.mlp_in(x)))
    return out


class QueryAdapter(nn.Module):
  """q -> l2norm(q + fc2(gelu(fc1(q))))."""

  def __init__(self, embed_dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(embed_dim, hidden)
    self.fc2 = nn.Linear(hidden, embed_dim)

  def forward(self, q):
    return l2_normalize(q + self.fc2(F.gelu(self.fc1(q))))


class Segmenter(nn.Module):
  """The photo side: features of a photo, queries from sketch embeddings, logits."""

  def __init__(self, cfg: dict, embed_dim: int):
    super().__init__()
    vit = cfg["vit"]
    self.mean, self.std = cfg["mean"], cfg["std"]
    self.backbone = ViT(vit, with_pooling=False)
    self.num_prompts = int(cfg["num_prompts"])
    if self.num_prompts:
      self.prompts = nn.Parameter(torch.zeros(self.num_prompts, vit["width"]))
    self.head = Head(vit["width"], embed_dim, cfg["head"], cfg["head_hidden"],
                     vit["layer_norm_eps"])
    self.adapter = QueryAdapter(embed_dim, cfg["adapter_hidden"]) if cfg["adapter"] else None
    self.alpha = nn.Parameter(torch.tensor(10.0))
    self.beta = nn.Parameter(torch.tensor(-2.0))

  def features(self, photos, positions=None):
    """(B, H, W, 3) photos in [0, 255] -> (B, h, w, E) unit features."""
    x = normalize(photos, self.mean, self.std).permute(0, 3, 1, 2)
    h, front = self.backbone(x, self.prompts if self.num_prompts else None,
                             positions=positions)
    b, p = x.shape[0], self.backbone.cfg["patch_size"]
    tokens = h[:, front:].reshape(b, x.shape[2] // p, x.shape[3] // p, -1)
    return l2_normalize(self.head(tokens))

  def queries(self, embeddings):
    """(..., E) sketch-tower embeddings -> the unit queries the logits compare against."""
    q = l2_normalize(embeddings)
    return self.adapter(q) if self.adapter is not None else q

  def logits(self, features, queries):
    """(B, h, w, E) features, (B, N, E) unit queries -> (B, N, h, w)."""
    return self.alpha * torch.einsum("bhwe,bne->bnhw", features, queries) + self.beta


class SketchTower(nn.Module):
  """The teacher's sketch tower: rasters (N, R, R), ink = 1 -> (N, E) unit embeddings."""

  def __init__(self, cfg: dict):
    super().__init__()
    vit = cfg["vit"]
    self.mean, self.std = cfg["mean"], cfg["std"]
    self.pool, self.deep = cfg["pool"], bool(cfg["deep_prompts"])
    self.backbone = ViT(vit, with_pooling=True)
    self.num_prompts = int(cfg["num_prompts"])
    if self.num_prompts:
      shape = ((vit["depth"],) if self.deep else ()) + (self.num_prompts, vit["width"])
      self.prompts = nn.Parameter(torch.zeros(shape))

  def forward(self, rasters, positions=None):
    # The teacher reads uint8 ink (0..255, as the pipeline rasterises) drawn black on white
    # paper, as a grey photo; rounding here keeps float rasters on the same grey levels.
    ink = torch.round(rasters.to(torch.float32).clamp(0.0, 1.0) * 255.0)
    paper = 255.0 - ink
    x = normalize(paper[..., None].expand(*paper.shape, 3), self.mean, self.std)
    h, front = self.backbone(x.permute(0, 3, 1, 2), self.prompts if self.num_prompts else None,
                             self.deep, positions)
    return l2_normalize(self.backbone.pool(h, front, self.pool).to(torch.float32))


# ------------------------------------------------------------------------------ the model

def _tensor(x, device=None):
  if isinstance(x, torch.Tensor):
    return x.to(torch.float32) if device is None else x.to(device, torch.float32)
  return torch.as_tensor(np.array(x, np.float32), device=device)  # a writable copy


def _ink(raster):
  """A float or bool ink map (ink = 1), or a uint8 raster (ink = 255) -> float, ink = 1."""
  if isinstance(raster, torch.Tensor):
    dtype = raster.dtype
    x = raster.to(torch.float32)
    return x / 255.0 if dtype == torch.uint8 else x
  a = np.asarray(raster)
  x = torch.as_tensor(a.astype(np.float32))
  return x / 255.0 if a.dtype == np.uint8 else x


class SketchSeg(nn.Module):
  """The exported segmenter; see the module docstring. Build it with `load(folder)`."""

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    self.image_size = int(config["image_size"])
    self.raster_size = int(config["raster_size"])
    self.embed_dim = int(config["embed_dim"])
    self.region_threshold = float(config.get("regions") or 0.0)
    self.min_component = float(config.get("min_component") or 0.0)
    self.segmenter = Segmenter(config["segmenter"], self.embed_dim)
    self.sketch_tower = SketchTower(config["sketch_tower"])

  @property
  def device(self):
    return self.segmenter.alpha.device

  def _photos(self, images):
    x = _tensor(images, self.device)
    if x.ndim == 3:
      x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"photos must be (H, W, 3) or (B, H, W, 3), got shape {tuple(x.shape)}")
    return x

  def _rasters(self, rasters):
    if isinstance(rasters, (list, tuple)):
      rasters = torch.stack([_ink(r) for r in rasters])
    x = _ink(rasters).to(self.device)
    if x.ndim == 2:
      x = x[None]
    r = self.raster_size
    if x.ndim != 3 or tuple(x.shape[1:]) != (r, r):
      raise ValueError(f"sketch rasters must be ({r}, {r}) or (N, {r}, {r}) with ink = 1, "
                       f"got shape {tuple(x.shape)}")
    return x

  def image_features(self, images):
    """(B, H, W, 3) or (H, W, 3) photos, uint8 or float in [0, 255] -> (B, h, w, E)."""
    return self.segmenter.features(self._photos(images))

  def sketch_embedding(self, rasters):
    """(N, R, R) or (R, R) rasters with ink = 1 -> (N, E) sketch-tower unit embeddings."""
    return self.sketch_tower(self._rasters(rasters))

  def query(self, rasters):
    """(N, R, R) or (R, R) rasters with ink = 1 -> (N, E) unit queries (adapter applied)."""
    return self.segmenter.queries(self.sketch_embedding(rasters))

  def logits(self, features, queries):
    """Features (h, w, E) or (1, h, w, E) and queries (N, E) -> (N, h, w) logits;
    batched: (B, h, w, E) and (B, N, E) -> (B, N, h, w)."""
    features, queries = _tensor(features, self.device), _tensor(queries, self.device)
    if features.ndim == 3:
      features = features[None]
    if queries.ndim == 2:
      if features.shape[0] != 1:
        raise ValueError("queries (N, E) go with the features of one image; pass (B, N, E) "
                         "queries for a batch of images")
      return self.segmenter.logits(features, queries[None])[0]
    return self.segmenter.logits(features, queries)

  def masks_from(self, features, queries, size):
    """Probabilities at `size` (H, W): the logits bilinearly upsampled (half-pixel centres,
    align_corners=False), then a sigmoid. Shapes as in `logits`, with (H, W) last."""
    return torch.sigmoid(upsample(self.logits(features, queries), size))

  def regions(self, image):
    """(S, S) region ids of a photo at the model's size (`resize_photo`), over which a
    segmenter exported with "regions" in its config averages its logits (see segment)."""
    return colour_regions(_tensor(image, self.device), self.region_threshold)

  def resize_photo(self, image):
    """(H, W, 3) photo -> (S, S, 3) at the model's size: bilinear with anti-aliasing
    (PIL's filter), rounded to whole grey levels when the photo is uint8."""
    s = self.image_size
    x = _tensor(image, self.device)
    if tuple(x.shape[:2]) == (s, s):
      return x
    y = F.interpolate(x.permute(2, 0, 1)[None], size=(s, s), mode="bilinear",
                      align_corners=False, antialias=True)[0].permute(1, 2, 0)
    is_uint8 = (image.dtype == torch.uint8) if isinstance(image, torch.Tensor) else (
        np.asarray(image).dtype == np.uint8)
    return y.round().clamp(0, 255) if is_uint8 else y

  @torch.no_grad()
  def segment(self, image, sketch) -> np.ndarray:
    """An (H, W, 3) photo and one sketch raster (R, R) with ink = 1, or several (a list or an
    (N, R, R) stack, combined by the max of their masks) -> (H, W) float32 mask in [0, 1]."""
    shape = tuple(np.shape(image))
    if len(shape) != 3 or shape[-1] != 3:
      raise ValueError(f"the image must be (H, W, 3), got shape {shape}")
    resized = self.resize_photo(image)
    z = self.logits(self.image_features(resized), self.query(sketch))
    if self.region_threshold:
      # As in training: the max over the sketches at the model's size, averaged over the
      # photo's colour regions there, then upsampled to the photo's size.
      z = upsample(z, (self.image_size,) * 2).amax(dim=0)
      z = upsample(region_mean(z, self.regions(resized))[None], shape[:2])[0]
    else:
      z = upsample(z, shape[:2]).amax(dim=0)
    return drop_small_components(torch.sigmoid(z), self.min_component).cpu().numpy()


def load(folder, device="cpu") -> SketchSeg:
  """The model exported to `folder` (sketchseg.json + sketchseg.safetensors), in eval mode."""
  from safetensors.torch import load_file
  folder = Path(folder)
  config_path = folder / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path}: missing; is {folder} a `sketchseg export` folder?")
  config = json.loads(config_path.read_text())
  if config.get("format") != FORMAT:
    raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
  if int(config.get("version", 0)) > VERSION:
    raise ValueError(f"{config_path}: version {config['version']} is newer than this file "
                     f"reads ({VERSION}); export again")
  model = SketchSeg(config)
  state = load_file(str(folder / config.get("weights", WEIGHTS_FILE)))
  model.load_state_dict(state, strict=True)
  return model.to(device).eval()


__all__ = ["load", "SketchSeg", "Segmenter", "SketchTower", "ViT", "FORMAT", "VERSION"]
