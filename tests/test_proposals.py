"""Region proposals from a photo's colours: the candidates the teacher ranks in the segmenter's
proposal term. They read the photo only."""

import numpy as np
import pytest

from sketchseg_jax.data.pipeline import build_dataset, resolve_config
from sketchseg_jax.data.proposals import colour_regions, region_proposals
from sketchseg_jax.errors import UserError


def iou(a, b):
  return (a & b).sum() / (a | b).sum()


def striped_scene():
  """48x48: grey-and-white stripes, a red square with a blue window (an object with a part,
  a black outline around it) and a green bar; the objects' true extents."""
  rng = np.random.default_rng(0)
  img = np.zeros((48, 48, 3), np.float32)
  img[:] = 200.0
  img[(np.arange(48) // 4) % 2 == 1] = 120.0
  house = np.zeros((48, 48), bool)
  house[8:24, 8:24] = True
  img[house] = 0.0                               # the outline
  img[9:23, 9:23] = (220.0, 40.0, 40.0)
  img[13:19, 13:19] = (40.0, 40.0, 220.0)
  bar = np.zeros((48, 48), bool)
  bar[30:40, 20:44] = True
  img[bar] = (40.0, 180.0, 60.0)
  img += rng.normal(0.0, 3.0, img.shape)         # sensor noise: regions are not one value
  return np.clip(img, 0, 255).astype(np.uint8), house, bar


def test_regions_follow_colour_and_proposals_cover_whole_objects():
  img, house, bar = striped_scene()
  regions = colour_regions(img, 20.0)
  assert len(np.unique(regions[14:18, 13:19])) == 1  # the window is one region despite noise
  assert regions[15, 15] != regions[10, 10]          # and not the wall's
  masks, valid = region_proposals(img, count=64, threshold=20.0)
  assert masks.shape == (64, 48, 48) and valid.shape == (64,) and valid.any()
  assert not masks[~valid].any()
  best = lambda truth: max(iou(m, truth) for m in masks[valid])
  assert best(house) > 0.85  # wall + window + outline: holes filled, grown by a pixel
  assert best(bar) > 0.75  # grown by a pixel: no outline to take in
  window = np.zeros_like(house)
  window[13:19, 13:19] = True
  assert best(window) > 0.5  # the part alone is a candidate too


def test_count_caps_candidates_to_the_most_compact():
  img, house, bar = striped_scene()
  full, valid = region_proposals(img, count=64)
  assert valid.sum() > 8  # the stripes, cut by the objects, are candidates too
  few, few_valid = region_proposals(img, count=4)
  assert few_valid.all()
  assert all(any((m == f).all() for f in full[valid]) for m in few)
  assert max(iou(m, house) for m in few) > 0.85
  # no background stripe (one spans the photo's width) is kept
  assert not any(m.any(axis=0).all() for m in few)
  assert any(m.any(axis=0).all() for m in full[valid])


def test_a_flat_photo_has_no_candidates_and_bad_input_is_refused():
  masks, valid = region_proposals(np.full((32, 32, 3), 90, np.uint8), count=4)
  assert not valid.any() and not masks.any()  # one region, the whole photo: above max_area
  with pytest.raises(UserError, match="\\(H, W, 3\\) photo"):
    region_proposals(np.zeros((32, 32), np.uint8))
  with pytest.raises(UserError, match="count >= 1"):
    region_proposals(np.zeros((8, 8, 3), np.uint8), min_area=0.5, max_area=0.2)


def test_pipeline_adds_proposals_to_batches():
  cfg = {"source": {"name": "world", "size": 48, "num": 16}, "image_size": 48, "raster_size": 32,
         "batch_size": 2, "proposals": {"count": 8}}
  b = next(iter(build_dataset(cfg, "train", process_index=0, process_count=1)))
  assert b["proposals"].shape == (2, 8, 48, 48) and b["proposals"].dtype == np.uint8
  assert b["proposals_valid"].shape == (2, 8) and b["proposals_valid"].any()
  assert "target" not in b
  with pytest.raises(UserError, match="unknown data.proposals keys \\['cnt'\\]"):
    resolve_config({**cfg, "proposals": {"cnt": 3}})
  with pytest.raises(UserError, match="min_area < max_area"):  # when read, not in a worker
    resolve_config({**cfg, "proposals": {"min_area": 0.5, "max_area": 0.2}})
  assert "proposals" not in next(iter(build_dataset({**cfg, "proposals": None}, "train",
                                                    process_index=0, process_count=1)))
