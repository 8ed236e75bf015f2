"""Augmentations: invariants of each, ground truth kept true, determinism in and across
processes, and chains built from config lists."""

import multiprocessing
import pickle

import numpy as np
import pytest

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch import augment as A
from sketchseg_jax.sketch.augment.clip import clip_polyline, clip_sketch
from sketchseg_jax.sketch.augment.sample import region_pixel_mask
from sketchseg_jax.sketch.types import Sketch, StrokeLabel


# ----------------------------------------------------------------------------- fixtures

def two_object_sample(aligned=True):
  """A 60x40 photo, object 0 (with a 'head' part) on the left half, object 1 on the right.

  The sketch canvas is 120x80 (twice the photo), one stroke per label; stroke i carries
  object_id/part as set below, the target is both objects.
  """
  h, w = 40, 60
  rng = np.random.default_rng(123)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  masks = np.zeros((3, h, w), bool)
  masks[0, 5:35, 5:25] = True     # object 0, whole
  masks[1, 5:15, 5:25] = True     # object 0, head
  masks[2, 10:30, 35:55] = True   # object 1, whole
  info = [{"object_id": 0, "part": "", "category": "cat"},
          {"object_id": 0, "part": "head", "category": "cat"},
          {"object_id": 1, "part": "", "category": "dog"}]
  strokes = [
      [[12, 12], [48, 12], [48, 28], [12, 28]],         # head of object 0
      [[12, 30], [12, 68], [48, 68], [48, 30]],         # body of object 0
      [[72, 22], [108, 22], [108, 58], [72, 58], [72, 22]],  # object 1
      [[90, 30], [95, 40], [85, 50]],                   # object 1 detail
  ]
  labels = [StrokeLabel(0, "cat", "head"), StrokeLabel(0, "cat", ""),
            StrokeLabel(1, "dog", ""), StrokeLabel(1, "dog", "")]
  sketch = Sketch(strokes, (120, 80), labels=labels,
                  times=[np.arange(len(s), dtype=np.float32) for s in strokes])
  return {"sketch": sketch, "image": image, "masks": masks, "mask_info": info,
          "aligned": aligned, "target": masks[0] | masks[2]}


def wiggly_sketch(n_strokes=12, seed=0, canvas=(200, 150)):
  rng = np.random.default_rng(seed)
  strokes = []
  for _ in range(n_strokes):
    start = rng.uniform([10, 10], [canvas[0] - 10, canvas[1] - 10])
    steps = rng.normal(0, 6, size=(int(rng.integers(2, 30)), 2))
    strokes.append(np.clip(start + np.cumsum(steps, axis=0), 0, canvas))
  labels = [StrokeLabel(i, "thing", f"p{i}") for i in range(n_strokes)]
  return Sketch(strokes, canvas, labels=labels)


def same(a, b):
  """Bitwise equality of samples (dicts of arrays, Sketches, lists, scalars)."""
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)):
    return (isinstance(b, (list, tuple)) and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b)))
  if isinstance(a, np.ndarray):
    return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and a.tobytes() == b.tobytes())
  return bool(a == b)


def point_segment_distance(p, poly):
  """Distance from each point of p (N, 2) to the polyline poly (M, 2)."""
  if len(poly) == 1:
    return np.linalg.norm(p - poly[0], axis=1)
  a, b = poly[:-1][None], poly[1:][None]
  ab = b - a
  t = np.clip(((p[:, None] - a) * ab).sum(-1) / np.maximum((ab ** 2).sum(-1), 1e-12), 0, 1)
  return np.linalg.norm(p[:, None] - (a + t[..., None] * ab), axis=-1).min(axis=1)


def assert_pieces_on_sources(part, original):
  """Every piece lies on the stroke its label names (labels unique per stroke here)."""
  by_label = {lab: s for lab, s in zip(original.labels, original.strokes)}
  for lab, piece in zip(part.labels, part.strokes):
    assert lab in by_label
    d = point_segment_distance(piece.astype(np.float64), by_label[lab].astype(np.float64))
    assert d.max() < 1e-3


# ----------------------------------------------------------------------------- clipping

def test_clip_splits_a_stroke_that_leaves_and_comes_back():
  pts = np.array([[5, 5], [15, 5], [15, 8], [5, 8]], float)
  pieces = clip_polyline(pts, (0, 0, 10, 10), [np.array([0.0, 1.0, 2.0, 3.0])])
  assert len(pieces) == 2
  np.testing.assert_allclose(pieces[0][0], [[5, 5], [10, 5]])
  np.testing.assert_allclose(pieces[1][0], [[10, 8], [5, 8]])
  np.testing.assert_allclose(pieces[0][1][0], [0.0, 0.5])
  np.testing.assert_allclose(pieces[1][1][0], [2.5, 3.0])


def test_clip_random_polylines_stay_inside_and_keep_inside_length():
  rng = np.random.default_rng(7)
  for _ in range(150):
    pts = rng.uniform(-20, 120, size=(int(rng.integers(1, 25)), 2))
    if rng.random() < 0.3:
      pts[:, 1] = pts[0, 1]  # axis-parallel segments
    x0, y0 = rng.uniform(0, 60, 2)
    rect = (x0, y0, x0 + rng.uniform(1, 60), y0 + rng.uniform(1, 60))
    pieces = clip_polyline(pts, rect)
    for piece, _ in pieces:
      assert np.all(piece[:, 0] >= rect[0]) and np.all(piece[:, 0] <= rect[2])
      assert np.all(piece[:, 1] >= rect[1]) and np.all(piece[:, 1] <= rect[3])
      assert point_segment_distance(piece, pts).max() < 1e-9
    # Length inside the rectangle, measured by dense sampling of each segment.
    t = np.linspace(0, 1, 4001)[:, None, None]
    dense = pts[:-1][None] + t * (pts[1:] - pts[:-1])[None]
    inside = ((dense[..., 0] >= rect[0]) & (dense[..., 0] <= rect[2])
              & (dense[..., 1] >= rect[1]) & (dense[..., 1] <= rect[3]))
    seg_len = np.linalg.norm(pts[1:] - pts[:-1], axis=1)
    expected = (inside.mean(axis=0) * seg_len).sum() if len(pts) > 1 else 0.0
    got = sum(np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p, _ in pieces)
    assert got == pytest.approx(expected, abs=0.05 + 0.002 * seg_len.sum())


def test_clip_sketch_matches_stroke_by_stroke_clipping():
  rng = np.random.default_rng(11)
  strokes = [rng.uniform(0, 100, size=(int(rng.integers(1, 12)), 2)) for _ in range(30)]
  strokes += [[[50, 50], [60, 60]], [[60, 60], [70, 50]]]  # end-to-start: still two strokes
  sk = Sketch(strokes, (100, 100), pressures=[rng.uniform(0, 1, len(s)) for s in strokes])
  rect = (20, 25, 80, 70)
  part, source = clip_sketch(sk, rect)
  expected, expected_source = [], []
  for i, (s, p) in enumerate(zip(sk.strokes, sk.pressures)):
    for pts, (pres,) in clip_polyline(s, rect, [p]):
      expected.append((pts, pres))
      expected_source.append(i)
  assert source == expected_source
  assert any(len(s) == 1 for s in part.strokes)
  for got, got_p, (pts, pres) in zip(part.strokes, part.pressures, expected):
    np.testing.assert_allclose(got, pts, atol=1e-4)
    np.testing.assert_allclose(got_p, pres, atol=1e-6)
  assert source[-2:] == [30, 31]


def test_clip_sketch_keeps_labels_times_and_sources():
  sk = wiggly_sketch(15, seed=3)
  times = [np.linspace(0, 1, len(s)) for s in sk.strokes]
  sk = sk.replace(times=tuple(times))
  part, source = clip_sketch(sk, (50, 40, 130, 110))
  assert part.num_strokes == len(source) > 0
  assert [sk.labels[i] for i in source] == list(part.labels)
  assert_pieces_on_sources(part, sk)
  for piece_t, i in zip(part.times, source):
    assert piece_t.min() >= 0 and piece_t.max() <= 1


# ----------------------------------------------------------------------------- partition

@pytest.mark.parametrize("mode", ["grid", "box", "cluster"])
def test_partition_keeps_points_in_region_and_labels(mode):
  sk = wiggly_sketch(14, seed=5)
  widths = np.arange(1, 15, dtype=np.float32)
  for seed in range(12):
    out = A.partition({"sketch": sk, "stroke_widths": widths}, seed, mode=mode, clusters=3)
    part = out["sketch"]
    x0, y0, x1, y1 = out["region"]
    assert part.num_strokes > 0
    pts = np.concatenate(part.strokes)
    eps = 1e-3
    assert pts[:, 0].min() >= x0 - eps and pts[:, 0].max() <= x1 + eps
    assert pts[:, 1].min() >= y0 - eps and pts[:, 1].max() <= y1 + eps
    assert_pieces_on_sources(part, sk)
    # Per-stroke widths follow their strokes (stroke i has label p{i} and width i + 1).
    assert [w - 1 for w in out["stroke_widths"]] == [lab.object_id for lab in part.labels]
    assert part.canvas_size == sk.canvas_size


def test_partition_grid_regions_are_cell_unions_but_never_everything():
  sk = Sketch([[[0, 0], [100, 100]], [[0, 100], [100, 0]]], (100, 100))
  seen = set()
  for seed in range(60):
    out = A.partition({"sketch": sk}, seed, mode="grid", grid=2, frame="canvas")
    seen.add(out["region"])
  assert seen == {(0, 0, 50, 50), (50, 0, 100, 50), (0, 50, 50, 100), (50, 50, 100, 100),
                  (0, 0, 100, 50), (0, 50, 100, 100), (0, 0, 50, 100), (50, 0, 100, 100)}


def test_partition_cluster_keeps_one_group_of_strokes_whole():
  left = [[[10 + i, 10], [10 + i, 30]] for i in range(4)]
  right = [[[170 + i, 100], [170 + i, 130]] for i in range(3)]
  labels = [StrokeLabel(0)] * 4 + [StrokeLabel(1)] * 3
  sk = Sketch(left + right, (200, 150), labels=labels)
  kept = set()
  for seed in range(20):
    out = A.partition({"sketch": sk}, seed, mode="cluster", clusters=2)
    ids = {lab.object_id for lab in out["sketch"].labels}
    assert len(ids) == 1
    kept |= ids
    assert out["sketch"].num_strokes == (4 if ids == {0} else 3)
  assert kept == {0, 1}


def test_partition_aligned_cuts_target_and_blanks_photo_outside():
  s = two_object_sample(aligned=True)
  for seed in range(10):
    out = A.partition(s, seed, mode="box", blank_photo=True, fill=(7, 8, 9), frame="canvas")
    inside = region_pixel_mask(out["region"], s["sketch"], (40, 60))
    assert np.array_equal(out["target"], s["target"] & inside)
    assert np.all(out["image"][~inside] == [7, 8, 9])
    assert np.array_equal(out["image"][inside], s["image"][inside])
    assert not np.any(out["masks"][:, ~inside])
    assert np.array_equal(out["masks"][:, inside], s["masks"][:, inside])
  # Without blank_photo the photo and masks stay whole; the target is still cut.
  out = A.partition(s, 0, mode="box", frame="canvas")
  assert np.array_equal(out["image"], s["image"]) and np.array_equal(out["masks"], s["masks"])
  inside = region_pixel_mask(out["region"], s["sketch"], (40, 60))
  assert np.array_equal(out["target"], s["target"] & inside)


def test_partition_mean_fill_is_the_photo_mean():
  s = two_object_sample(aligned=True)
  out = A.partition(s, 1, mode="grid", blank_photo=True, frame="canvas")
  inside = region_pixel_mask(out["region"], s["sketch"], (40, 60))
  mean = np.round(s["image"].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
  assert np.all(out["image"][~inside] == mean)


def test_partition_object_centred_restricts_target_by_labels():
  s = two_object_sample(aligned=False)
  seen = set()
  for seed in range(30):
    out = A.partition(s, seed, mode="grid", grid=(2, 1), frame="canvas")
    ids = {(lab.object_id, lab.part) for lab in out["sketch"].labels}
    objects = {i for i, _ in ids}
    expected = np.zeros((40, 60), bool)
    for oid, part in ids:
      k = {(0, ""): 0, (0, "head"): 1, (1, ""): 2}[(oid, part)]
      expected |= s["masks"][k]
    assert np.array_equal(out["target"], s["target"] & expected)
    seen.add(frozenset(objects))
    # Photo and masks are untouched: the sketch is not on the photo.
    assert out["image"] is s["image"] and out["masks"] is s["masks"]
  assert {frozenset({0}), frozenset({1})} <= seen


def test_partition_drops_a_target_it_cannot_keep_true():
  s = two_object_sample(aligned=False)
  s["sketch"] = s["sketch"].replace(labels=None)
  out = A.partition(s, 0, mode="grid", grid=(2, 1), frame="canvas")
  assert out["sketch"].num_strokes < 4 or out["region"] != (0, 0, 120, 80)
  assert "target" not in out


def test_partition_falls_back_to_the_whole_sketch():
  s = two_object_sample(aligned=True)
  out = A.partition(s, 0, mode="box", min_ink=1.5, blank_photo=True)
  assert out["sketch"] == s["sketch"]
  assert out["region"] == (0.0, 0.0, 120.0, 80.0)
  assert np.array_equal(out["target"], s["target"])
  assert np.array_equal(out["image"], s["image"])


# ----------------------------------------------------------------------------- grouping

def tile_sample(colour, oid, aligned=True, hw=(30, 40)):
  h, w = hw
  image = np.zeros((h, w, 3), np.uint8) + np.uint8(colour)
  mask = np.zeros((1, h, w), bool)
  mask[0, 5:25, 10:30] = True
  # The canvas is stretched unevenly onto the photo (x 2.5, y 1.5): aligned means "maps by
  # scaling", not "same size".
  strokes = [[[10, 5], [30, 5], [30, 25], [10, 25]], [[12, 8], [28, 22], [12, 22]]]
  sketch = Sketch([np.array(st, float) * [2.5, 1.5] for st in strokes], (w * 2.5, h * 1.5),
                  labels=[StrokeLabel(oid, f"c{oid}", "")] * 2)
  return {"sketch": sketch, "image": image, "masks": mask,
          "mask_info": [{"object_id": oid, "part": "", "category": f"c{oid}"}],
          "aligned": aligned}


@pytest.mark.parametrize("overlap", [False, True])
def test_group_target_is_the_chosen_objects_masks(overlap):
  samples = [tile_sample(40 * (i + 1), 0) for i in range(4)]
  sizes = set()
  for seed in range(15):
    out = A.group(samples[: 1 + seed % 4], seed, size=(128, 96), overlap=overlap)
    n = 1 + seed % 4
    assert out["image"].shape == (96, 128, 3)
    assert out["masks"].shape == (n, 96, 128)
    assert [m["tile"] for m in out["mask_info"]] == list(range(n))
    assert sorted({m["object_id"] for m in out["mask_info"]}) == list(range(n))
    chosen = out["chosen"]
    assert 1 <= len(chosen) <= n
    union = np.any(out["masks"][chosen], axis=0)
    assert np.array_equal(out["target"], union) and union.any()
    # Target pixels show the chosen photos' colours; masks never lie under another tile.
    colours = {40 * (i + 1) for i in chosen}
    assert set(np.unique(out["image"][out["target"]][:, 0])) <= colours
    tiles = out["tiles"]
    for t, (x0, y0, x1, y1) in enumerate(tiles):
      inside = np.zeros((96, 128), bool)
      inside[y0:y1, x0:x1] = True
      assert not np.any(out["masks"][t] & ~inside)
      for later in tiles[t + 1:]:
        assert not np.any(out["masks"][t][later[1]:later[3], later[0]:later[2]])
      if not overlap:
        for other in tiles[t + 1:]:
          assert not (x0 < other[2] and other[0] < x1 and y0 < other[3] and other[1] < y1)
    sizes.add(len(chosen))
    # Aligned: the merged query's points lie in the chosen tiles, ids renumbered per tile.
    sk = out["sketch"]
    assert sk.canvas_size == (128, 96) and out["aligned"]
    assert sk.num_strokes == 2 * len(chosen)
    assert [lab.object_id for lab in sk.labels] == [i for i in chosen for _ in range(2)]
    for stroke, lab in zip(sk.strokes, sk.labels):
      x0, y0, x1, y1 = tiles[lab.object_id]
      assert np.all((stroke >= [x0, y0]) & (stroke <= [x1, y1]))
  assert len(sizes) > 1


def test_group_aligned_sketch_lands_on_its_object():
  samples = [tile_sample(50 * (i + 1), 0) for i in range(3)]
  for seed in range(8):
    out = A.group(samples, seed, size=160, query="separate")
    assert len(out["queries"]) == len(out["chosen"])
    for q in out["queries"]:
      # The diagonal stroke is drawn inside the mask; it must still be, in mosaic pixels.
      px = np.floor(q.strokes[1]).astype(int)
      oid = q.labels[1].object_id
      assert np.all(out["masks"][oid][px[:, 1].clip(0, 159), px[:, 0].clip(0, 159)])


def test_photo_augmentations_keep_a_mosaic_consistent():
  samples = [tile_sample(50 * (i + 1), 0) for i in range(3)]
  for seed in range(6):
    g = A.group(samples, seed, size=120, query="separate")
    twice = A.hflip(A.hflip(g))
    # Pixels flip exactly; fractional canvas coordinates come back up to float32 rounding.
    assert same({k: v for k, v in twice.items() if k not in ("sketch", "queries")},
                {k: v for k, v in g.items() if k not in ("sketch", "queries")})
    for a, b in zip([twice["sketch"]] + twice["queries"], [g["sketch"]] + g["queries"]):
      assert a.labels == b.labels and a.canvas_size == b.canvas_size
      np.testing.assert_allclose(np.concatenate(a.strokes), np.concatenate(b.strokes), atol=1e-4)
    for out in (A.hflip(g), A.crop(g, seed, scale=(0.3, 0.6))):
      for t, (x0, y0, x1, y1) in enumerate(out["tiles"]):
        ys, xs = np.nonzero(out["masks"][t])
        if len(xs):
          assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
      for q in out["queries"]:
        px = np.floor(q.strokes[1]).astype(int).clip(0, 119)
        assert np.all(out["masks"][q.labels[1].object_id][px[:, 1], px[:, 0]])


def test_group_object_centred_keeps_own_canvases_for_separate_queries():
  samples = [tile_sample(60, 0, aligned=False), tile_sample(120, 3, aligned=False)]
  for seed in range(6):
    out = A.group(samples, seed, size=100, query="separate", layout="random")
    assert not out["aligned"]
    for q, i in zip(out["queries"], out["chosen"]):
      assert q.canvas_size == samples[i]["sketch"].canvas_size
      assert np.array_equal(q.strokes[0], samples[i]["sketch"].strokes[0])
    assert out["sketch"].canvas_size == (100, 100)
    pts = np.concatenate(out["sketch"].strokes)
    assert pts.min() >= 0 and pts.max() <= 100
  # Object ids are renumbered across tiles: 0 and 3 become 0 and 1.
  assert {m["object_id"] for m in out["mask_info"]} == {0, 1}
  # layout="photo": each sketch sits in its photo's tile at its own aspect (not stretched).
  src = samples[0]["sketch"].strokes[0]
  src_aspect = np.ptp(src[:, 0]) / np.ptp(src[:, 1])
  for seed in range(6):
    out = A.group(samples, seed, size=100, layout="photo")
    for k, i in enumerate(out["chosen"]):
      first = out["sketch"].strokes[2 * k]
      assert np.ptp(first[:, 0]) / np.ptp(first[:, 1]) == pytest.approx(src_aspect, rel=1e-4)
      x0, y0, x1, y1 = out["tiles"][i]
      assert np.all((first >= [x0, y0]) & (first <= [x1 + 1e-4, y1 + 1e-4]))


def test_group_of_sketches_without_photos():
  sks = [{"sketch": wiggly_sketch(3, seed=i), "aligned": False} for i in range(4)]
  out = A.group(sks, 2, size=(300, 200))
  assert "image" not in out and "target" not in out
  assert out["sketch"].canvas_size == (300, 200)
  assert out["sketch"].num_strokes == 3 * len(out["chosen"])


def test_group_rejects_mixed_inputs():
  with pytest.raises(UserError, match="1 to 4"):
    A.group([tile_sample(1, 0)] * 5, 0)
  with pytest.raises(UserError, match="photo"):
    A.group([tile_sample(1, 0), {"sketch": wiggly_sketch(2), "aligned": True}], 0)


# ----------------------------------------------------------------------------- stroke level

def test_stroke_dropout_keeps_at_least_one_stroke_and_labels():
  sk = wiggly_sketch(10, seed=1)
  for seed in range(10):
    out = A.stroke_dropout({"sketch": sk}, seed, p=1.0)
    assert out["sketch"].num_strokes == 1
    i = out["sketch"].labels[0].object_id
    assert np.array_equal(out["sketch"].strokes[0], sk.strokes[i])
  out = A.stroke_dropout({"sketch": sk}, 0, p=0.5)
  assert 1 <= out["sketch"].num_strokes < 10
  assert_pieces_on_sources(out["sketch"], sk)
  assert A.stroke_dropout({"sketch": sk}, 0, p=0.0)["sketch"] == sk


def test_first_n_strokes_keeps_the_first_in_order():
  sk = wiggly_sketch(10, seed=2)
  out = A.first_n_strokes({"sketch": sk}, 0, n=3)
  assert out["sketch"] == sk.select([0, 1, 2])
  for seed in range(10):
    k = A.first_n_strokes({"sketch": sk}, seed, fraction=(0.0, 0.5))["sketch"].num_strokes
    assert 1 <= k <= 5


def test_affine_identity_is_identity_and_known_rotation():
  s = two_object_sample(aligned=True)
  out = A.affine(s, 0, scale=1.0, rotation=0.0, shear=0.0, translate=0.0)
  assert same(out, s)
  sk = Sketch([[[110, 40], [60, 40]]], (120, 80))
  out = A.affine({"sketch": sk}, 0, scale=0.5, rotation=90.0, shear=0.0, translate=(0.1, 0.1))
  # (110, 40) is 50 right of the centre (60, 40); scaled to 25 and turned 90 degrees
  # clockwise on a y-down canvas it is 25 below, then moved by (12, 8).
  np.testing.assert_allclose(out["sketch"].strokes[0], [[72, 73], [72, 48]], atol=1e-4)


def test_affine_marks_aligned_pairs_unaligned():
  s = two_object_sample(aligned=True)
  out = A.affine(s, 4)
  assert out["aligned"] is False
  assert same({k: v for k, v in out.items() if k not in ("sketch", "aligned")},
              {k: v for k, v in s.items() if k not in ("sketch", "aligned")})


def test_point_jitter_and_elastic_are_small_smooth_and_keep_structure():
  sk = wiggly_sketch(8, seed=4)
  for fn, kw in ((A.point_jitter, {"sigma": 0.01}), (A.elastic, {"amplitude": 0.02})):
    out = fn({"sketch": sk}, 9, **kw)["sketch"]
    assert [len(s) for s in out.strokes] == [len(s) for s in sk.strokes]
    assert out.labels == sk.labels
    moved = np.concatenate(out.strokes) - np.concatenate(sk.strokes)
    assert 0 < np.abs(moved).max() < 0.08 * 200
  assert A.point_jitter({"sketch": sk}, 0, sigma=0.0)["sketch"] == sk
  assert A.elastic({"sketch": sk}, 0, amplitude=0.0)["sketch"] == sk
  # Elastic: points close together move together (a field, not per-point noise).
  dense = Sketch([np.stack([np.linspace(20, 180, 400), np.full(400, 75.0)], 1)], (200, 150))
  d = np.diff(A.elastic({"sketch": dense}, 3, amplitude=0.03)["sketch"].strokes[0]
              - dense.strokes[0], axis=0)
  assert np.abs(d).max() < 0.5


def test_width_jitter_sets_factors_that_follow_strokes():
  sk = wiggly_sketch(6, seed=1)
  out = A.width_jitter({"sketch": sk}, 0, scale=(0.5, 2.0))
  w = out["stroke_widths"]
  assert w.shape == (6,) and np.all((w >= 0.5) & (w <= 2.0)) and len(set(w.tolist())) == 6
  again = A.width_jitter(out, 1, scale=(0.5, 2.0))["stroke_widths"]
  assert not np.array_equal(again, w)
  dropped = A.stroke_dropout(out, 5, p=0.5)
  idx = [lab.object_id for lab in dropped["sketch"].labels]
  assert np.array_equal(dropped["stroke_widths"], w[idx])


def test_stroke_level_applies_to_each_separate_query():
  samples = [tile_sample(30, 0, aligned=False), tile_sample(90, 1, aligned=False)]
  g = A.group(samples, 1, query="separate")
  while len(g["chosen"]) < 2:
    g = A.group(samples, int(g["tiles"][0][0]) + 7, query="separate")
  out = A.width_jitter(g, 0)
  assert [len(w) for w in out["query_stroke_widths"]] == [q.num_strokes for q in g["queries"]]
  out = A.point_jitter(g, 0)
  assert all(not (a == b) for a, b in zip(out["queries"], g["queries"]))


# ----------------------------------------------------------------------------- photo level

def test_hflip_twice_is_identity_and_flips_everything_together():
  s = two_object_sample(aligned=True)
  s["region"] = (10.0, 5.0, 50.0, 70.0)
  once = A.hflip(s)
  assert same(A.hflip(once), s)
  assert np.array_equal(once["image"], s["image"][:, ::-1])
  assert np.array_equal(once["masks"], s["masks"][:, :, ::-1])
  assert np.array_equal(once["target"], s["target"][:, ::-1])
  assert once["region"] == (70.0, 5.0, 110.0, 70.0)
  np.testing.assert_allclose(once["sketch"].strokes[0][0], [108, 12])
  centred = dict(s, aligned=False)
  assert A.hflip(centred, flip_sketch=False)["sketch"] == s["sketch"]


def dotted_sample():
  """An aligned two-object sample whose sketch is a dot at the centre of each mask box
  (canvas = 2x photo pixels), with the second object as target."""
  s = two_object_sample(aligned=True)
  dots = [[[30.0, 40.0]], [[30.0, 20.0]], [[90.0, 40.0]]]
  s["sketch"] = Sketch(dots, (120, 80), labels=[StrokeLabel(0), StrokeLabel(0, "", "head"),
                                                   StrokeLabel(1)])
  s["target"] = s["masks"][2]
  return s


def test_crop_keeps_the_object_and_the_alignment():
  s = dotted_sample()
  changed = 0
  for seed in range(25):
    out = A.crop(s, seed, scale=(0.1, 0.5))
    assert out["image"].shape == s["image"].shape
    t = out["target"]
    # The object's box is inside the crop: the target grows (or stays) and is not cut.
    assert t.sum() >= s["target"].sum()
    changed += not np.array_equal(out["image"], s["image"])
    for dot, k in zip(out["sketch"].strokes, (0, 1, 2)):
      x, y = dot[0] / 2.0
      assert 0 <= x <= 60 and 0 <= y <= 40
      assert out["masks"][k][int(y), int(x)]
  assert changed > 10


def test_zoom_out_shrinks_the_photo_onto_its_fill_and_keeps_the_alignment():
  s = dotted_sample()
  mean = np.round(s["image"].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
  for seed in range(10):
    out = A.zoom_out(s, seed, scale=(0.4, 0.7))
    assert out["image"].shape == s["image"].shape and out["image"].dtype == np.uint8
    assert 0.4 ** 2 * 0.8 < out["target"].sum() / s["target"].sum() < 0.7 ** 2 * 1.2
    # the corners farthest from the shrunk photo hold the fill
    assert any(np.array_equal(out["image"][y, x], mean) for y in (0, -1) for x in (0, -1))
    for dot, k in zip(out["sketch"].strokes, (0, 1, 2)):
      x, y = dot[0] / 2.0
      assert out["masks"][k][int(y), int(x)]
  centred = dict(s, aligned=False)
  assert A.zoom_out(centred, 0)["sketch"] == s["sketch"]
  grey = A.zoom_out(s, 0, scale=0.5, fill=7)
  assert (grey["image"] == 7).all(axis=-1).mean() >= 0.7
  with pytest.raises(UserError, match="zoom_out scale"):
    A.zoom_out(s, 0, scale=1.5)


def test_crop_and_colour_jitter_leave_photoless_samples_alone():
  s = {"sketch": wiggly_sketch(3), "aligned": False}
  assert same(A.crop(s, 0), s) and same(A.colour_jitter(s, 0), s) and same(A.zoom_out(s, 0), s)


def test_colour_jitter_changes_colours_only():
  s = two_object_sample()
  out = A.colour_jitter(s, 3)
  assert out["image"].dtype == np.uint8 and out["image"].shape == s["image"].shape
  assert not np.array_equal(out["image"], s["image"])
  assert same({k: v for k, v in out.items() if k != "image"},
              {k: v for k, v in s.items() if k != "image"})
  ident = A.colour_jitter(s, 3, brightness=0, contrast=0, saturation=0, hue=0)
  assert np.array_equal(ident["image"], s["image"])
  dark = A.colour_jitter(s, 3, brightness=(0.5, 0.5), contrast=0, saturation=0, hue=0)
  np.testing.assert_allclose(dark["image"], np.round(s["image"] * 0.5), atol=1)


# ----------------------------------------------------------------------------- determinism

def one_of_each(name):
  if name == "group":
    return [two_object_sample(), tile_sample(90, 2)]
  return two_object_sample(aligned=name != "affine")


@pytest.mark.parametrize("name", sorted(A.REGISTRY))
def test_same_seed_same_output_and_input_untouched(name):
  fn = A.REGISTRY[name]
  sample = one_of_each(name)
  before = pickle.loads(pickle.dumps(sample))
  a, b = fn(sample, 11), fn(sample, 11)
  assert same(a, b)
  assert same(sample, before)
  assert same(fn(sample, np.random.default_rng(11)), a)
  if name != "hflip":
    assert any(not same(fn(sample, seed), a) for seed in range(12, 16))


CHAIN = [
    {"name": "crop", "prob": 0.7, "scale": (0.4, 1.0)},
    {"name": "hflip", "prob": 0.5},
    {"name": "colour_jitter", "prob": 0.8},
    {"name": "partition", "prob": 0.6, "mode": ["grid", "box", "cluster"], "blank_photo": True},
    {"name": "group", "prob": 0.8, "size": 96, "query": "random"},
    {"name": "stroke_dropout", "prob": 0.5, "p": 0.2},
    {"name": "point_jitter", "prob": 0.5},
    {"name": "elastic", "prob": 0.5},
    {"name": "width_jitter", "prob": 0.5},
    {"name": "first_n_strokes", "prob": 0.3},
    {"name": "affine", "prob": 0.5},
]


def run_chain(aug, seeds):
  samples = [two_object_sample(), tile_sample(70, 4)]
  return [aug(samples, seed) for seed in seeds]


def test_chain_is_picklable_and_deterministic_across_processes():
  aug = A.build_augment(CHAIN)
  clone = pickle.loads(pickle.dumps(aug))
  assert clone == aug
  seeds = [0, 1, (2, 5), 123456789]
  here = run_chain(aug, seeds)
  assert same(run_chain(clone, seeds), here)
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(1) as pool:
    there = pool.apply(run_chain, (aug, seeds))
  assert same(there, here)
  assert not same(here[0], here[1])


def test_each_step_has_its_own_randomness():
  s = {"sketch": wiggly_sketch(6, seed=9)}
  a = A.build_augment(["width_jitter", "point_jitter"])(s, 4)
  b = A.build_augment(["point_jitter", {"name": "stroke_dropout", "prob": 0.0},
                       "width_jitter"])(s, 4)
  assert same(a, b)
  # A second step of the same name draws differently from the first.
  c = A.build_augment(["point_jitter", "point_jitter"])(s, 4)
  first = np.concatenate(a["sketch"].strokes) - np.concatenate(s["sketch"].strokes)
  second = np.concatenate(c["sketch"].strokes) - np.concatenate(a["sketch"].strokes)
  assert np.abs(second - first).max() > 0.1
  # Different names draw from different streams too.
  d = A.build_augment([{"name": "point_jitter", "sigma": 0.01},
                       {"name": "elastic", "amplitude": 0.0}])(s, 4)
  e = A.build_augment([{"name": "point_jitter", "sigma": 0.01}])(s, 4)
  assert same(d, e)
  f = A.build_augment([{"name": "elastic", "amplitude": 0.0},
                       {"name": "point_jitter", "sigma": 0.01}])(s, 4)
  assert same(f, e)


def test_chain_group_step_runs_per_sample_steps_first():
  aug = A.build_augment([{"name": "partition", "blank_photo": True, "frame": "canvas"},
                         {"name": "group", "size": 64}])
  samples = [tile_sample(50, 0), tile_sample(100, 1)]
  out = aug(samples, 0)
  assert out["image"].shape == (64, 64, 3) and "region" not in out
  assert same(aug(samples, 0), out)
  single = aug(samples[0], 0)
  assert single["tiles"] and len(single["tiles"]) == 1


def test_build_errors_name_the_problem():
  with pytest.raises(UserError, match="unknown name 'partiton'"):
    A.build_augment([{"name": "partiton"}])
  with pytest.raises(UserError, match=r"step 1 \(affine\): unknown parameter\(s\) rotate"):
    A.build_augment(["hflip", {"name": "affine", "rotate": 3}])
  with pytest.raises(UserError, match="prob"):
    A.build_augment([{"name": "hflip", "prob": 1.5}])
  with pytest.raises(UserError, match="list of steps"):
    A.build_augment({"name": "hflip"})
  with pytest.raises(UserError, match="group"):
    A.build_augment(["hflip"])([two_object_sample()], 0)
  with pytest.raises(UserError, match="seed"):
    A.stroke_dropout({"sketch": wiggly_sketch(2)}, None)
  with pytest.raises(UserError, match="mode"):
    A.partition({"sketch": wiggly_sketch(2)}, 0, mode="ring")
  assert "sigma" in A.parameters("point_jitter")
