"""Region proposals from a photo's colours alone: candidate masks for the teacher to rank.

No mask, label or learned model is read: a photo is cut into regions of near-constant colour
(neighbouring pixels closer than `threshold` in RGB after a 3x3 median filter are joined),
and the candidates are each region and each region joined with the regions that touch it,
holes filled and grown by one pixel (so an object's outline comes with its fill). Regions
smaller than `min_area` or larger than `max_area` (shares of the photo) are left out; near
duplicates (IoU > 0.9) are kept once; of more than `count` candidates the `count` most compact
are kept (filled share of the bounding box x its aspect ratio: background stripes go first).

The mask-free segmenter's optional proposal term (`config.proposals` of the segmenter stage)
has the frozen teacher score these candidates against each query and trains on the best: the
teacher picks among masks instead of having to be climbed by gradient alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sketchseg_jax.errors import UserError

DEFAULTS = dict(count=12, threshold=20.0, min_area=0.004, max_area=0.4)


# Paeth's median-of-9 exchange network: after these 19 (min, max) exchanges the fifth value is
# the median.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3x3(image: np.ndarray) -> np.ndarray:
  """(H, W, C) per-channel 3x3 median, edges mirrored: scipy's
  ndimage.median_filter(image, size=(3, 3, 1)) exactly, about 20x faster on a 96 px photo
  (it ran every training sample's region cut)."""
  x = np.asarray(image)
  h, w = x.shape[:2]
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
  v = [padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
  for i, j in _MEDIAN9:
    v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
  return v[4]


def colour_regions(image: np.ndarray, threshold: float) -> np.ndarray:
  """(H, W) region ids of an (H, W, 3) image: 4-connected components of pixels whose
  median-filtered colours differ by less than `threshold` (RGB, 0-255)."""
  h, w = image.shape[:2]
  x = median3x3(image).astype(np.float32)
  ids = np.arange(h * w).reshape(h, w)
  rows, cols = [], []
  for a, b, xa, xb in ((ids[:, :-1], ids[:, 1:], x[:, :-1], x[:, 1:]),
                       (ids[:-1], ids[1:], x[:-1], x[1:])):
    close = np.sum(np.square(xa - xb), axis=-1) < threshold ** 2
    rows.append(a[close])
    cols.append(b[close])
  r, c = np.concatenate(rows), np.concatenate(cols)
  graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(h * w, h * w))
  return connected_components(graph, directed=False)[1].reshape(h, w)


def region_mean(values: np.ndarray, regions: np.ndarray) -> np.ndarray:
  """(..., H, W) values averaged over each of the (H, W) regions (ids as colour_regions
  gives them): numpy's twin of sketchseg_jax.models.segmenter.pool_over_regions."""
  values = np.asarray(values, np.float32)
  ids = np.asarray(regions).ravel()
  n = int(ids.max()) + 1
  count = np.bincount(ids, minlength=n).astype(np.float32)
  flat = values.reshape(-1, ids.size)
  out = np.stack([np.bincount(ids, v, minlength=n).astype(np.float32)[ids] / count[ids]
                  for v in flat])
  return out.reshape(values.shape)


def _touching(regions: np.ndarray, n: int) -> list:
  """For each region id, the set of ids within two pixels of it (outlines sit between)."""
  near = [set() for _ in range(n)]
  for dy, dx in ((0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, -1)):
    h, w = regions.shape
    a = regions[:h - dy, max(0, -dx):w - max(0, dx)]
    b = regions[dy:, max(0, dx):][:a.shape[0], :a.shape[1]]
    differ = a != b
    for i, j in set(zip(a[differ].tolist(), b[differ].tolist())):
      near[i].add(j)
      near[j].add(i)
  return near


def _compactness(mask: np.ndarray) -> float:
  """Share of its bounding box the mask fills x the box's short side / long side: near 1 for
  a blob, near 0 for a stripe of the background or a thin diagonal."""
  ys, xs = np.nonzero(mask)
  h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
  return float(len(ys) / (h * w) * min(h, w) / max(h, w))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
  """The mask with every background component that does not touch the border filled."""
  background, n = ndimage.label(~mask)
  border = np.unique(np.concatenate([background[0], background[-1], background[:, 0],
                                     background[:, -1]]))
  return mask | ~np.isin(background, border)


def check_settings(count, threshold, min_area, max_area) -> None:
  """UserError unless these are usable region_proposals settings (checked where a config is
  read, so a bad one fails there and not inside a data worker)."""
  if count < 1 or threshold <= 0 or not 0 <= min_area < max_area <= 1:
    raise UserError("proposals need count >= 1, threshold > 0 and 0 <= min_area < max_area "
                    f"<= 1, got {count}, {threshold}, {min_area}, {max_area}")


def region_proposals(image, count: int = 12, threshold: float = 20.0, min_area: float = 0.004,
                     max_area: float = 0.4) -> tuple:
  """((count, H, W) bool candidate masks, (count,) bool valid) of an (H, W, 3) uint8 image;
  the unused slots are all False and not valid."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise UserError(f"region proposals need an (H, W, 3) photo, got shape {image.shape}")
  check_settings(count, threshold, min_area, max_area)
  h, w = image.shape[:2]
  regions = colour_regions(image, threshold)
  n = int(regions.max()) + 1
  area = np.bincount(regions.ravel(), minlength=n) / (h * w)
  kept = [int(k) for k in np.flatnonzero((area >= min_area) & (area <= max_area))]
  near = _touching(regions, n)
  kept_set = set(kept)
  candidates = []
  for k in kept:
    own = regions == k
    candidates.append(own)
    joined = np.isin(regions, [k] + sorted(near[k] & kept_set))
    if joined.sum() > own.sum():
      candidates.append(ndimage.binary_closing(joined))
  if not candidates:
    return np.zeros((count, h, w), bool), np.zeros(count, bool)
  grown = np.stack([ndimage.binary_dilation(_fill_holes(m)) for m in candidates])
  sizes = grown.mean(axis=(1, 2))
  flat = grown.reshape(len(grown), -1).astype(np.float32)
  inter = flat @ flat.T
  union = sizes[:, None] * (h * w) + sizes[None, :] * (h * w) - inter
  keep = []
  for i in np.flatnonzero((sizes >= min_area) & (sizes <= max_area)):
    if not any(inter[i, j] > 0.9 * union[i, j] for j in keep):
      keep.append(i)
  if len(keep) > count:
    keep = sorted(keep, key=lambda i: -_compactness(grown[i]))[:count]
  masks = [grown[i] for i in keep]
  out = np.zeros((count, h, w), bool)
  valid = np.zeros(count, bool)
  if masks:
    out[:len(masks)] = np.stack(masks)
    valid[:len(masks)] = True
  return out, valid
