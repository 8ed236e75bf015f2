"""`sketchseg data synth` / `data show`: written data sets read back as the world they came from."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from sketchseg_jax import cli
from sketchseg_jax.data import contact_sheet, synth
from sketchseg_jax.data.sources import build_source
from sketchseg_jax.data.sources.eval_folder import EvalFolder
from sketchseg_jax.data.sources.synthetic import WorldSource
from sketchseg_jax.data.world import GRANULARITIES
from sketchseg_jax.sketch.io import load as load_sketch
from sketchseg_jax.sketch.types import Sketch

# Seed 1 of this setting draws every granularity in 8 records, aligned groups and singles,
# and held-out categories (checked in the test, so a change to the world cannot hollow it out).
FOLDER_WORLD = dict(split="test", num=8, size=56, seed=1, granularities=GRANULARITIES,
                    aligned_share=0.5, heldout=("car", "fish", "clock"))
FOLDER_ARGS = ["--split", "test", "--num", "8", "--size", "56", "--seed", "1",
               "--aligned-share", "0.5", "--heldout", "car,fish,clock", "--format", "folder"]
TFDS_WORLD = dict(split="val", num=6, size=48, seed=3, granularities=("object", "part", "group"),
                  aligned_share=0.5)
TFDS_ARGS = ["--split", "val", "--num", "6", "--size", "48", "--seed", "3",
             "--granularities", "object,part,group", "--aligned-share", "0.5"]


def run(capsys, *argv):
  rc = cli.main(["data", *argv])
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth")
  assert cli.main(["data", "synth", "--out", str(root / "tfds"), *TFDS_ARGS]) == 0
  assert cli.main(["data", "synth", "--out", str(root / "folder"), *FOLDER_ARGS]) == 0
  return root


def assert_same(a, b, where="sample"):
  """Deep equality of sample values: exact arrays (dtype too), Sketches, dicts and lists."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
    for k in a:
      assert_same(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, (list, tuple)):
    assert type(a) is type(b) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_same(x, y, f"{where}[{i}]")
  elif isinstance(a, np.ndarray):
    assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
    assert np.array_equal(a, b), where
  else:
    assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def assert_sketch_close(got, want, where):
  assert isinstance(got, Sketch) and got.canvas_size == want.canvas_size, where
  assert got.num_strokes == want.num_strokes, where
  for s, t in zip(got.strokes, want.strokes):
    np.testing.assert_allclose(s, t, atol=1e-3, err_msg=where)


def test_synth_tfds_reads_back_as_the_on_the_fly_world(written, capsys):
  world = WorldSource(**TFDS_WORLD)
  source = build_source({"name": "tfds", "path": str(written / "tfds"), "split": "val"})
  assert len(source) == 6
  for i in range(6):
    assert_same(source[i], world[i], f"record {i}")
  meta = source.metadata
  assert meta["categories"] == list(world.categories) and len(meta["categories"]) == 16
  assert meta["heldout"] == list(world.heldout_categories) and len(meta["heldout"]) == 3
  assert (meta["kind"], meta["size"], meta["seed"]) == ("query", 48, 3)
  assert meta["granularities"] == pytest.approx({"object": 1 / 3, "part": 1 / 3,
                                                 "group": 1 / 3})
  assert json.loads((written / "tfds" / "synth.json").read_text()) == meta
  assert sorted(os.listdir(written / "tfds")) == ["sketchseg_world", "synth.json"]


def test_synth_prints_one_summary_line(tmp_path, capsys):
  rc, out, err = run(capsys, "synth", "--out", str(tmp_path / "d"), "--num", "2", "--size",
                     "32", "--kind", "sbir", "--format", "folder")
  assert rc == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f"wrote 2 train samples (folder) to {tmp_path / 'd'} in ")
  assert lines[0].endswith("samples/s)")
  records = EvalFolder(str(tmp_path / "d"))
  assert [r["granularity"] for r in records] == ["object", "object"]
  assert [r["meta"]["background"] for r in records] == [
      WorldSource(kind="sbir", num=2, size=32)[i]["background"] for i in range(2)]


def test_synth_folder_reads_back_with_eval_folder(written):
  world = WorldSource(**FOLDER_WORLD)
  samples = [world[i] for i in range(8)]
  assert {s["granularity"] for s in samples} == set(GRANULARITIES)
  assert any(s["heldout"] for s in samples) and not all(s["heldout"] for s in samples)
  assert any(s["aligned"] and not s.get("queries") for s in samples)
  assert any(s["aligned"] and s.get("queries") for s in samples)

  root = written / "folder"
  source = build_source({"name": "eval_folder", "root": str(root)})
  assert len(source) == 8 and source.num_skipped == 0
  assert source.describe()["num_unused_files"] == 0
  assert source.categories[:16] == world.categories
  for i, (rec, want) in enumerate(zip(source, samples)):
    where = f"record {i}"
    assert rec["query_name"] == f"test_{i:06d}"
    assert np.array_equal(rec["image"], want["image"]), where
    assert rec["target"].dtype == bool and np.array_equal(rec["target"], want["target"]), where
    for key in ("granularity", "category", "heldout"):
      assert rec[key] == want[key], f"{where}: {key}"
    if want["category_id"] >= 0:
      assert rec["category_id"] == want["category_id"], where
    # Every object and part mask of the photo comes back, empty ones included.
    got = {(m["object_id"], m["part"]): m for m in rec["mask_info"]}
    wanted = {(m["object_id"], m["part"]): k for k, m in enumerate(want["mask_info"])}
    assert set(got) == set(wanted), where
    for j, m in enumerate(rec["mask_info"]):
      k = wanted[(m["object_id"], m["part"])]
      assert m["category"] == want["mask_info"][k]["category"]
      assert np.array_equal(rec["masks"][j], want["masks"][k]), f"{where}: mask {m}"
    meta = rec["meta"]
    assert meta["index"] == i and meta["object_ids"] == want["object_ids"]
    np.testing.assert_array_equal(np.float32(meta["stroke_widths"]), want["stroke_widths"])
    if want.get("queries"):
      assert len(rec["queries"]) == len(want["queries"]) >= 2, where
      for q, w in zip(rec["queries"], want["queries"]):
        assert_sketch_close(q, w, where)
      assert_sketch_close(load_sketch(str(root / meta["merged_sketch"])), want["sketch"], where)
      assert rec["aligned"] is False and meta["merged_aligned"] == want["aligned"]
    else:
      assert "queries" not in rec
      assert_sketch_close(rec["sketch"], want["sketch"], where)
      assert rec["aligned"] == want["aligned"], where
    if want["granularity"] == "part":
      assert meta["parts"] == want["parts"]
  settings = json.loads((root / "synth.json").read_text())
  assert settings["heldout"] == ["car", "fish", "clock"] and settings["format"] == "folder"


def test_index_mask_falls_back_to_a_binary_mask(tmp_path):
  values, table = synth.index_mask(np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], bool),
                                   [{"object_id": 0, "part": "", "category": "mug"},
                                    {"object_id": 0, "part": "handle", "category": "mug"}])
  assert values.tolist() == [[1, 2], [0, 0]]
  assert table == {"1": {"object_id": 0, "category": "mug", "part": "handle"},
                   "2": {"object_id": 0, "category": "mug", "part": ""}}
  assert synth.target_indices(values, values == 1) == [1]
  assert synth.target_indices(values, np.array([[1, 0], [1, 0]], bool)) is None  # not a union

  class Plain:  # a source without region masks: the target goes out as a binary PNG
    split, num, categories = "val", 1, ("mug",)

    def __getitem__(self, i):
      return {"image": np.full((4, 5, 3), 200, np.uint8), "target": np.eye(4, 5, dtype=bool),
              "sketch": Sketch([[[1, 1], [3, 2]]], (8, 8)), "category": "mug",
              "granularity": "object"}

  (tmp_path / "d").mkdir()
  synth.write_folder(Plain(), tmp_path / "d")
  rec = EvalFolder(str(tmp_path / "d"))[0]
  assert np.array_equal(rec["target"], np.eye(4, 5, dtype=bool)) and "masks" not in rec


def test_synth_refuses_to_replace_what_it_did_not_write(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  args = ["synth", "--out", str(out), "--num", "2", "--size", "32", "--format", "folder"]
  rc, _, err = run(capsys, *args)
  assert rc == 2 and "is not empty; pass --overwrite" in err
  rc, _, err = run(capsys, *args, "--overwrite")
  assert rc == 2 and "refusing to replace it" in err
  assert (out / "keep.txt").read_text() == "mine"

  (out / "keep.txt").unlink()  # empty: written into place
  assert run(capsys, *args)[0] == 0
  rc, _, err = run(capsys, *args, "--seed", "5")
  assert rc == 2 and "--overwrite" in err
  assert run(capsys, *args, "--seed", "5", "--overwrite", "--format", "tfds")[0] == 0
  settings = json.loads((out / "synth.json").read_text())
  assert settings["seed"] == 5 and settings["format"] == "tfds"
  assert not (out / "manifest.json").exists()  # the old folder is gone, not merged
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old folders left behind


@pytest.mark.parametrize("fmt", ["folder", "tfds"])
def test_interrupted_synth_leaves_no_output(tmp_path, monkeypatch, fmt):
  real = WorldSource.__getitem__

  def interrupted(self, i):
    if i == 2:
      raise KeyboardInterrupt
    return real(self, i)

  monkeypatch.setattr(WorldSource, "__getitem__", interrupted)
  with pytest.raises(KeyboardInterrupt):
    synth.synth(tmp_path / "out", split="train", num=4, size=32, format=fmt)
  assert os.listdir(tmp_path) == []


def test_show_draws_every_record_of_both_formats(written, tmp_path, capsys):
  cell = 64
  for fmt, extra in (("tfds", ["--split", "val"]), ("folder", [])):
    sheet_path = tmp_path / f"{fmt}.png"
    rc, out, err = run(capsys, "show", str(written / fmt), *extra, "--num", "5", "--cell",
                       str(cell), "--out", str(sheet_path))
    assert rc == 0, err
    assert out.startswith(f"wrote {sheet_path}: 5 {fmt} records")
    sheet = np.asarray(Image.open(sheet_path).convert("RGB")).astype(int)
    pad, header, caption = contact_sheet.PAD, contact_sheet.HEADER, contact_sheet.CAPTION
    assert sheet.shape == (header + pad + 5 * (cell + caption + pad), pad + 4 * (cell + pad), 3)
    # The target cell of the first row without a sketch drawn over it: tinted red inside the
    # target, grey outside.
    source, _ = contact_sheet.open_dataset(written / fmt, extra[1] if extra else None)
    r = next(i for i in range(5) if not source[i]["aligned"])
    rec = source[r]
    w, h, x0, y0 = contact_sheet._box(rec["image"].shape, cell)
    target = contact_sheet._nearest(rec["target"], w, h)
    x, y = pad + 2 * (cell + pad) + x0, header + r * (cell + caption + pad) + y0
    view = sheet[y:y + h, x:x + w]
    inside, outside = view[target], view[~target]
    assert (inside[:, 0] - inside[:, 1:].max(axis=1)).mean() > 40
    assert np.abs(outside[:, 0] - outside[:, 1]).mean() < 12


def test_show_reads_a_hand_made_folder_with_a_raster_sketch(tmp_path, capsys):
  for d in ("images", "sketches", "masks"):
    (tmp_path / d).mkdir()
  Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(tmp_path / "images" / "a.jpg")
  ink = np.full((30, 30), 255, np.uint8)
  ink[5:25, 14:16] = 0
  Image.fromarray(ink).save(tmp_path / "sketches" / "a.png")
  mask = np.zeros((40, 60), np.uint8)
  mask[10:30, 20:40] = 255
  Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
  (tmp_path / "manifest.json").write_text(json.dumps(
      {"version": 1, "queries": [{"name": "a", "category": "pole", "granularity": "object"}]}))
  rc, out, err = run(capsys, "show", str(tmp_path), "--cell", "48", "--out",
                     str(tmp_path / "s.png"))
  assert rc == 0, err
  sheet = np.asarray(Image.open(tmp_path / "s.png").convert("L"))
  pad, header = contact_sheet.PAD, contact_sheet.HEADER
  sketch = sheet[header:header + 48, pad + 52:pad + 52 + 48]
  assert sketch.min() < 60 and np.median(sketch) > 200  # dark ink on a white canvas


@pytest.mark.parametrize("argv, message", [
    (["show", "{tmp}/nowhere", "--out", "{tmp}/s.png"], "no such folder"),
    (["show", "{tmp}", "--out", "{tmp}/s.png"], "neither an evaluation folder"),
    (["show", "{tfds}", "--split", "test", "--out", "{tmp}/s.png"], "no split 'test'"),
    (["show", "{folder}", "--split", "val", "--out", "{tmp}/s.png"], "holds split 'test'"),
    (["show", "{empty}", "--out", "{tmp}/s.png"], "'queries' must be a non-empty list"),
    (["show", "{folder}", "--out", "{tmp}/no/s.png"], "does not exist"),
    (["synth", "--out", "{tmp}/x", "--split", "dev", "--num", "2"], "unknown split 'dev'"),
    (["synth", "--out", "{tmp}/x", "--num", "0"], "num must be a positive integer"),
    (["synth", "--out", "{tmp}/x", "--num", "2", "--granularities", "object,scene"],
     "unknown granularity 'scene'"),
    (["synth", "--out", "{tmp}/x", "--num", "2", "--heldout", "car,unicorn"],
     "unknown held-out categories"),
    (["synth", "--out", "{tmp}/x", "--num", "2", "--size", "big"], "size must be S or WxH"),
])
def test_errors_are_one_line_and_exit_status_2(written, tmp_path, capsys, argv, message):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "manifest.json").write_text('{"version": 1, "queries": []}')
  paths = {"tmp": tmp_path, "tfds": written / "tfds", "folder": written / "folder",
           "empty": empty}
  rc, _, err = run(capsys, *[a.format(**paths) for a in argv])
  assert rc == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sketchseg data: error: "), err
  assert message in lines[0]
  assert not (tmp_path / "x").exists()
