"""The procedural world: determinism, ground truth consistency, labels, alignment, splits,
granularities and the variety of its categories."""

import hashlib
import multiprocessing
import pickle

import numpy as np
import pytest

from sketchseg_jax.data.world import (
    CATEGORIES, CATEGORY_NAMES, DEFAULT_HELDOUT, GRANULARITIES, World, shape_families)
from sketchseg_jax.data.world.categories import bicycle, car
from sketchseg_jax.data.world.draw import draw_object
from sketchseg_jax.data.world.shapes import objects_bbox
from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.augment.sample import label_mask
from sketchseg_jax.sketch.raster import rasterize
from sketchseg_jax.sketch.types import Sketch

SIZE = 80


@pytest.fixture(scope="module")
def world():
  return World(size=SIZE, split="train", seed=3)


def digest(value, h=None):
  """A hash of every byte and label of a sample (dicts, lists, arrays, sketches)."""
  h = h or hashlib.sha256()
  if isinstance(value, dict):
    for k in sorted(value):
      h.update(k.encode())
      digest(value[k], h)
  elif isinstance(value, (list, tuple)):
    h.update(f"[{len(value)}".encode())
    for v in value:
      digest(v, h)
  elif isinstance(value, np.ndarray):
    h.update(f"{value.dtype}{value.shape}".encode())
    h.update(np.ascontiguousarray(value).tobytes())
  elif isinstance(value, Sketch):
    h.update(repr(value.canvas_size).encode())
    digest(list(value.strokes), h)
    h.update(repr(value.labels).encode())
  else:
    h.update(repr(value).encode())
  return h


def fingerprint(value):
  return digest(value).hexdigest()


def samples_fingerprints(args):
  size, split, seed = args
  w = World(size=size, split=split, seed=seed)
  out = [fingerprint(w.scene(1)), fingerprint(w.sbir_pair(2))]
  out += [fingerprint(w.query(3, g)) for g in GRANULARITIES]
  return out


def dilate(mask, r):
  out = mask.copy()
  for dy in range(-r, r + 1):
    for dx in range(-r, r + 1):
      shifted = np.zeros_like(mask)
      ys = slice(max(dy, 0), mask.shape[0] + min(dy, 0))
      yd = slice(max(-dy, 0), mask.shape[0] + min(-dy, 0))
      xs = slice(max(dx, 0), mask.shape[1] + min(dx, 0))
      xd = slice(max(-dx, 0), mask.shape[1] + min(-dx, 0))
      shifted[ys, xs] = mask[yd, xd]
      out |= shifted
  return out


def rows_by_key(sample):
  return {(m["object_id"], m["part"]): k for k, m in enumerate(sample["mask_info"])}


# ----------------------------------------------------------------------------- determinism

def test_same_index_same_bytes_and_other_index_other_bytes(world):
  again = World(size=SIZE, split="train", seed=3)
  for g in GRANULARITIES:
    assert fingerprint(world.query(5, g)) == fingerprint(again.query(5, g))
  assert fingerprint(world.scene(7)) == fingerprint(again.scene(7))
  assert fingerprint(world.sbir_pair(7)) == fingerprint(again.sbir_pair(7))
  assert fingerprint(world.scene(7)) != fingerprint(world.scene(8))


def test_same_bytes_in_a_spawned_process():
  here = samples_fingerprints((64, "val", 11))
  with multiprocessing.get_context("spawn").Pool(1) as pool:
    there = pool.map(samples_fingerprints, [(64, "val", 11)])[0]
  assert here == there


def test_pickles_cheaply_and_keeps_its_output(world):
  blob = pickle.dumps(world)
  assert len(blob) < 2000
  clone = pickle.loads(blob)
  assert fingerprint(clone.query(2, "part")) == fingerprint(world.query(2, "part"))


def test_splits_and_seeds_never_share_samples():
  prints = set()
  for split in ("train", "val", "test"):
    for seed in (0, 1):
      w = World(size=48, split=split, seed=seed)
      for i in range(3):
        prints.add(fingerprint(w.sbir_pair(i)["image"]))
        prints.add(fingerprint(w.scene(i)["image"]))
  assert len(prints) == 3 * 2 * 3 * 2


# ----------------------------------------------------------------------------- ground truth

def check_masks(sample):
  masks, info = sample["masks"], sample["mask_info"]
  H, W = sample["image"].shape[:2]
  assert sample["image"].dtype == np.uint8 and sample["image"].shape == (H, W, 3)
  assert masks.dtype == np.bool_ and masks.shape == (len(info), H, W)
  ids = sorted({m["object_id"] for m in info})
  taken = np.zeros((H, W), bool)
  rows = rows_by_key(sample)
  for oid in ids:
    whole = masks[rows[(oid, "")]]
    parts = [masks[k] for k, m in enumerate(info) if m["object_id"] == oid and m["part"]]
    assert parts, "every object has part masks"
    union = np.zeros_like(whole)
    for p in parts:
      assert not (p & ~whole).any(), "a part mask leaves its instance"
      assert not (p & union).any(), "part masks of one object overlap"
      union |= p
    assert np.array_equal(union, whole)
    assert not (whole & taken).any(), "instance masks overlap"
    taken |= whole
    assert whole.any()
    cat = next(m["category"] for m in info if m["object_id"] == oid)
    assert {m["part"] for m in info if m["object_id"] == oid} - {""} <= set(CATEGORIES[cat].parts)


def test_masks_are_consistent_in_scenes_and_pairs(world):
  for i in range(12):
    check_masks(world.scene(i))
    check_masks(world.sbir_pair(i))


def test_scenes_have_occlusion_and_repeats():
  w = World(size=SIZE, split="train", seed=0)
  occluded = repeated = 0
  counts = set()
  for i in range(40):
    s = w.scene(i)
    counts.add(len(s["objects"]))
    occluded += any(o["visible"] < 0.98 for o in s["objects"])
    cats = [o["category"] for o in s["objects"]]
    repeated += len(set(cats)) < len(cats)
  assert counts == {1, 2, 3, 4}
  assert occluded >= 5 and repeated >= 3


def test_every_stroke_is_labelled_with_a_real_object_and_part(world):
  for i in range(6):
    s = world.scene(i)
    keys = set(rows_by_key(s))
    for o in s["objects"]:
      for sk in (o["sketch"], o["aligned_sketch"]):
        assert sk.num_strokes > 0 and len(sk.labels) == sk.num_strokes
        for lab in sk.labels:
          assert lab.object_id == o["object_id"] and lab.category == o["category"]
          assert lab.part in o["parts"] and (lab.object_id, lab.part) in keys
      assert len(o["stroke_widths"]) == o["sketch"].num_strokes
      assert np.all(o["stroke_widths"] > 0)


def test_aligned_sketches_land_on_their_object():
  w = World(size=96, split="train", seed=5)
  shares = []
  for i in range(10):
    s = w.sbir_pair(i, aligned=True)
    assert s["aligned"] and s["sketch"].canvas_size == (256.0, 256.0)
    ink = rasterize(s["sketch"], 96, width=1.0) > 0.3
    shares.append((ink & dilate(s["target"], 3)).sum() / ink.sum())
  for i in range(10):
    s = w.scene(i)
    rows = rows_by_key(s)
    for o in s["objects"]:
      if o["visible"] > 0.97:
        ink = rasterize(o["aligned_sketch"], 96, width=1.0) > 0.3
        shares.append((ink & dilate(s["masks"][rows[(o["object_id"], "")]], 3)).sum() / ink.sum())
  assert min(shares) > 0.8 and np.mean(shares) > 0.9


def test_aligned_canvas_follows_a_non_square_photo():
  w = World(size=(96, 64), split="train", seed=1)
  s = w.sbir_pair(0, aligned=True)
  assert s["image"].shape == (64, 96, 3)
  assert s["sketch"].canvas_size == (256.0, 256.0 * 64 / 96)
  ink = rasterize(s["sketch"], (96, 64), width=1.0) > 0.3
  assert (ink & dilate(s["target"], 3)).sum() / ink.sum() > 0.8


def test_object_centred_sketches_fill_their_canvas(world):
  for i in range(10):
    s = world.sbir_pair(i)
    assert not s["aligned"] and s["sketch"].canvas_size == (256.0, 256.0)
    x0, y0, x1, y1 = s["sketch"].bounds()
    assert max(x1 - x0, y1 - y0) > 0.7 * 256
    assert min(x0, y0) > -0.05 * 256 and max(x1, y1) < 1.05 * 256
    assert np.array_equal(s["target"], s["masks"][0]) and s["target"].any()


def test_plain_backgrounds_come_at_the_configured_share():
  w = World(size=48, split="train", seed=0, plain_background_share=0.5)
  kinds = [w.sbir_pair(i)["background"] for i in range(40)]
  assert 10 <= kinds.count("plain") <= 30
  plain = next(w.sbir_pair(i) for i in range(40) if w.sbir_pair(i)["background"] == "plain")
  assert plain["image"][~dilate(plain["target"], 6)].std(axis=0).max() < 20
  never = World(size=48, split="train", seed=0, plain_background_share=0.0)
  assert all(never.sbir_pair(i)["background"] == "clutter" for i in range(10))


# ----------------------------------------------------------------------------- splits

def test_heldout_categories_only_in_test():
  train = World(size=48, split="train")
  val = World(size=48, split="val")
  test = World(size=48, split="test")
  assert set(train.heldout_categories) == set(DEFAULT_HELDOUT)
  assert not set(train.categories) & set(DEFAULT_HELDOUT)
  assert train.categories == val.categories
  assert test.categories == test.all_categories == CATEGORY_NAMES
  seen = set()
  for i in range(60):
    seen.add(train.sbir_pair(i)["category"])
    seen |= {o["category"] for o in val.scene(i)["objects"]}
    seen |= set(train.query(i, GRANULARITIES[i % 5])["categories"])
  assert not seen & set(DEFAULT_HELDOUT)
  in_test = {test.sbir_pair(i)["category"] for i in range(80)}
  assert in_test & set(DEFAULT_HELDOUT)
  custom = World(size=48, split="train", heldout=("cat",))
  assert "cat" not in custom.categories and "bus" in custom.categories
  only = World(size=48, split="test", categories=DEFAULT_HELDOUT)
  assert set(only.categories) == set(DEFAULT_HELDOUT)
  assert set(only.query(0, "category")["categories"]) <= set(DEFAULT_HELDOUT)
  with pytest.raises(UserError):
    World(split="train", categories=("bus",))


def test_bad_settings_are_refused():
  with pytest.raises(UserError):
    World(split="dev")
  with pytest.raises(UserError):
    World(heldout=("unicorn",))
  with pytest.raises(UserError):
    World(max_objects=0)
  with pytest.raises(UserError):
    World(size=8)
  with pytest.raises(UserError):
    World().query(0, "scene")
  with pytest.raises(UserError):
    World().scene(-1)


# ----------------------------------------------------------------------------- queries

def test_object_part_group_instance_targets_match_their_labels(world):
  for g in ("object", "part", "group", "instance"):
    for i in range(8):
      s = world.query(i, g)
      check_masks(s)
      hw = s["image"].shape[:2]
      assert s["granularity"] == g and s["target"].dtype == np.bool_ and s["target"].any()
      assert np.array_equal(s["target"], label_mask(s["sketch"].labels, s["masks"],
                                                    s["mask_info"], hw))
      assert sorted({l.object_id for l in s["sketch"].labels}) == s["object_ids"]
      assert len(s["stroke_widths"]) == s["sketch"].num_strokes


def test_part_queries_are_strict_subsets_of_one_object(world):
  for i in range(10):
    s = world.query(i, "part")
    (oid,) = s["object_ids"]
    rows = rows_by_key(s)
    drawn = {l.part for l in s["sketch"].labels}
    assert drawn == set(s["parts"])
    whole = s["masks"][rows[(oid, "")]]
    assert (s["target"] & ~whole).sum() == 0
    all_parts = [m["part"] for m in s["mask_info"] if m["object_id"] == oid and m["part"]]
    assert len(s["parts"]) < len(all_parts)


def test_group_queries_show_two_or_three_objects(world):
  for i in range(8):
    s = world.query(i, "group")
    assert 2 <= len(s["object_ids"]) <= 3
    assert len(s["queries"]) == len(s["object_ids"]) == len(s["query_stroke_widths"])
    assert sum(q.num_strokes for q in s["queries"]) == s["sketch"].num_strokes
    for q, oid in zip(s["queries"], s["object_ids"]):
      assert {l.object_id for l in q.labels} == {oid}
    a = world.query(i, "group", aligned=True)
    assert a["aligned"] and np.array_equal(a["target"], s["target"])


def test_instance_and_category_queries(world):
  for i in range(8):
    inst = world.query(i, "instance")
    cat = inst["category"]
    same = [m["object_id"] for m in inst["mask_info"] if m["part"] == "" and m["category"] == cat]
    assert len(same) >= 2 and inst["instances"] == len(same)
    assert inst["object_ids"][0] in same and len(inst["object_ids"]) == 1

    c = world.query(i, "category")
    rows = rows_by_key(c)
    same = [m["object_id"] for m in c["mask_info"]
            if m["part"] == "" and m["category"] == c["category"]]
    assert len(same) >= 2 and c["object_ids"] == same
    union = np.any([c["masks"][rows[(o, "")]] for o in same], axis=0)
    assert np.array_equal(c["target"], union)
    assert {l.object_id for l in c["sketch"].labels} == {-1}
    assert {l.category for l in c["sketch"].labels} == {c["category"]}


def test_queries_work_with_one_object_worlds():
  w = World(size=48, split="train", max_objects=1)
  assert all(len(w.scene(i)["objects"]) == 1 for i in range(4))
  for g in ("group", "instance", "category"):
    assert len({m["object_id"] for m in w.query(0, g)["mask_info"]}) >= 2


# ----------------------------------------------------------------------------- variety

def test_table_has_enough_categories_with_named_parts():
  assert len(CATEGORY_NAMES) >= 12
  rng = np.random.default_rng(0)
  for name, cat in CATEGORIES.items():
    assert len(cat.parts) >= 2
    for _ in range(5):
      names = [p.name for p in cat.build(rng)]
      assert len(names) == len(set(names)) and set(names) <= set(cat.parts), name


def test_part_shapes_are_shared_across_categories():
  fam = shape_families()
  assert {"car", "bicycle", "bus"} <= set(fam["wheel"])
  assert len(fam["window"]) >= 4 and len(fam["eye"]) >= 2 and len(fam["fin"]) >= 2
  rng = np.random.default_rng(1)

  def roundness(parts):
    ring = next(p for p in parts if p.name == "wheel").polys[0]
    r = np.hypot(*(ring - ring.mean(0)).T)
    return r.std() / r.mean()
  assert roundness(car(rng)) < 0.01 and roundness(bicycle(rng)) < 0.01


def test_instances_of_a_category_differ():
  for name in ("house", "car", "cat", "bottle"):
    w = World(size=64, split="test", seed=0, categories=(name,))
    boxes, masks = [], []
    for i in range(8):
      s = w.sbir_pair(i)
      x0, y0, x1, y1 = s["sketch"].bounds()
      boxes.append((x1 - x0) / (y1 - y0))
      masks.append(s["target"])
    assert np.std(np.log(boxes)) > 0.05, name
    assert len({m.tobytes() for m in masks}) == 8


def test_big_parts_are_drawn_before_details():
  rng = np.random.default_rng(0)
  hits = total = 0
  for name in CATEGORY_NAMES:
    for _ in range(3):
      parts = CATEGORIES[name].build(rng)
      d = draw_object(parts, objects_bbox(parts), rng)
      extent = {p.name: float(np.ptp(p.points(), axis=0).sum()) for p in parts}
      hits += extent[d.parts[0]] >= np.median(list(extent.values()))
      total += 1
  assert hits >= 0.85 * total


def test_world_samples_feed_the_augmentations(world):
  from sketchseg_jax.sketch import augment as A
  out = A.group([world.sbir_pair(0), world.sbir_pair(1)], 7, size=SIZE)
  assert out["image"].shape == (SIZE, SIZE, 3) and out["target"].any()
  query = world.query(1, "object", aligned=True)
  part = A.partition(query, 3)
  assert part["target"].any() and part["target"].sum() < query["target"].sum()
  assert not (part["target"] & ~query["target"]).any()
