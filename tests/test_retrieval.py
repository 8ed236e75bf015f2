"""Retrieval metrics against hand-computed cases and a brute-force reference written with loops."""

import math

import numpy as np
import pytest

from sketchseg_jax.errors import UserError
from sketchseg_jax.evaluate.retrieval import paired_keeps, retrieval_metrics


def reference(query, gallery, positive, query_labels, gallery_labels, ks):
  """The definitions, one query and one item at a time."""
  def unit(v):
    n = math.sqrt(sum(float(x) * float(x) for x in v))
    return [float(x) / n if n > 0 else 0.0 for x in v]

  def cos(a, b):
    # On the implementation's grid of 2^-24, so cosines equal up to rounding tie.
    return round(sum(x * y for x, y in zip(a, b)) * 2 ** 24)

  gallery = [unit(v) for v in gallery]
  ranks, aps = [], []
  for qi, qv in enumerate(query):
    qv = unit(qv)
    sims = [cos(qv, gv) for gv in gallery]
    p = int(positive[qi])
    if p >= 0:
      ranks.append(1 + sum(1 for j, s in enumerate(sims) if j != p and s >= sims[p]))
    relevant = [gallery_labels[j] == query_labels[qi] for j in range(len(gallery))]
    if any(relevant):
      # Worst order the scores allow: higher similarity first, non-relevant first among equals.
      order = sorted(range(len(gallery)), key=lambda j: (-sims[j], relevant[j]))
      hits, precisions = 0, []
      for position, j in enumerate(order, start=1):
        if relevant[j]:
          hits += 1
          precisions.append(hits / position)
      aps.append(sum(precisions) / len(precisions))
  out = {f"acc@{k}": (sum(r <= k for r in ranks) / len(ranks) if ranks else None) for k in ks}
  out["mAP@all"] = sum(aps) / len(aps) if aps else None
  return out


def tied_problem(seed, num_gallery=23, num_query=17, dim=5, num_labels=4):
  """Random small-integer embeddings with duplicated and rescaled gallery rows (exact ties),
  queries that copy gallery rows, photos missing for some queries."""
  rng = np.random.default_rng(seed)
  gallery = rng.integers(-2, 3, size=(num_gallery, dim)).astype(np.float32)
  gallery[5] = gallery[3]
  gallery[7] = 2 * gallery[3]
  gallery[11] = gallery[2]
  gallery[0] = 0.0
  query = rng.integers(-2, 3, size=(num_query, dim)).astype(np.float32)
  query[:4] = gallery[[3, 2, 9, 0]]
  positive = rng.integers(0, num_gallery, size=num_query)
  positive[:3] = [5, 11, 9]
  positive[rng.random(num_query) < 0.2] = -1
  gallery_labels = rng.integers(0, num_labels, size=num_gallery)
  query_labels = rng.integers(0, num_labels + 1, size=num_query)  # the extra label has no items
  return query, gallery, positive, query_labels, gallery_labels


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_brute_force_reference_with_ties(seed):
  problem = tied_problem(seed)
  ks = (1, 2, 5, 10)
  got = retrieval_metrics(*problem, ks=ks, chunk=4)
  want = reference(*problem, ks)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-12), key
  q, g, positive, q_labels, g_labels = problem
  assert got["gallery_size"] == len(g) and got["num_queries"] == len(q)
  assert got["num_queries_with_photo"] == int(np.sum(positive >= 0))
  assert got["num_queries_with_category"] == sum(int(np.any(g_labels == l)) for l in q_labels)


def test_chunking_does_not_change_the_result():
  problem = tied_problem(11, num_gallery=40, num_query=33)
  results = [retrieval_metrics(*problem, chunk=c) for c in (1, 7, 33, None)]
  assert all(r == results[0] for r in results[1:])


def test_gallery_groups_rank_each_query_in_its_own_gallery_only():
  # Two independent problems evaluated at once score what each scores alone, pooled over the
  # queries; the other gallery's items neither outrank a photo nor count as relevant.
  a = tied_problem(3, num_gallery=20, num_query=15)
  b = tied_problem(4, num_gallery=20, num_query=15)
  shifted = (b[0], b[1], np.where(b[2] >= 0, b[2] + 20, -1), b[3], b[4])
  both = [np.concatenate([x, y]) for x, y in zip(a, shifted)]
  groups = dict(query_groups=np.repeat([7, 9], 15), gallery_groups=np.repeat([7, 9], 20))
  got, ranks = retrieval_metrics(*both, ks=(1, 5), return_ranks=True, chunk=4, **groups)
  alone = [retrieval_metrics(*p, ks=(1, 5), return_ranks=True) for p in (a, b)]
  np.testing.assert_array_equal(ranks, np.concatenate([alone[0][1], alone[1][1]]))
  for key in ("acc@1", "acc@5"):
    n = [m["num_queries_with_photo"] for m, _ in alone]
    want = sum(m[key] * k for (m, _), k in zip(alone, n)) / sum(n)
    assert got[key] == pytest.approx(want, abs=1e-12), key
  n = [m["num_queries_with_category"] for m, _ in alone]
  want = sum(m["mAP@all"] * k for (m, _), k in zip(alone, n)) / sum(n)
  assert got["mAP@all"] == pytest.approx(want, abs=1e-12)
  assert got["gallery_size"] == 20 and got["galleries"] == 2 and got["num_queries"] == 30


def test_gallery_groups_must_come_together_and_hold_each_querys_photo():
  q, g, positive, q_labels, g_labels = tied_problem(5, num_gallery=12, num_query=6)
  with pytest.raises(UserError, match="give both or neither"):
    retrieval_metrics(q, g, positive, q_labels, g_labels, query_groups=np.zeros(6, int))
  positive = np.arange(6)
  with pytest.raises(UserError, match="query 0 is in group 1 but its photo"):
    retrieval_metrics(q, g, positive, q_labels, g_labels, query_groups=np.ones(6, int),
                      gallery_groups=np.zeros(12, int))
  with pytest.raises(UserError, match="query_groups must have shape"):
    retrieval_metrics(q, g, positive, q_labels, g_labels, query_groups=np.ones(5, int),
                      gallery_groups=np.zeros(12, int))


def test_perfect_retrieval_scores_one():
  g = np.eye(12, 16) + 0.01
  got = retrieval_metrics(g * 3.0, g, np.arange(12), np.arange(12), np.arange(12))
  assert got == {"acc@1": 1.0, "acc@5": 1.0, "acc@10": 1.0, "mAP@all": 1.0, "gallery_size": 12,
                 "galleries": 1, "num_queries": 12, "num_queries_with_photo": 12,
                 "num_queries_with_category": 12}


def test_reversed_retrieval_ranks_every_photo_last():
  # Each sketch points away from its own photo: cosine -1 there, 0 (tied) everywhere else.
  g = np.eye(12)
  got = retrieval_metrics(-g, g, np.arange(12), np.arange(12), np.arange(12), ks=(1, 5, 10, 12))
  assert got["acc@1"] == got["acc@5"] == got["acc@10"] == 0.0
  assert got["acc@12"] == 1.0
  assert got["mAP@all"] == pytest.approx(1 / 12)


def half_circle(n):
  """n unit vectors at 0, 15, 30, ... degrees: cosine to (1, 0) strictly decreasing."""
  angles = np.deg2rad(15.0 * np.arange(n))
  return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_acc_at_k_from_known_ranks():
  g = half_circle(12)
  q = np.tile([[1.0, 0.0]], (5, 1))
  positive = np.array([0, 4, 9, 11, -1])  # ranks 1, 5, 10, 12; the last has no photo
  got = retrieval_metrics(q, g, positive, np.zeros(5), np.zeros(12))
  assert (got["acc@1"], got["acc@5"], got["acc@10"]) == (0.25, 0.5, 0.75)
  assert got["num_queries_with_photo"] == 4
  assert got["mAP@all"] == 1.0  # everything is relevant


def test_average_precision_of_a_known_ranking():
  g = half_circle(4)
  labels = np.array(["cat", "dog", "cat", "dog"])  # relevant at ranks 1 and 3 of 4
  got = retrieval_metrics([[1.0, 0.0]], g, [-1], ["cat"], labels)
  assert got["mAP@all"] == pytest.approx((1 + 2 / 3) / 2)
  assert got["acc@1"] is None and got["num_queries_with_photo"] == 0


def test_ties_count_against_the_model():
  # All ten gallery items identical: the photo ranks last, relevant items come after the rest.
  g = np.ones((10, 3))
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
  got = retrieval_metrics(np.ones((1, 3)), g, [2], [0], labels, ks=(1, 9, 10))
  assert (got["acc@1"], got["acc@9"], got["acc@10"]) == (0.0, 0.0, 1.0)
  assert got["mAP@all"] == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 3)


def test_queries_without_relevant_items_are_left_out_of_map():
  g = half_circle(4)
  got = retrieval_metrics([[1.0, 0.0], [1.0, 0.0]], g, [0, 1], [7, 0], [0, 1, 0, 1])
  assert got["mAP@all"] == pytest.approx((1 + 2 / 3) / 2)
  assert got["num_queries_with_category"] == 1
  assert got["acc@1"] == 0.5
  none = retrieval_metrics([[1.0, 0.0]], g, [0], [7], [0, 1, 0, 1])
  assert none["mAP@all"] is None and none["num_queries_with_category"] == 0


def test_zero_vectors_are_orthogonal_to_everything():
  g = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
  got = retrieval_metrics([[1.0, 0.0]], g, [1], [0], [1, 1, 1], ks=(1, 2))
  assert (got["acc@1"], got["acc@2"]) == (0.0, 1.0)


@pytest.mark.parametrize("args, message", [
    ((np.ones((2, 3)), np.ones((4, 5)), [0, 1], [0, 0], [0] * 4), "dimension 3 but"),
    ((np.ones((0, 3)), np.ones((4, 3)), [], [], [0] * 4), "query_emb is empty"),
    ((np.ones((2, 3)), np.ones((0, 3)), [0, 1], [0, 0], []), "gallery_emb is empty"),
    ((np.ones(3), np.ones((4, 3)), [0], [0], [0] * 4), "2-D"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0, 4], [0, 0], [0] * 4), "positive[1] = 4"),
    ((np.ones((2, 3)), np.ones((4, 3)), [-2, 0], [0, 0], [0] * 4), "positive[0] = -2"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0.0, 1.0], [0, 0], [0] * 4), "integer gallery indices"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0, 1, 2], [0, 0], [0] * 4), "positive must have shape"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0, 1], [0], [0] * 4), "query_labels must have shape"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0, 1], [0, 0], [0] * 3), "gallery_labels must have"),
    ((np.full((2, 3), np.nan), np.ones((4, 3)), [0, 1], [0, 0], [0] * 4), "non-finite"),
    ((np.ones((2, 3)), np.ones((4, 3)), [0, 1], [0, 0], ["a"] * 4), "cannot be compared"),
])
def test_bad_inputs_raise_clear_user_errors(args, message):
  with pytest.raises(UserError) as e:
    retrieval_metrics(*args)
  assert message in str(e.value)


def test_bad_ks():
  with pytest.raises(UserError, match="ks must be positive"):
    retrieval_metrics(np.ones((1, 2)), np.ones((2, 2)), [0], [0], [0, 0], ks=(0, 1))


def test_return_ranks_gives_each_querys_rank_and_zero_without_photo():
  g = half_circle(12)
  q = np.tile([[1.0, 0.0]], (5, 1))
  got, ranks = retrieval_metrics(q, g, [0, 4, 9, 11, -1], np.zeros(5), np.zeros(12),
                                 return_ranks=True)
  assert ranks.tolist() == [1, 5, 10, 12, 0]
  assert got["acc@5"] == 0.5


def test_paired_keeps_counts_and_interval():
  # 40 queries with a photo (the last has none): the reference finds 20 in its top 5, the
  # candidate 16 of those and 2 others.
  ref = np.array([1] * 20 + [9] * 20 + [0])
  cand = np.array([3] * 16 + [7] * 4 + [5] * 2 + [6] * 18 + [0])
  got = paired_keeps(ref, cand, k=5)
  assert got["keeps"] == pytest.approx(18 / 20)
  assert (got["hits_both"], got["hits_reference_only"], got["hits_candidate_only"]) == (16, 4, 2)
  assert got["queries"] == 40
  assert got["keeps_low"] < got["keeps"] < got["keeps_high"]
  assert 0.6 < got["keeps_low"] and got["keeps_high"] < 1.2
  # A candidate that finds exactly the reference's hits keeps 1 with no doubt at all.
  same = paired_keeps(ref, ref, k=5)
  assert same["keeps"] == same["keeps_low"] == same["keeps_high"] == 1.0
  # Same seed, same interval.
  assert paired_keeps(ref, cand, k=5) == got


def test_paired_keeps_without_reference_hits_and_bad_inputs():
  got = paired_keeps(np.array([9, 9]), np.array([1, 9]))
  assert np.isnan(got["keeps"]) and np.isnan(got["keeps_low"])
  with pytest.raises(UserError, match="disagree on which queries"):
    paired_keeps(np.array([1, 0]), np.array([1, 2]))
  with pytest.raises(UserError, match="candidate_ranks must have shape"):
    paired_keeps(np.array([1, 2]), np.array([1]))
  with pytest.raises(UserError, match="level"):
    paired_keeps(np.array([1, 2]), np.array([1, 2]), level=1.5)
