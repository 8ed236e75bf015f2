"""Segmentation metrics on hand-made masks, against brute force, and the picture grid."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from sketchseg_jax.errors import UserError
from sketchseg_jax.evaluate.segmentation import (RADII, THRESHOLDS, SegmentationAccumulator,
                                                 _grid_size, centre_disk, iou, render_grid)


def half_mask(h=4, w=6):
  target = np.zeros((h, w), bool)
  target[:, : w // 2] = True
  return target


def random_queries(n, seed=0):
  rng = np.random.default_rng(seed)
  names = ["object", "part", "group", "instance", "category"]
  out = []
  for i in range(n):
    h, w = rng.integers(5, 12, size=2)
    prob = rng.random((h, w))
    target = rng.random((h, w)) < 0.4
    out.append((prob, target, names[i % len(names)], bool(i % 3 == 0)))
  return out


def test_thresholds_grid():
  assert len(THRESHOLDS) == 19 and THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95
  assert 0.5 in THRESHOLDS.tolist()


def test_iou_known_values():
  a = np.array([[1, 1], [0, 0]], bool)
  b = np.array([[1, 0], [1, 0]], bool)
  assert iou(a, b) == pytest.approx(1 / 3)
  assert iou(a, a) == 1.0
  assert iou(a, ~a) == 0.0
  empty = np.zeros((3, 3), bool)
  assert iou(empty, empty) == 1.0
  assert iou(empty, ~empty) == 0.0
  with pytest.raises(UserError, match="shape"):
    iou(a, np.zeros((2, 3), bool))


def test_single_query_matches_brute_force():
  (prob, target, _, _), = random_queries(1, seed=3)
  acc = SegmentationAccumulator()
  assert acc.add(prob, target, "object") == pytest.approx(iou(prob >= 0.5, target))
  res = acc.result()
  per_t = [iou(prob >= t, target) for t in THRESHOLDS]
  assert res["miou"] == {"object": pytest.approx(iou(prob >= 0.5, target)),
                         "all": pytest.approx(iou(prob >= 0.5, target))}
  assert res["miou_best_threshold"]["object"] == pytest.approx(max(per_t))
  h, w = prob.shape
  disks = [iou(centre_disk(h, w, r), target) for r in RADII]
  assert res["baselines"]["centre_prior"]["miou"]["object"] == pytest.approx(max(disks))
  assert res["baselines"]["centre_prior"]["radius"]["object"] == RADII[int(np.argmax(disks))]
  assert res["num_queries"] == 1 and res["queries_per_granularity"] == {"object": 1}
  json.dumps(res)


def test_best_threshold_is_chosen_per_granularity():
  acc = SegmentationAccumulator()
  target = half_mask()
  # Object queries separate at thresholds in (0.1, 0.3], part queries in (0.6, 0.8].
  acc.add(np.where(target, 0.3, 0.1), target, "object")
  acc.add(np.where(target, 0.8, 0.6), target, "part")
  res = acc.result()
  assert res["miou"] == {"object": 0.0, "part": 0.5, "all": 0.25}
  assert res["miou_best_threshold"]["object"] == 1.0
  assert res["miou_best_threshold"]["part"] == 1.0
  # Ties go to the threshold nearest 0.5.
  assert res["best_threshold"]["object"] == 0.3
  assert res["best_threshold"]["part"] == 0.65
  # One threshold for all: at 0.3 the part query predicts everything (IoU 0.5).
  assert res["best_threshold"]["all"] == 0.3
  assert res["miou_best_threshold"]["all"] == pytest.approx(0.75)


def test_mask_stats_tell_too_big_from_missing():
  target = np.zeros((4, 5), bool)
  target[1:3, 1:3] = True                      # 4 of 20 pixels
  too_big = np.zeros((4, 5))
  too_big[0:4, 0:4] = 0.9                      # 16 pixels, all 4 true ones inside
  acc = SegmentationAccumulator()
  acc.add(too_big, target, "object")
  acc.add(np.zeros((4, 5)), target, "part")    # misses everything
  acc.add(np.zeros((4, 5)), np.zeros((4, 5), bool), "part")  # nothing to find, nothing found
  stats = acc.result()["mask_stats"]
  assert stats["area"]["object"] == pytest.approx(16 / 20)
  assert stats["true_area"]["object"] == pytest.approx(4 / 20)
  assert stats["precision"]["object"] == pytest.approx(4 / 16)
  assert stats["recall"]["object"] == 1.0
  assert stats["precision"]["part"] == stats["recall"]["part"] == pytest.approx(0.5)
  assert stats["area"]["all"] == pytest.approx(16 / 60)


def test_all_ones_is_area_fraction():
  target = np.zeros((4, 5), bool)
  target[1:4, 1:3] = True
  acc = SegmentationAccumulator()
  acc.add(np.zeros((4, 5)), target, "object")
  assert acc.result()["baselines"]["all_ones"]["miou"]["object"] == pytest.approx(6 / 20)
  empty = SegmentationAccumulator()
  empty.add(np.zeros((4, 5)), np.zeros((4, 5), bool), "object")
  res = empty.result()
  assert res["miou"]["object"] == 1.0  # nothing to find, nothing found
  assert res["baselines"]["all_ones"]["miou"]["object"] == 0.0


def test_centre_prior_finds_a_centred_disk():
  h, w = 48, 64
  ys, xs = np.mgrid[:h, :w]
  target = (ys + 0.5 - h / 2) ** 2 + (xs + 0.5 - w / 2) ** 2 <= (0.6 * 24) ** 2
  acc = SegmentationAccumulator()
  acc.add(np.zeros((h, w)), target, "object")
  prior = acc.result()["baselines"]["centre_prior"]
  assert prior["radius"]["object"] == pytest.approx(0.6)
  assert prior["miou"]["object"] > 0.99


def test_granularity_order_and_all_key():
  acc = SegmentationAccumulator()
  target = half_mask()
  for g in ["zzz", "category", "aaa", "object", "part"]:
    acc.add(target.astype(float), target, g)
  res = acc.result()
  assert list(res["miou"]) == ["object", "part", "category", "aaa", "zzz", "all"]
  assert list(res["queries_per_granularity"]) == ["object", "part", "category", "aaa", "zzz"]
  assert list(res["baselines"]["centre_prior"]["radius"])[-1] == "all"


def test_by_split_only_with_heldout_queries():
  target = half_mask()
  prob = target.astype(float)
  acc = SegmentationAccumulator()
  acc.add(prob, target, "object")
  assert "by_split" not in acc.result()
  acc.add(np.zeros_like(prob), target, "object", heldout=True)
  res = acc.result()
  assert set(res["by_split"]) == {"seen", "heldout"}
  assert res["by_split"]["seen"]["num_queries"] == 1
  assert res["by_split"]["seen"]["miou"]["object"] == 1.0
  assert res["by_split"]["heldout"]["miou"]["object"] == 0.0
  assert res["miou"]["object"] == 0.5
  assert "baselines" in res["by_split"]["heldout"]
  only = SegmentationAccumulator()
  only.add(prob, target, "part", heldout=True)
  assert list(only.result()["by_split"]) == ["heldout"]


def test_merge_equals_one_accumulator():
  queries = random_queries(11, seed=1)
  whole, first, second = (SegmentationAccumulator() for _ in range(3))
  for i, q in enumerate(queries):
    whole.add(*q)
    (first if i < 5 else second).add(*q)
  assert first.merge(second) is first
  assert len(first) == len(whole) == 11
  assert first.result() == whole.result()
  assert json.loads(json.dumps(whole.result())) == whole.result()


def test_bad_input_raises_user_error():
  acc = SegmentationAccumulator()
  target = half_mask()
  with pytest.raises(UserError, match="no queries"):
    acc.result()
  with pytest.raises(UserError, match="shape"):
    acc.add(np.zeros((4, 5)), target, "object")
  with pytest.raises(UserError, match="shape"):
    acc.add(np.zeros((1, 4, 6)), target[None], "object")
  nan = np.zeros((4, 6))
  nan[0, 0] = np.nan
  with pytest.raises(UserError, match="non-finite"):
    acc.add(nan, target, "object")
  with pytest.raises(UserError, match=r"\[0, 1\]"):
    acc.add(np.full((4, 6), 3.0), target, "object")
  with pytest.raises(UserError, match="boolean"):
    acc.add(np.zeros((4, 6)), target.astype(np.uint8) * 255, "object")
  with pytest.raises(UserError, match="granularity"):
    acc.add(np.zeros((4, 6)), target, "")
  assert len(acc) == 0


def grid_row(h, w, target=True, sketches=None, label="object"):
  rng = np.random.default_rng(h * w)
  sketch = np.zeros((32, 32), np.uint8)
  sketch[8:24, 16] = 255
  if sketches:
    sketch = np.stack([np.roll(sketch, k, axis=1) for k in range(sketches)])
  return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "sketch": sketch,
          "pred": rng.random((h, w)), "target": (rng.random((h, w)) < 0.5) if target else None,
          "label": label}


def test_render_grid_writes_png(tmp_path):
  rows = [grid_row(40, 60), grid_row(50, 30, target=False, label="part"),
          grid_row(32, 32, sketches=3, label="group")]
  out = tmp_path / "sheet" / "grid.png"
  assert render_grid(rows, out, cell=48) == os.fspath(out)
  with Image.open(out) as img:
    assert img.format == "PNG"
    assert img.size == _grid_size(3, 48)
    assert img.size[0] >= 4 * 48 and img.size[1] >= 3 * 48
  assert os.listdir(out.parent) == ["grid.png"]  # no temporary left behind
  one = render_grid(rows, tmp_path / "one.png", cell=32, max_rows=1)
  with Image.open(one) as img:
    assert img.size == _grid_size(1, 32)


def test_render_grid_rejects_bad_rows(tmp_path):
  with pytest.raises(UserError):
    render_grid([], tmp_path / "x.png")
  row = grid_row(20, 20)
  row["pred"] = np.zeros((10, 10))
  with pytest.raises(UserError, match="pred"):
    render_grid([row], tmp_path / "x.png")
  assert not os.listdir(tmp_path)
