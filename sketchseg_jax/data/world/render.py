"""Photo rendering: textured backgrounds with distractor shapes, shaded and textured objects
painted back to front, and the label map that gives the visible-pixel masks.

Objects arrive as parts in photo pixels (pixel (i, j) spans [j, j+1) x [i, i+1)). Each object
is painted inside its own box: a label crop from PIL polygons (part k -> k + 1, holes -> 0),
then a colour per part (base colour, texture, light, bulge), darkened part edges and detail
lines, pasted over what lies behind it. The global label map keeps, per pixel, the topmost
part, so masks read from it are the visible pixels: occlusion needs no extra step.
"""

from __future__ import annotations

import colorsys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from sketchseg_jax.data.world.shapes import Part

Hue = Optional[Tuple[float, float]]


def _rgb(h: float, s: float, v: float) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255.0


def _random_colour(rng, hue: Hue = None, sat=(0.25, 0.9), val=(0.3, 0.95)) -> np.ndarray:
  h = rng.uniform(*hue) if hue is not None else rng.uniform(0, 1)
  return _rgb(h, rng.uniform(*sat), rng.uniform(*val))


def _smooth_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
  """(h, w) float32 noise in [0, 1]: a random cells x cells grid, bilinearly enlarged."""
  grid = rng.random((cells, cells), dtype=np.float32)
  return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BILINEAR))


def _pattern(rng, h: int, w: int, kind: str) -> np.ndarray:
  """A (h, w) float32 mixing field in [0, 1] for a texture `kind`."""
  v = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / max(h, 1) * 2 - 1
  u = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / max(w, 1) * 2 - 1
  a = rng.uniform(0, np.pi)
  ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
  if kind == "stripes":
    f = rng.uniform(2, 7)
    t = np.sin((u * ca + v * sa) * np.float32(np.pi * f) + np.float32(rng.uniform(0, 6.3)))
    return (t > 0).astype(np.float32) if rng.random() < 0.5 else t * 0.5 + 0.5
  if kind == "checker":
    f = rng.uniform(2, 6)
    return (((np.floor((u + 1) * f) + np.floor((v + 1) * f)) % 2)).astype(np.float32)
  if kind == "noise":
    return _smooth_noise(rng, h, w, int(rng.integers(3, 9)))
  if kind == "gradient":
    return (u * ca + v * sa) * 0.35 + 0.5
  return np.zeros((1, 1), np.float32)


# ----------------------------------------------------------------------------- backgrounds

_BG_KINDS = ("noise", "stripes", "checker", "gradient", "horizon")


def plain_background(rng, w: int, h: int) -> np.ndarray:
  """A product-shot backdrop: a light, nearly uniform colour with a soft vertical fall-off."""
  base = _random_colour(rng, None, (0.0, 0.12), (0.85, 1.0))
  fall = 1 - rng.uniform(0, 0.12) * (np.arange(h, dtype=np.float32) / h)[:, None, None]
  return np.broadcast_to(base * fall, (h, w, 3)).astype(np.float32)


def cluttered_background(rng, w: int, h: int) -> np.ndarray:
  """A textured backdrop (noise, stripes, checks, a gradient or a wall/floor horizon) with
  grain and slow light variation."""
  kind = _BG_KINDS[int(rng.integers(len(_BG_KINDS)))]
  c1 = _random_colour(rng, None, (0.05, 0.6), (0.25, 0.9))
  c2 = _random_colour(rng, None, (0.05, 0.6), (0.25, 0.9))
  if kind == "horizon":
    y0 = rng.uniform(0.3, 0.7) * h
    t = (np.arange(h, dtype=np.float32)[:, None] > y0).astype(np.float32)
    t = np.broadcast_to(t, (h, w))
  else:
    t = np.broadcast_to(_pattern(rng, h, w, kind), (h, w))
  contrast = np.float32(rng.uniform(0.3, 1.0))
  img = c1 + (c2 - c1) * (t * contrast)[:, :, None]
  light = 0.75 + 0.5 * _smooth_noise(rng, h, w, int(rng.integers(2, 4)))
  return img * light[:, :, None]


def draw_distractors(img: Image.Image, rng, count: int) -> None:
  """Shapes that are not objects: blobs, boxes, rings, bars and squiggles, in place."""
  w, h = img.size
  d = ImageDraw.Draw(img)
  s = min(w, h)
  for _ in range(count):
    colour = tuple(int(c) for c in _random_colour(rng, None, (0.05, 0.8), (0.2, 0.95)))
    kind = int(rng.integers(6))
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.03, 0.2) * s
    if kind == 0:
      d.ellipse([cx - r, cy - r * rng.uniform(0.4, 1.0), cx + r, cy + r * rng.uniform(0.4, 1.0)],
                fill=colour)
    elif kind == 1:
      a = rng.uniform(0, np.pi)
      ca, sa = np.cos(a), np.sin(a)
      rr = r * rng.uniform(0.2, 1.0)
      corners = [(cx + ca * x - sa * y, cy + sa * x + ca * y)
                 for x, y in ((-r, -rr), (r, -rr), (r, rr), (-r, rr))]
      d.polygon(corners, fill=colour)
    elif kind == 2:
      n = int(rng.integers(3, 8))
      t = np.sort(rng.uniform(0, 2 * np.pi, n))
      rad = r * rng.uniform(0.4, 1.0, n)
      d.polygon(list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t))), fill=colour)
    elif kind == 3:
      d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour,
                width=max(1, int(r * rng.uniform(0.1, 0.3))))
    elif kind == 4:
      n = int(rng.integers(3, 7))
      walk = np.cumsum(rng.normal(0, r * 0.6, (n, 2)), 0) + (cx, cy)
      d.line([tuple(p) for p in walk], fill=colour, width=max(1, int(rng.uniform(0.005, 0.03) * s)),
             joint="curve")
    else:
      a = rng.uniform(0, np.pi)
      L = rng.uniform(0.3, 1.2) * s
      dx, dy = np.cos(a) * L / 2, np.sin(a) * L / 2
      d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour,
             width=max(1, int(rng.uniform(0.01, 0.05) * s)))


def draw_shadow(img: Image.Image, box, strength: float) -> None:
  """A soft contact shadow under an object on a plain backdrop (nested darker ellipses)."""
  x0, y0, x1, y1 = box
  cx, w = (x0 + x1) / 2, (x1 - x0)
  d = ImageDraw.Draw(img, "RGBA")
  for k in range(4):
    f = 1.0 - 0.18 * k
    ry = max(1.0, 0.06 * (y1 - y0) * f)
    d.ellipse([cx - w * 0.5 * f, y1 - ry, cx + w * 0.5 * f, y1 + ry],
              fill=(0, 0, 0, int(255 * strength * 0.3)))


# ----------------------------------------------------------------------------- objects

_TEXTURES = ("flat", "flat", "gradient", "stripes", "noise", "noise", "checker")


def _xy(p: np.ndarray, x0: int, y0: int) -> List[tuple]:
  # PIL puts integer coordinates on pixel centres; ours put them on pixel corners
  return [tuple(q) for q in (p - (x0 + 0.5, y0 + 0.5)).tolist()]


def paint_object(img: np.ndarray, labels: np.ndarray, parts: Sequence[Part], first_label: int,
                 hues: Dict[str, Hue], rng) -> int:
  """Paints one object's parts into float (H, W, 3) `img` and int (H, W) `labels`, in place;
  part k (from 0) of the object gets label first_label + k where it is visible. Returns the
  object's pixel count inside the frame before anything in front of it hides some."""
  H, W = labels.shape
  box = np.array([p.bbox() for p in parts if p.polys or p.tubes])
  x0 = max(int(np.floor(box[:, 0].min())) - 1, 0)
  y0 = max(int(np.floor(box[:, 1].min())) - 1, 0)
  x1 = min(int(np.ceil(box[:, 2].max())) + 1, W)
  y1 = min(int(np.ceil(box[:, 3].max())) + 1, H)
  if x1 <= x0 or y1 <= y0:
    return 0
  cw, ch = x1 - x0, y1 - y0
  lab_img = Image.new("L", (cw, ch), 0)
  det_img = Image.new("L", (cw, ch), 0)
  dl, dd = ImageDraw.Draw(lab_img), ImageDraw.Draw(det_img)
  scale = max(cw, ch)
  line_w = max(1, int(round(scale / 90)))
  for k, p in enumerate(parts, start=1):
    for poly in p.polys:
      dl.polygon(_xy(poly, x0, y0), fill=k)
    for hole in p.holes:
      dl.polygon(_xy(hole, x0, y0), fill=0)
    for line, w in p.tubes:
      xy = _xy(line, x0, y0)
      wi = max(1, int(round(w)))
      dl.line(xy, fill=k, width=wi, joint="curve")
      if wi >= 3:
        for q in (xy[0], xy[-1]):
          dl.ellipse([q[0] - wi / 2, q[1] - wi / 2, q[0] + wi / 2, q[1] + wi / 2], fill=k)
    for line in p.details:
      dd.line(_xy(line, x0, y0), fill=k, width=line_w)
  lab = np.asarray(lab_img)
  if not lab.any():
    return 0
  crop = img[y0:y1, x0:x1]
  light = rng.uniform(0, 2 * np.pi)
  lx, ly = np.float32(np.cos(light)), np.float32(np.sin(light))
  strength = np.float32(rng.uniform(0.15, 0.45))
  rows = np.arange(ch, dtype=np.float32)[:, None] / ch * 2 - 1
  cols = np.arange(cw, dtype=np.float32)[None, :] / cw * 2 - 1
  for k, p in enumerate(parts, start=1):
    if not (p.polys or p.tubes):
      continue
    bx0, by0, bx1, by1 = p.bbox()
    px0, py0 = max(int(bx0) - x0 - 1, 0), max(int(by0) - y0 - 1, 0)
    px1, py1 = min(int(np.ceil(bx1)) - x0 + 1, cw), min(int(np.ceil(by1)) - y0 + 1, ch)
    if px1 <= px0 or py1 <= py0:
      continue
    sub = lab[py0:py1, px0:px1] == k
    if not sub.any():
      continue
    base = _random_colour(rng, hues.get(p.name))
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    ph, pw = py1 - py0, px1 - px0
    shade = 1 + strength * (rows[py0:py1] * ly + cols[:, px0:px1] * lx)
    v = (np.arange(ph, dtype=np.float32)[:, None] + 0.5) / ph * 2 - 1
    u = (np.arange(pw, dtype=np.float32)[None, :] + 0.5) / pw * 2 - 1
    shade = shade * (1 - np.float32(rng.uniform(0.0, 0.3)) * (u * u + v * v) * 0.5)
    if kind == "flat":
      col = base * shade[:, :, None]
    else:
      other = _random_colour(rng, hues.get(p.name)) if rng.random() < 0.5 else base * 0.6
      t = _pattern(rng, ph, pw, kind) * np.float32(rng.uniform(0.4, 1.0))
      col = (base + (other - base) * t[:, :, None]) * shade[:, :, None]
    region = crop[py0:py1, px0:px1]
    region[sub] = np.broadcast_to(col, region.shape)[sub]
  inside = lab > 0
  edge = np.zeros_like(inside)
  diff_v = lab[1:] != lab[:-1]
  diff_h = lab[:, 1:] != lab[:, :-1]
  edge[1:] |= diff_v
  edge[:-1] |= diff_v
  edge[:, 1:] |= diff_h
  edge[:, :-1] |= diff_h
  crop[edge & inside] *= np.float32(rng.uniform(0.45, 0.8))
  det = np.asarray(det_img)
  ink = (det == lab) & inside
  crop[ink] *= np.float32(0.35)
  labels[y0:y1, x0:x1][inside] = lab[inside].astype(labels.dtype) + (first_label - 1)
  return int(inside.sum())


def draw_occluder(img: np.ndarray, labels: np.ndarray, rng) -> None:
  """A foreground bar or blob that is no object: it hides what lies behind (labels -> 0)."""
  H, W = labels.shape
  m = Image.new("L", (W, H), 0)
  d = ImageDraw.Draw(m)
  s = min(W, H)
  if rng.random() < 0.6:
    a = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    dx, dy = np.cos(a) * s, np.sin(a) * s
    d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=1,
           width=max(1, int(rng.uniform(0.02, 0.05) * s)))
  else:
    r = rng.uniform(0.05, 0.1) * s
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
  mask = np.asarray(m).astype(bool)
  img[mask] = _random_colour(rng, None, (0.1, 0.7), (0.2, 0.8))
  labels[mask] = 0


def finish(img: np.ndarray, rng, grain: float) -> np.ndarray:
  """uint8 photo from the float canvas: luminance grain, then clipping."""
  if grain > 0:
    h, w = img.shape[:2]
    img = img + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(grain)
  return np.clip(img, 0, 255).astype(np.uint8)
