"""Sketch-based image retrieval metrics: fine-grained acc@k and category mAP@all.

Exact (every query is ranked against the whole gallery) and numpy only. Queries are handled
in chunks so memory stays at about `chunk x gallery` similarities whatever the query count.

Ties are resolved against the model, so a collapsed model that maps everything to one point
scores the worst it could, not a lucky average:
- acc@k: the rank of a query's own photo is 1 + the number of other gallery items whose
  similarity is >= the photo's.
- mAP@all: average precision of the worst ordering the similarities allow, i.e. within a
  group of equal similarities the non-relevant items come first.
Similarities are computed in float64 and compared after rounding to a fixed grid of 2^-24
(float32 resolution near 1), so cosines equal up to rounding error (a vector and its
multiple, orthogonal pairs whose dot product comes out as +-1e-17) count as ties.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sketchseg_jax.errors import UserError

# Similarities held at once per chunk (float64 + float32 + int64 sort order: ~20 bytes each).
_CHUNK_ELEMENTS = 1 << 20
# Similarities become integers in units of 2^-24: exact in float32, ties robust to rounding.
_GRID = float(1 << 24)


def _embeddings(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 2:
    raise UserError(f"{name} must be a 2-D (count, dim) array, got shape {a.shape}")
  if a.shape[0] == 0 or a.shape[1] == 0:
    raise UserError(f"{name} is empty (shape {a.shape})")
  if not np.issubdtype(a.dtype, np.number):
    raise UserError(f"{name} must be numeric, got dtype {a.dtype}")
  a = a.astype(np.float64)
  if not np.all(np.isfinite(a)):
    bad = int(np.flatnonzero(~np.all(np.isfinite(a), axis=1))[0])
    raise UserError(f"{name} row {bad} has a non-finite value")
  norms = np.linalg.norm(a, axis=1, keepdims=True)
  # A zero vector has cosine 0 with everything rather than NaN.
  return a / np.where(norms > 0, norms, 1.0)


def _vector(x, name: str, length: int) -> np.ndarray:
  a = np.asarray(x)
  if a.shape != (length,):
    raise UserError(f"{name} must have shape ({length},), got {a.shape}")
  return a


def _same_label(q_labels: np.ndarray, g_labels: np.ndarray) -> np.ndarray:
  textual = {a.dtype.kind in "US" for a in (q_labels, g_labels) if a.dtype.kind != "O"}
  same = np.asarray(q_labels[:, None] == g_labels[None, :])
  # numpy compares numbers with strings as all-unequal, which would silently empty mAP@all.
  if len(textual) > 1 or same.shape != (q_labels.shape[0], g_labels.shape[0]):
    raise UserError(f"query_labels ({q_labels.dtype}) and gallery_labels ({g_labels.dtype}) "
                    "cannot be compared")
  return same.astype(bool)


def average_precision_worst(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """(n,) AP of each row over the whole ranking, ties ordered non-relevant first; NaN for a
  row with no relevant item. similarity and relevant are (n, G)."""
  # lexsort's last key is the primary one: similarity descending, then relevant last.
  order = np.lexsort((relevant, -similarity), axis=-1)
  hits = np.take_along_axis(relevant, order, axis=-1)
  found = np.cumsum(hits, axis=-1, dtype=np.int64)
  positions = np.arange(1, similarity.shape[-1] + 1, dtype=np.float64)
  total = found[:, -1]
  precision_sum = np.sum(np.where(hits, found / positions, 0.0), axis=-1)
  return np.where(total > 0, precision_sum / np.maximum(total, 1), np.nan)


def retrieval_metrics(query_emb, gallery_emb, positive, query_labels, gallery_labels,
                      ks: Sequence[int] = (1, 5, 10), chunk: Optional[int] = None,
                      return_ranks: bool = False, query_groups=None, gallery_groups=None):
  """Retrieval of gallery items by queries under cosine similarity.

  query_emb (Q, E), gallery_emb (G, E): embeddings (normalised here).
  positive (Q,): index in the gallery of each query's own photo, -1 for none (left out of
    acc@k).
  query_labels (Q,), gallery_labels (G,): categories (any comparable values); an item is
    relevant to a query when their labels are equal. Queries without any relevant item are
    left out of mAP@all.
  chunk: queries ranked at once (default: bounded by the gallery size).
  query_groups (Q,), gallery_groups (G,): several independent galleries evaluated at once (a
    query is ranked only against the gallery items of its own group; a query's photo must be
    in its group). Many small galleries give as many queries as one large one at the small
    gallery's difficulty, so their metrics have far narrower intervals.

  Returns {"acc@k" for each k, "mAP@all", "gallery_size" (with groups: the mean size of a
  group), "galleries" (the number of groups), "num_queries", "num_queries_with_photo",
  "num_queries_with_category"}; a metric with no query to average over is None. acc@k with k
  at least the gallery's size is 1.0 for every query that has a photo. With return_ranks,
  (that dict, ranks): the (Q,) rank of each query's own photo (1 = first), 0 where it has none.
  """
  q = _embeddings(query_emb, "query_emb")
  g = _embeddings(gallery_emb, "gallery_emb")
  if q.shape[1] != g.shape[1]:
    raise UserError(f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
  num_q, num_g = q.shape[0], g.shape[0]
  pos = _vector(positive, "positive", num_q)
  if not np.issubdtype(pos.dtype, np.integer):
    raise UserError(f"positive must hold integer gallery indices, got dtype {pos.dtype}")
  pos = pos.astype(np.int64)
  out_of_range = (pos < -1) | (pos >= num_g)
  if out_of_range.any():
    i = int(np.flatnonzero(out_of_range)[0])
    raise UserError(f"positive[{i}] = {pos[i]} is not a gallery index in [0, {num_g}) or -1")
  q_labels = _vector(query_labels, "query_labels", num_q)
  g_labels = _vector(gallery_labels, "gallery_labels", num_g)
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise UserError(f"ks must be positive integers, got {ks}")
  if (query_groups is None) != (gallery_groups is None):
    raise UserError("query_groups and gallery_groups go together: give both or neither")
  if query_groups is None:
    q_groups, g_groups = np.zeros(num_q, np.int64), np.zeros(num_g, np.int64)
  else:
    q_groups = _vector(query_groups, "query_groups", num_q)
    g_groups = _vector(gallery_groups, "gallery_groups", num_g)
    outside = (pos >= 0) & (q_groups != g_groups[np.maximum(pos, 0)])
    if outside.any():
      i = int(np.flatnonzero(outside)[0])
      raise UserError(f"query {i} is in group {q_groups[i]} but its photo (gallery item "
                      f"{pos[i]}) is in group {g_groups[pos[i]]}")
  num_groups = len(np.unique(g_groups))
  if chunk is None:
    chunk = max(1, _CHUNK_ELEMENTS // num_g)
  chunk = max(1, int(chunk))

  ranks = np.zeros(num_q, dtype=np.int64)
  ap = np.full(num_q, np.nan)
  for start in range(0, num_q, chunk):
    stop = min(start + chunk, num_q)
    sim = np.rint((q[start:stop] @ g.T) * _GRID).astype(np.float32)
    other = q_groups[start:stop, None] != g_groups[None, :]
    # Other galleries' items rank below every item of the query's own and are never relevant.
    sim[other] = -np.inf
    p = pos[start:stop]
    has = p >= 0
    if has.any():
      rows = np.flatnonzero(has)
      own = sim[rows, p[rows]]
      # Counts the photo itself once, so this is already 1 + the others at >= its similarity.
      ranks[start + rows] = np.sum(sim[rows] >= own[:, None], axis=1)
    relevant = _same_label(q_labels[start:stop], g_labels) & ~other
    ap[start:stop] = average_precision_worst(sim, relevant)

  has_photo = pos >= 0
  has_category = ~np.isnan(ap)
  out = {}
  for k in ks:
    out[f"acc@{k}"] = float(np.mean(ranks[has_photo] <= k)) if has_photo.any() else None
  out["mAP@all"] = float(np.mean(ap[has_category])) if has_category.any() else None
  out["gallery_size"] = int(round(num_g / num_groups))
  out["galleries"] = int(num_groups)
  out["num_queries"] = int(num_q)
  out["num_queries_with_photo"] = int(has_photo.sum())
  out["num_queries_with_category"] = int(has_category.sum())
  return (out, ranks) if return_ranks else out


def paired_keeps(reference_ranks, candidate_ranks, k: int = 5, resamples: int = 2000,
                 level: float = 0.9, seed: int = 0) -> dict:
  """How much of a reference model's acc@k a candidate keeps, on the same queries, with a
  paired bootstrap interval (queries resampled with replacement, both models together).

  The ranks are retrieval_metrics' (0: the query has no photo, left out). Returns {"keeps":
  candidate hits / reference hits, "keeps_low", "keeps_high": the central `level` interval,
  "hits_both", "hits_reference_only", "hits_candidate_only", "queries"}; the ratios are NaN
  when the reference has no hit.
  """
  ref = np.asarray(reference_ranks)
  if ref.ndim != 1:
    raise UserError(f"reference_ranks must be a 1-D array, got shape {ref.shape}")
  cand = _vector(candidate_ranks, "candidate_ranks", ref.shape[0])
  if not 0 < level < 1:
    raise UserError(f"level must be in (0, 1), got {level}")
  has = ref > 0
  if not np.array_equal(has, cand > 0):
    raise UserError("reference_ranks and candidate_ranks disagree on which queries have a photo")
  r_hit, c_hit = ref[has] <= k, cand[has] <= k
  n = int(has.sum())
  out = {"keeps": float(c_hit.sum() / r_hit.sum()) if r_hit.any() else float("nan"),
         "keeps_low": float("nan"), "keeps_high": float("nan"),
         "hits_both": int(np.sum(r_hit & c_hit)),
         "hits_reference_only": int(np.sum(r_hit & ~c_hit)),
         "hits_candidate_only": int(np.sum(c_hit & ~r_hit)), "queries": n}
  if r_hit.any():
    rng = np.random.default_rng(seed)
    ratios = []
    # A resample only needs how many times each query is drawn: multinomial counts, in
    # chunks so memory stays at chunk x queries.
    for start in range(0, resamples, 256):
      counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(256, resamples - start))
      r, c = counts @ r_hit, counts @ c_hit
      ratios.append(np.where(r > 0, c / np.maximum(r, 1), np.nan))
    ratios = np.concatenate(ratios)
    tail = 100 * (1 - level) / 2
    out["keeps_low"], out["keeps_high"] = (float(x) for x in
                                           np.nanpercentile(ratios, [tail, 100 - tail]))
  return out
