"""Compiled inner loop of the rasterizer: anti-aliased capsules, a few pixels per segment.

numba rather than numpy because a pen-drawn sketch is hundreds of segments a few pixels long:
whole-image numpy passes would cost a full image per segment, and even vectorised small windows
pay more in per-call numpy overhead than the arithmetic they do. A scalar loop over just the
pixels near each segment touches each one a handful of times and nothing else.
cache=True keeps the compiled code on disk, so only the first process on a machine pays the
compile (about a second); nogil lets threads draw in parallel.
"""

import math

import numba
import numpy as np

_BIG = 1e30


@numba.njit(cache=True, nogil=True, inline="always")
def _capsule(img, ax, ay, bx, by, r, reach, antialias, start_cap):
  """Max-combine the coverage of segment a-b (in output pixels) into img.

  Antialiased coverage is the overlap of the pixel's unit box with the stroke's cross-section
  at distance d from the segment: clip(r + 0.5 - d, 0, 1), capped at 2r so lines thinner than
  a pixel keep their true ink. Aliased coverage is 1 where d <= r.

  Pixels whose nearest point is a itself are skipped unless start_cap: the previous segment of
  the stroke ends at a and has already drawn that disc (max-combining makes this exact).
  """
  h, w = img.shape
  if not (math.isfinite(ax) and math.isfinite(ay) and math.isfinite(bx) and math.isfinite(by)):
    return
  # Window of pixel centres (x - 0.5), clamped as floats so far-off points cannot overflow ints.
  fx0 = max(min(ax, bx) - reach - 0.5, -1.0)
  fx1 = min(max(ax, bx) + reach - 0.5, float(w))
  fy0 = max(min(ay, by) - reach - 0.5, -1.0)
  fy1 = min(max(ay, by) + reach - 0.5, float(h))
  if not (fx0 <= fx1 and fy0 <= fy1):
    return
  dx = bx - ax
  dy = by - ay
  l2 = dx * dx + dy * dy
  inv_l2 = 1.0 / l2 if l2 > 0.0 else 0.0
  length = math.sqrt(l2)
  rl = reach * length
  t_lo = -rl if start_cap else 0.0
  tiny = 1e-9 * length
  # In each row the touched pixels lie in one interval of x: inside the strip
  # |-dy*px + dx*py| <= rl around the line, and between the planes dx*px + dy*py = t_lo and
  # = l2 + rl across it (p relative to a). Both bounds move linearly with the row, as c + k*py;
  # near-axis directions drop the bound instead of dividing by almost nothing (the window
  # already holds them), except an exactly vertical segment, whose cross planes bound rows.
  k_s, s_lo, s_hi = 0.0, -_BIG, _BIG
  if abs(dy) > tiny:
    k_s = dx / dy
    s_lo, s_hi = -rl / abs(dy), rl / abs(dy)
  k_a, a_lo, a_hi = 0.0, -_BIG, _BIG
  if abs(dx) > tiny:
    k_a = -dy / dx
    if dx > 0.0:
      a_lo, a_hi = t_lo / dx, (l2 + rl) / dx
    else:
      a_lo, a_hi = (l2 + rl) / dx, t_lo / dx
  elif dx == 0.0 and dy != 0.0:
    if dy > 0.0:
      fy0 = max(fy0, ay + t_lo / dy - 0.5)
      fy1 = min(fy1, ay + (l2 + rl) / dy - 0.5)
    else:
      fy0 = max(fy0, ay + (l2 + rl) / dy - 0.5)
      fy1 = min(fy1, ay + t_lo / dy - 0.5)
    if not fy0 <= fy1:
      return
  i_lo = max(int(math.ceil(fy0)), 0)
  i_hi = min(int(math.floor(fy1)), h - 1)
  win_lo = fx0 + 0.5 - ax
  win_hi = fx1 + 0.5 - ax
  reach2 = reach * reach
  peak = min(1.0, 2.0 * r)
  for i in range(i_lo, i_hi + 1):
    py = i + 0.5 - ay
    lo = max(max(s_lo + k_s * py, a_lo + k_a * py), win_lo)
    hi = min(min(s_hi + k_s * py, a_hi + k_a * py), win_hi)
    if lo > hi:
      continue
    j0 = max(int(math.ceil(lo + ax - 0.5)), 0)
    j1 = min(int(math.floor(hi + ax - 0.5)), w - 1)
    # Branch-free body: clamps and selects instead of early exits keep the loop tight.
    for j in range(j0, j1 + 1):
      px = j + 0.5 - ax
      t = min(max((px * dx + py * dy) * inv_l2, 0.0), 1.0)
      ex = px - t * dx
      ey = py - t * dy
      d2 = ex * ex + ey * ey
      if antialias:
        cov = min(max(r + 0.5 - math.sqrt(d2), 0.0), peak)
      else:
        cov = peak if d2 <= reach2 else 0.0
      img[i, j] = max(img[i, j], cov)


@numba.njit(cache=True, nogil=True)
def draw_polylines(img, pts, starts, radii, scale, ox, oy, antialias):
  """Draw every polyline into img (float32, H x W), max-combined.

  pts: (P, 2) float32 canvas points of all strokes back to back; stroke s is
  pts[starts[s]:starts[s + 1]] and has radius radii[s] in output pixels. A canvas point p
  lands at p * scale + (ox, oy) in output pixels, pixel (i, j) spanning [j, j+1) x [i, i+1).
  A one-point stroke is a dot; consecutive segments share their end discs, which makes the
  joins and caps round.
  """
  for s in range(starts.shape[0] - 1):
    a = starts[s]
    b = starts[s + 1]
    r = float(radii[s])
    if b <= a or r <= 0.0:
      continue
    reach = r + 0.5 if antialias else r
    x_prev = pts[a, 0] * scale + ox
    y_prev = pts[a, 1] * scale + oy
    if b - a == 1:
      _capsule(img, x_prev, y_prev, x_prev, y_prev, r, reach, antialias, True)
      continue
    for k in range(a + 1, b):
      x = pts[k, 0] * scale + ox
      y = pts[k, 1] * scale + oy
      _capsule(img, x_prev, y_prev, x, y, r, reach, antialias, k == a + 1)
      x_prev = x
      y_prev = y


def warm_up():
  """Compile the kernel (or load it from the disk cache) for the types rasterize passes."""
  draw_polylines(np.zeros((4, 4), np.float32), np.zeros((2, 2), np.float32),
                 np.array([0, 2], np.int64), np.ones(1, np.float32), 1.0, 0.0, 0.0, True)
