"""The category table: 16 kinds of object, each a builder of named parts with continuous
shape parameters (proportions, angles, counts), so no two instances are alike.

Builders take a numpy Generator and return the parts in paint order (back to front) in the
object's own frame, y down, ground near y = 0; the world scales and poses them afterwards.
A part may be absent from an instance (a house without a chimney); `Category.parts` lists
every part the category can have. Colours are hints for the renderer: a hue range per part
(None = any hue), as real photos have green trees and brown trunks but cars of any colour.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from sketchseg_jax.data.world.shapes import (
    Part, bezier, clip_x, cloud, door, ellipse, eye, fin, join, leaf, loop, pts,
    rect, rounded, shrink, superellipse, wheel, window)

Hue = Optional[Tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class Category:
  name: str
  parts: Tuple[str, ...]
  build: Callable[[np.random.Generator], List[Part]]
  tilt: float = 8.0                      # max in-plane rotation of an instance, degrees
  hues: Tuple[Tuple[str, Hue], ...] = ()  # part -> hue range in [0, 1); unlisted = any hue


def _u(r, lo, hi):
  return float(r.uniform(lo, hi))


def house(r) -> List[Part]:
  w, h = _u(r, 1.0, 1.7), _u(r, 0.55, 1.05)
  rise, top, over = _u(r, 0.3, 0.65) * w, _u(r, 0.0, 0.55) * w, _u(r, 0.0, 0.14)
  roof_pts = pts(-w / 2 - over, -h, w / 2 + over, -h, top / 2, -h - rise, -top / 2, -h - rise)
  out = []
  if r.random() < 0.8:
    side = 1 if r.random() < 0.5 else -1
    cw = _u(r, 0.08, 0.15)
    cx = side * (top / 2 + _u(r, 0.2, 0.7) * (w / 2 + over - top / 2 - cw))
    # the chimney stands on the slope: its foot reaches just below the roof line at its
    # outer edge, so the roof hides the foot and no hidden line shows in the sketch
    run = max(w / 2 + over - top / 2, 1e-6)
    roof_y = lambda x: -h - rise * np.clip((w / 2 + over - abs(x)) / run, 0, 1)
    x0, x1 = sorted((cx - cw / 2, cx + cw / 2))
    ctop = min(roof_y(x0), roof_y(x1)) - _u(r, 0.1, 0.28)
    foot = max(roof_y(x0), roof_y(x1)) + 0.03
    out.append(Part("chimney", "box", polys=[rect(x0, ctop, x1, foot)]))
  out.append(Part("walls", "box", polys=[rect(-w / 2, -h, w / 2, 0)]))
  out.append(Part("roof", "roof", polys=[rounded(roof_pts, 0.02, 3)]))
  dw, dh = _u(r, 0.16, 0.26), _u(r, 0.38, 0.62) * h
  dx = _u(r, -0.3, 0.3) * (w - dw)
  arched, knob = r.random() < 0.3, 1 if r.random() < 0.5 else -1
  out.append(door(dx - dw / 2, -dh, dx + dw / 2, 0, arched, knob))
  ws = _u(r, 0.14, 0.22) * min(1.0, h / 0.7)
  wy = -h * _u(r, 0.55, 0.72)
  style = ("rect", "round", "arch")[int(r.integers(3))]
  bars = r.random() < 0.7
  slots = np.linspace(-w / 2 + ws, w / 2 - ws, 4)
  slots = [x for x in slots if abs(x - dx) > dw / 2 + ws * 0.7 or wy + ws / 2 < -dh - 0.03]
  count = int(r.integers(1, 4))
  pick = sorted(r.permutation(len(slots))[:count]) if slots else []
  wins = [window(slots[i] - ws / 2, wy - ws / 2, slots[i] + ws / 2, wy + ws / 2, style, bars)
          for i in pick]
  if wins:
    out.append(join("window", "window", wins))
  return out


def mug(r) -> List[Part]:
  bw, bh = _u(r, 0.55, 0.9), _u(r, 0.65, 1.15)
  taper, ry = _u(r, -0.1, 0.12), bw * _u(r, 0.06, 0.13)
  hr = bh * _u(r, 0.24, 0.36)
  hy = -bh * _u(r, 0.42, 0.58)
  handle = loop(bw / 2 - hr * 0.35, hy, hr, hr * _u(r, 0.55, 0.75), -np.pi / 2 - 0.25,
                np.pi / 2 + 0.25)
  rim_top = ellipse(0, -bh, bw / 2, ry, 12, a0=np.pi, a1=2 * np.pi, closed=False)
  lower = rounded(pts(bw / 2, -bh, bw / 2 - taper, 0, -bw / 2 + taper, 0, -bw / 2, -bh),
                  [0, _u(r, 0.03, 0.15), _u(r, 0.03, 0.15), 0], 4)
  body = np.concatenate([rim_top[1:-1], lower], 0)
  rim = ellipse(0, -bh, bw / 2, ry, 12, a0=0, a1=np.pi, closed=False)
  return [Part("handle", "loop", polys=[handle]),
          Part("body", "cylinder", polys=[body], details=[rim])]


def car(r) -> List[Part]:
  L, wr = _u(r, 1.6, 2.3), _u(r, 0.15, 0.23)
  bot = -wr * _u(r, 0.55, 0.95)
  bh = _u(r, 0.3, 0.48)
  top = bot - bh
  nose = _u(r, 0.15, 0.5) * bh
  body = rounded(pts(-L / 2, bot, L / 2, bot, L / 2, top + nose, L / 2 - _u(r, 0.1, 0.35), top,
                     -L / 2 + _u(r, 0.0, 0.12), top, -L / 2, top + _u(r, 0.0, 0.25) * bh),
                 _u(r, 0.05, 0.12), 4)
  cw, ch = L * _u(r, 0.38, 0.6), _u(r, 0.26, 0.42)
  cx = L * _u(r, -0.12, 0.04)
  sf, sr = _u(r, 0.1, 0.4) * ch, _u(r, 0.0, 0.3) * ch
  cab_pts = pts(cx - cw / 2, top + 0.03, cx + cw / 2, top + 0.03, cx + cw / 2 - sf, top - ch,
                cx - cw / 2 + sr, top - ch)
  cabin = rounded(cab_pts, _u(r, 0.03, 0.08), 3)
  glass = shrink(cab_pts, 0.045)
  glass[:2, 1] = top - 0.025
  pieces = [glass]
  if r.random() < 0.7:
    split = cx + _u(r, -0.15, 0.15) * cw
    pieces = [clip_x(glass, -9, split - 0.025), clip_x(glass, split + 0.025, 9)]
  windows = Part("window", "window", polys=[p for p in pieces if len(p) >= 3])
  gap = L * _u(r, 0.27, 0.35)
  shift = L * _u(r, -0.04, 0.04)
  hub = _u(r, 0.3, 0.55)
  wheels = join("wheel", "wheel",
                [wheel(shift - gap, -wr, wr, hub), wheel(shift + gap, -wr, wr, hub)])
  bodypart = Part("body", "body", polys=[body], details=[pts(cx, top + 0.04, cx, bot - 0.04)])
  return [Part("cabin", "cabin", polys=[cabin]), bodypart, windows, wheels]


def bicycle(r) -> List[Part]:
  wr, wb = _u(r, 0.3, 0.42), _u(r, 0.95, 1.3)
  rear, front = np.array([-wb / 2, -wr]), np.array([wb / 2, -wr])
  bb = np.array([-wb / 2 + wb * _u(r, 0.38, 0.5), -wr + _u(r, -0.02, 0.08)])
  seat = np.array([bb[0] - _u(r, 0.08, 0.2), -wr - _u(r, 0.45, 0.65)])
  head = np.array([front[0] - _u(r, 0.12, 0.24), seat[1] + _u(r, -0.08, 0.06)])
  head_low = head + (front - head) * 0.3
  stay = bb + (seat - bb) * 0.85
  t = _u(r, 0.03, 0.05)
  frame = Part("frame", "frame", tubes=[
      (np.stack([rear, bb, stay, rear]), t), (np.stack([bb, head_low]), t),
      (np.stack([stay, head, front]), t)])
  rim, spokes = _u(r, 0.8, 0.9), int(r.choice([0, 6, 8, 12]))
  wheels = join("wheel", "wheel", [wheel(*rear, wr, 0.5, rim, spokes, 0.012),
                                   wheel(*front, wr, 0.5, rim, spokes, 0.012)])
  sw = _u(r, 0.16, 0.26)
  post_top = seat + (seat - bb) * 0.12
  saddle = rounded(pts(post_top[0] - sw * 0.45, post_top[1] - 0.05, post_top[0] + sw * 0.55,
                       post_top[1] - 0.035, post_top[0] + sw * 0.2, post_top[1] + 0.02,
                       post_top[0] - sw * 0.4, post_top[1] + 0.02), 0.03, 3)
  seatpart = Part("seat", "seat", polys=[saddle], tubes=[(np.stack([seat, post_top]), t)])
  rise, reach = _u(r, 0.08, 0.18), _u(r, 0.06, 0.18)
  bar = bezier(head, head + (0.01, -rise * 1.4), head + (-reach, -rise), 6)
  bar = np.concatenate([pts(*(head + (head - front) * 0.08)), bar], 0)
  return [wheels, frame, seatpart, Part("handlebar", "bar", tubes=[(bar, t)])]


def tree(r) -> List[Part]:
  th, tw = _u(r, 0.4, 0.85), _u(r, 0.1, 0.24)
  flare = _u(r, 1.0, 1.6)
  trunk = pts(-tw / 2 * flare, 0, tw / 2 * flare, 0, tw / 2, -th - 0.1, -tw / 2, -th - 0.1)
  if r.random() < 0.65:
    cr, asp = _u(r, 0.42, 0.75), _u(r, 0.75, 1.25)
    crown = cloud(0, -th - cr * asp * 0.8, cr, cr * asp, int(r.integers(5, 11)), _u(r, 0.06, 0.16),
                  _u(r, 0, np.pi))
  else:
    tiers, base_w = int(r.integers(2, 5)), _u(r, 0.45, 0.8)
    tier_h = _u(r, 0.3, 0.5)
    left, y = [], -th + 0.05
    for i in range(tiers):
      wi = base_w * (1 - i / (tiers + 0.6))
      left += [(-wi, y), (-wi * 0.45, y - tier_h * 0.55)]
      y -= tier_h * 0.55
    tip = (0.0, y - tier_h * 0.5)
    crown = np.array(left + [tip] + [(-x, yy) for x, yy in left[::-1]], np.float64)
  return [Part("trunk", "trunk", polys=[trunk]), Part("crown", "crown", polys=[crown])]


def lamp(r) -> List[Part]:
  bw, bh = _u(r, 0.4, 0.7), _u(r, 0.06, 0.14)
  base = rounded(rect(-bw / 2, -bh, bw / 2, 0), bh * 0.45, 3)
  sh, bend = _u(r, 0.55, 1.0), _u(r, -0.25, 0.25)
  stem_top = np.array([bend * 0.6, -bh - sh])
  stem = bezier((0, -bh), (bend, -bh - sh * 0.5), stem_top, 7)
  stw, sbw, shh = _u(r, 0.18, 0.42), _u(r, 0.5, 0.9), _u(r, 0.3, 0.5)
  cx, y0 = stem_top[0], stem_top[1] - shh * _u(r, 0.35, 0.6)
  curve = _u(r, 0.0, 0.06)
  bottom = bezier((cx + sbw / 2, y0 + shh), (cx, y0 + shh + curve * 2), (cx - sbw / 2, y0 + shh), 7)
  shade = np.concatenate([pts(cx - stw / 2, y0, cx + stw / 2, y0), bottom], 0)
  return [Part("base", "base", polys=[base]),
          Part("stem", "pole", tubes=[(stem, _u(r, 0.03, 0.05))]),
          Part("shade", "shade", polys=[rounded(shade, 0.02, 2)])]


def chair(r) -> List[Part]:
  sw, lh = _u(r, 0.6, 0.9), _u(r, 0.45, 0.75)
  dx, dy, th = _u(r, 0.1, 0.25), _u(r, 0.06, 0.16), _u(r, 0.04, 0.08)
  x0, y0 = -sw / 2 - dx / 2, -lh
  seat = pts(x0, y0, x0 + dx, y0 - dy, x0 + dx + sw, y0 - dy, x0 + sw, y0, x0 + sw, y0 + th,
             x0, y0 + th)
  bh, lean = _u(r, 0.5, 0.9), _u(r, 0.0, 0.15)
  bx0, bx1, by = x0 + dx, x0 + dx + sw, y0 - dy + 0.02
  back_pts = pts(bx0, by, bx1, by, bx1 + lean, by - bh, bx0 + lean, by - bh)
  back = rounded(back_pts, _u(r, 0.02, 0.12), 3)
  slats = int(r.integers(0, 4))
  details = []
  for i in range(slats):
    f = (i + 1) / (slats + 1)
    details.append(pts(bx0 + (bx1 - bx0) * f + lean * 0.15, by - 0.04,
                       bx0 + (bx1 - bx0) * f + lean * 0.85, by - bh * 0.85))
  lt, splay = _u(r, 0.03, 0.06), _u(r, 0.0, 0.08)
  legs = [(pts(x0 + lt, y0 + th, x0 + lt - splay, 0), lt),
          (pts(x0 + sw - lt, y0 + th, x0 + sw - lt + splay, 0), lt),
          (pts(x0 + dx + sw - lt, y0 - dy, x0 + dx + sw - lt + splay, -dy * 0.9), lt)]
  if r.random() < 0.5:
    legs.append((pts(x0 + dx + lt, y0 - dy, x0 + dx + lt - splay, -dy * 0.9), lt))
  return [Part("back", "back", polys=[back], details=details),
          Part("legs", "legs", tubes=legs),
          Part("seat", "seat", polys=[seat])]


def bottle(r) -> List[Part]:
  bw, bh = _u(r, 0.35, 0.6), _u(r, 0.7, 1.1)
  sh, nw, nh = _u(r, 0.08, 0.3), bw * _u(r, 0.28, 0.45), _u(r, 0.15, 0.35)
  round_k = _u(r, 0.0, 0.6)
  right = bezier((bw / 2, -bh), (bw / 2, -bh - sh * (0.4 + round_k)), (nw / 2, -bh - sh), 7)
  left = bezier((-nw / 2, -bh - sh), (-bw / 2, -bh - sh * (0.4 + round_k)), (-bw / 2, -bh), 7)
  lower = rounded(pts(-bw / 2, 0, bw / 2, 0, bw / 2, -bh + 0.001, -bw / 2, -bh + 0.001),
                  [_u(r, 0.02, 0.1), _u(r, 0.02, 0.1), 0, 0], 4)
  body = np.concatenate([lower[:len(lower) - 2], right, left], 0)
  top = -bh - sh - nh
  neck = rect(-nw / 2, top, nw / 2, -bh - sh + 0.03)
  cw, ch = nw * _u(r, 1.05, 1.35), _u(r, 0.06, 0.14)
  cap = rounded(rect(-cw / 2, top - ch, cw / 2, top + 0.01), ch * 0.2, 2)
  ly0, ly1 = -bh * _u(r, 0.15, 0.35), -bh * _u(r, 0.55, 0.85)
  out = [Part("body", "body", polys=[body]), Part("neck", "neck", polys=[neck]),
         Part("cap", "box", polys=[cap])]
  if r.random() < 0.8:
    out.append(Part("label", "box", polys=[rect(-bw / 2 + 0.01, ly1, bw / 2 - 0.01, ly0)]))
  return out


def fish(r) -> List[Part]:
  L, H = _u(r, 1.1, 1.7), _u(r, 0.42, 0.85)
  k, a, b = _u(r, 0.55, 1.0), _u(r, 0.55, 0.95), _u(r, 0.55, 0.95)
  t = np.linspace(0, 1, 19)
  hump = np.sin(np.pi * t ** k)
  x = -L / 2 + L * t
  top = np.stack([x, -H / 2 * hump ** a], 1)
  bottom = np.stack([x, H / 2 * _u(r, 0.7, 1.0) * hump ** b], 1)[::-1]
  body = np.concatenate([top, bottom[1:-1]], 0)
  tl, tw, fork = _u(r, 0.22, 0.42), H * _u(r, 0.35, 0.6), _u(r, 0.0, 0.6)
  tx = -L / 2 + 0.08
  tail = pts(tx, 0, -L / 2 - tl, -tw, -L / 2 - tl * (1 - fork), 0, -L / 2 - tl, tw)
  fa, fb = _u(r, 0.2, 0.45), _u(r, 0.5, 0.7)
  ia, ib = int(fa * 18), int(fb * 18)
  fin_tip = (x[ia] - _u(r, 0.0, 0.2), top[ia, 1] - H * _u(r, 0.2, 0.45))
  fins = [fin(top[ib] + (0, 0.05), top[ia] + (0, 0.05), fin_tip, _u(r, -0.2, 0.2))]
  if r.random() < 0.5:
    vt = (x[ia + 2] - 0.1, bottom[18 - ia - 2, 1] + H * 0.25)
    fins.append(fin(bottom[18 - ia] - (0, 0.04), bottom[18 - ia - 4] - (0, 0.04), vt, 0.1))
  er = H * _u(r, 0.07, 0.12)
  ex = L / 2 - L * _u(r, 0.12, 0.2)
  gill = bezier((ex - er * 2.2, -H * 0.28), (ex - er * 3.5, 0), (ex - er * 2.2, H * 0.28), 6)
  return [Part("tail", "fin", polys=[tail]), join("fin", "fin", fins),
          Part("body", "body", polys=[body], details=[gill]),
          eye(ex, -H * 0.08, er, er, _u(r, 0.3, 0.6), False)]


def cat(r) -> List[Part]:
  rx = _u(r, 0.45, 0.6)
  ry = rx * _u(r, 0.75, 1.0)
  head = superellipse(0, 0, rx, ry, _u(r, 2.0, 2.6), 40)
  ew, eh, spread, tilt = _u(r, 0.22, 0.36), _u(r, 0.25, 0.45), _u(r, 0.35, 0.6), _u(r, -0.1, 0.15)
  ears = []
  for s in (-1, 1):
    bx = s * rx * spread
    by = -ry * np.sqrt(max(1 - spread ** 2, 0.05))
    ears.append(pts(bx - ew / 2, by + 0.12, bx + ew / 2, by + 0.12, bx + s * tilt, by - eh))
  erx = _u(r, 0.07, 0.12)
  ery, ex = erx * _u(r, 0.6, 1.3), rx * _u(r, 0.32, 0.48)
  slit = r.random() < 0.5
  eyes = join("eye", "eye", [eye(s * ex, -ry * 0.15, erx, ery, 0.45, slit) for s in (-1, 1)])
  nw = _u(r, 0.06, 0.11)
  ny = ry * _u(r, 0.12, 0.25)
  nose = pts(-nw, ny - nw * 0.6, nw, ny - nw * 0.6, 0, ny + nw * 0.5)
  details = [pts(-nw * 1.6, ny + nw * 1.6, -nw * 0.5, ny + nw * 1.9, 0, ny + nw * 0.6,
                 nw * 0.5, ny + nw * 1.9, nw * 1.6, ny + nw * 1.6)]
  if r.random() < 0.75:
    for s in (-1, 1):
      for k in (-1, 0, 1):
        details.append(pts(s * nw * 2.2, ny + k * 0.04, s * rx * 0.92, ny + k * 0.09 - 0.02))
  return [Part("ear", "fin", polys=ears), Part("head", "head", polys=[head], details=details),
          eyes, Part("nose", "nose", polys=[nose])]


def flower(r) -> List[Part]:
  sh = _u(r, 0.6, 1.1)
  c = np.array([_u(r, -0.12, 0.12), -sh])
  k, pl = int(r.integers(5, 10)), _u(r, 0.22, 0.42)
  pw, cr = pl * _u(r, 0.28, 0.55), _u(r, 0.1, 0.18)
  phase = _u(r, 0, np.pi)
  petals = []
  for i in range(k):
    a = phase + i * 2 * np.pi / k
    d = cr + pl / 2 - 0.04
    petals.append(ellipse(c[0] + d * np.cos(a), c[1] + d * np.sin(a), pl / 2, pw / 2, 14, rot=a))
  stem = bezier((0, 0), (_u(r, -0.2, 0.2), -sh * 0.5), c, 8)
  lt = stem[int(r.integers(3, 6))]
  side = 1 if r.random() < 0.5 else -1
  ll = _u(r, 0.2, 0.35)
  tip = lt + (side * ll, -ll * _u(r, 0.2, 0.8))
  return [Part("stem", "pole", tubes=[(stem, _u(r, 0.03, 0.05))]),
          Part("leaf", "leaf", polys=[leaf(lt, tip, ll * _u(r, 0.2, 0.35))],
               details=[np.stack([lt, lt + (tip - lt) * 0.85])]),
          Part("petal", "petal", polys=petals),
          Part("center", "disc", polys=[ellipse(c[0], c[1], cr, cr, 18)])]


def boat(r) -> List[Part]:
  L, hh = _u(r, 1.3, 2.0), _u(r, 0.18, 0.36)
  bow, rise = _u(r, 0.05, 0.3), _u(r, 0.0, 0.12)
  hull = rounded(pts(-L / 2, -hh, L / 2 + bow, -hh - rise, L / 2 * _u(r, 0.55, 0.8), 0,
                     -L / 2 * _u(r, 0.65, 0.9), 0), [0.02, 0.02, 0.12, 0.08], 4)
  mx, mh = L * _u(r, -0.15, 0.12), _u(r, 0.8, 1.4)
  mast = Part("mast", "pole", tubes=[(pts(mx, -hh + 0.05, mx, -hh - mh), 0.035)])
  boom = -hh - _u(r, 0.05, 0.15)
  sails = [pts(mx + 0.03, -hh - mh * 0.96, mx + 0.03, boom, mx + L * _u(r, 0.28, 0.45), boom)]
  if r.random() < 0.5:
    sails.append(pts(mx - 0.03, -hh - mh * 0.85, mx - 0.03, boom,
                     mx - L * _u(r, 0.2, 0.4), boom))
  out = [mast, Part("sail", "sail", polys=sails), Part("hull", "hull", polys=[hull])]
  count = int(r.integers(0, 4))
  if count:
    wr = hh * _u(r, 0.17, 0.26)
    xs = mx + np.linspace(-1, 1, count) * L * 0.18 * (count > 1)
    out.append(join("window", "window", [
        window(x - wr, -hh * 0.55 - wr, x + wr, -hh * 0.55 + wr, "round", False) for x in xs]))
  return out


def rocket(r) -> List[Part]:
  bw, bh = _u(r, 0.3, 0.5), _u(r, 0.8, 1.4)
  taper = _u(r, -0.04, 0.06)
  body = rounded(pts(-bw / 2, -bh, bw / 2, -bh, bw / 2 - taper, 0, -bw / 2 + taper, 0), 0.03, 3)
  nh = bw * _u(r, 0.8, 1.6)
  sharp = _u(r, 0.1, 0.5)
  nose = np.concatenate([
      bezier((-bw / 2, -bh + 0.02), (-bw / 2 * sharp, -bh - nh * 0.8), (0, -bh - nh), 8),
      bezier((0, -bh - nh), (bw / 2 * sharp, -bh - nh * 0.8), (bw / 2, -bh + 0.02), 8)[1:]], 0)
  fw, fh, drop = _u(r, 0.14, 0.3), _u(r, 0.25, 0.45), _u(r, 0.0, 0.15)
  fins = [fin((s * (bw / 2 - 0.03), -fh), (s * (bw / 2 - 0.03), 0),
              (s * (bw / 2 + fw), drop), s * _u(r, -0.15, 0.25)) for s in (-1, 1)]
  wins = []
  for i in range(int(r.integers(1, 3))):
    wr = bw * _u(r, 0.22, 0.3)
    wy = -bh * (0.7 - 0.3 * i)
    wins.append(window(-wr, wy - wr, wr, wy + wr, "round", r.random() < 0.3))
  return [join("fin", "fin", fins), Part("body", "body", polys=[body]),
          Part("nose", "nose", polys=[nose]), join("window", "window", wins)]


def umbrella(r) -> List[Part]:
  R = _u(r, 0.6, 0.9)
  ch, k, depth = R * _u(r, 0.45, 0.8), int(r.integers(4, 9)), _u(r, 0.04, 0.12)
  dome = ellipse(0, 0, R, ch, 24, a0=np.pi, a1=2 * np.pi, closed=False)
  xs = np.linspace(R, -R, k + 1)
  scallops = []
  for a, b in zip(xs[:-1], xs[1:]):
    scallops.append(bezier((a, 0), ((a + b) / 2, -depth * 2), (b, 0), 6)[1:])
  canopy = np.concatenate([dome] + scallops[:-1] + [scallops[-1][:-1]], 0)
  ribs = [pts(0, -ch, x * 0.98, -0.005) for x in xs[1:-1]]
  sl, hr = _u(r, 0.6, 1.0), _u(r, 0.08, 0.15)
  shaft = Part("shaft", "pole", tubes=[(pts(0, -ch - 0.08, 0, sl), 0.035)])
  # a J hook: half a circle below the shaft's end, opening upwards on a random side
  side = 1 if r.random() < 0.5 else -1
  a0, a1 = (np.pi, 0.0) if side > 0 else (0.0, np.pi)
  arc = ellipse(side * hr, sl, hr, hr, 10, a0=a0, a1=a1, closed=False)
  hook = np.concatenate([pts(0, sl - 0.05), arc, arc[-1:] + (0, -hr * 0.4)], 0)
  return [shaft, Part("canopy", "canopy", polys=[canopy], details=ribs),
          Part("handle", "hook", tubes=[(hook, _u(r, 0.045, 0.07))])]


def clock(r) -> List[Part]:
  R, p, asp = 0.5, _u(r, 2.0, 5.0), _u(r, 0.88, 1.12)
  out = []
  if r.random() < 0.35:
    br = R * _u(r, 0.22, 0.32)
    out.append(Part("bell", "disc", polys=[
        ellipse(s * R * 0.62, -R * asp * 0.88, br, br * 0.8, 14, rot=s * 0.5) for s in (-1, 1)]))
  out.append(Part("case", "disc", polys=[superellipse(0, 0, R, R * asp, p, 40)]))
  f = _u(r, 0.78, 0.9)
  ticks = []
  nt = int(r.choice([0, 4, 12]))
  for i in range(nt):
    a = i * 2 * np.pi / nt
    c, s = np.cos(a), np.sin(a)
    rx, ry = c * R * f, s * R * f * asp
    ticks.append(pts(rx * 0.78, ry * 0.78, rx * 0.92, ry * 0.92))
  out.append(Part("face", "disc", polys=[superellipse(0, 0, R * f, R * f * asp, p, 36)],
                  details=ticks))
  ha, ma = _u(r, 0, 2 * np.pi), _u(r, 0, 2 * np.pi)
  out.append(Part("hands", "hands", tubes=[
      (pts(0, 0, np.cos(ha) * R * f * 0.5, np.sin(ha) * R * f * 0.5), 0.045),
      (pts(0, 0, np.cos(ma) * R * f * 0.75, np.sin(ma) * R * f * 0.75), 0.03)]))
  return out


def bus(r) -> List[Part]:
  L, H, wr = _u(r, 1.8, 2.6), _u(r, 0.6, 0.9), _u(r, 0.13, 0.2)
  bot = -wr * 0.7
  top = bot - H
  body = rounded(rect(-L / 2, top, L / 2, bot), _u(r, 0.05, 0.16), 4)
  dw = _u(r, 0.18, 0.28)
  dx1 = L / 2 - _u(r, 0.08, 0.35)
  dx0 = dx1 - dw
  door_part = door(dx0, top + H * 0.22, dx1, bot - 0.03, False, -1)
  door_part.details.append(pts((dx0 + dx1) / 2, top + H * 0.22, (dx0 + dx1) / 2, bot - 0.03))
  n = int(r.integers(3, 7))
  wy0, wy1 = top + 0.07, top + H * _u(r, 0.32, 0.5)
  xs = np.linspace(-L / 2 + 0.08, dx0 - 0.06, n + 1)
  gap = _u(r, 0.03, 0.07)
  wins = [window(a + gap / 2, wy0, b - gap / 2, wy1, "rect", False)
          for a, b in zip(xs[:-1], xs[1:])]
  if r.random() < 0.7:
    wins.append(window(dx1 + 0.04, wy0, L / 2 - 0.03, wy1, "rect", False))
  gap_w = L * _u(r, 0.28, 0.36)
  hub = _u(r, 0.3, 0.55)
  wheels = join("wheel", "wheel", [wheel(-gap_w, -wr, wr, hub), wheel(gap_w, -wr, wr, hub)])
  return [Part("body", "body", polys=[body]), join("window", "window", wins),
          door_part, wheels]


_TABLE = [
    Category("house", ("chimney", "walls", "roof", "door", "window"), house,
             hues=(("roof", (0.95, 1.08)), ("chimney", (0.95, 1.08)))),
    Category("mug", ("handle", "body"), mug),
    Category("car", ("cabin", "body", "window", "wheel"), car,
             hues=(("wheel", None), ("window", (0.5, 0.62)))),
    Category("bicycle", ("wheel", "frame", "seat", "handlebar"), bicycle),
    Category("tree", ("trunk", "crown"), tree, tilt=5,
             hues=(("trunk", (0.05, 0.1)), ("crown", (0.2, 0.4)))),
    Category("lamp", ("base", "stem", "shade"), lamp),
    Category("chair", ("back", "legs", "seat"), chair),
    Category("bottle", ("body", "neck", "cap", "label"), bottle, tilt=15),
    Category("fish", ("tail", "fin", "body", "eye"), fish, tilt=20),
    Category("cat", ("ear", "head", "eye", "nose"), cat, tilt=12),
    Category("flower", ("stem", "leaf", "petal", "center"), flower, tilt=10,
             hues=(("stem", (0.22, 0.4)), ("leaf", (0.22, 0.4)), ("center", (0.08, 0.16)))),
    Category("boat", ("mast", "sail", "hull", "window"), boat),
    Category("rocket", ("fin", "body", "nose", "window"), rocket, tilt=20),
    Category("umbrella", ("shaft", "canopy", "handle"), umbrella, tilt=20),
    Category("clock", ("bell", "case", "face", "hands"), clock, tilt=10),
    Category("bus", ("body", "window", "door", "wheel"), bus),
]

CATEGORIES: Dict[str, Category] = {c.name: c for c in _TABLE}
CATEGORY_NAMES: Tuple[str, ...] = tuple(c.name for c in _TABLE)
DEFAULT_HELDOUT: Tuple[str, ...] = ("bus", "rocket", "umbrella")


def shape_families() -> Dict[str, Tuple[str, ...]]:
  """Shape family -> categories whose builders use it (from one instance of each)."""
  out: Dict[str, List[str]] = {}
  rng = np.random.default_rng(0)
  for c in _TABLE:
    for p in c.build(rng):
      names = out.setdefault(p.shape, [])
      if c.name not in names:
        names.append(c.name)
  return {k: tuple(v) for k, v in out.items()}
