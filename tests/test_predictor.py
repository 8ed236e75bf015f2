"""The Predictor and `sketchseg segment` on a tiny trained segmenter (trained once per module)."""

import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from segmenter_helpers import train_tiny
from sketchseg_jax import sketch as sketch_lib
from sketchseg_jax.cli import main
from sketchseg_jax.errors import UserError
from sketchseg_jax.infer import render
from sketchseg_jax.infer.predictor import Predictor, interpolation_matrix, upsample_logits
from sketchseg_jax.sketch import Sketch


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return train_tiny(tmp_path_factory.mktemp("predictor") / "seg")


@pytest.fixture(scope="module")
def predictor(workdir):
  return Predictor.from_checkpoint(workdir)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A photo and sketch files, good and bad."""
  d = tmp_path_factory.mktemp("inputs")
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
  Image.fromarray(photo).save(d / "photo.png")
  sketch = _sketch()
  sketch_lib.save(sketch, d / "cat.ndjson")
  sketch_lib.save(sketch, d / "cat.svg")
  sketch_lib.save(_sketch(shift=6), d / "other.svg")
  (d / "outside.svg").write_text(
      '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32" width="32" height="32">'
      '<path d="M 100 100 L 140 150 L 120 190" fill="none" stroke="black"/></svg>')
  (d / "nan.ndjson").write_text(
      '{"word": "cat", "drawing": [[[1, NaN, 5], [2, 3, 4]]]}\n')
  (d / "empty.png").write_bytes(_png_bytes(np.full((32, 32), 255, np.uint8)))
  (d / "text.png").write_text("this is not a picture\n")
  Image.new("L", (8000, 5001)).save(d / "huge.png")
  return d, photo, sketch


def _png_bytes(gray):
  import io
  buf = io.BytesIO()
  Image.fromarray(gray).save(buf, format="PNG")
  return buf.getvalue()


def _sketch(shift=0):
  return Sketch([[[4 + shift, 5], [20, 12 + shift], [27, 26]], [[6, 24], [14 + shift, 18]]],
                (32, 32))


def test_matches_stage_predict_at_model_size(predictor):
  rng = np.random.default_rng(1)
  photos = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  sketches = [_sketch(), _sketch(3), _sketch(6)]
  ink = predictor.rasters(sketches)[None]
  predict = jax.jit(predictor.stage.predict)  # one shape: singles are groups with one valid
  for i in range(3):
    predictor.set_image(photos[i])
    got = predictor.segment(sketches[i])
    valid = np.arange(3)[None] == i
    want = np.asarray(predict(predictor.params, photos[i:i + 1], ink, valid))[0]
    assert got.shape == (32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
  # A group of sketches against the stage's own combination (valid flags, max).
  predictor.set_image(photos[0])
  want = np.asarray(predict(predictor.params, photos[:1], ink, np.ones((1, 3), bool)))[0]
  np.testing.assert_allclose(predictor.segment(sketches), want, atol=1e-5)


def test_original_size_non_square(predictor, files):
  _, photo, sketch = files
  predictor.set_image(photo)
  assert predictor.original_size == (45, 70)
  mask = predictor.segment(sketch)
  assert mask.shape == (45, 70) and mask.dtype == np.float32
  assert np.all((mask > 0) & (mask < 1))
  low = predictor.logits(sketch)
  want = 1 / (1 + np.exp(-upsample_logits(low, (45, 70))[0]))
  np.testing.assert_allclose(mask, want, atol=1e-6)
  hard = predictor.segment(sketch, threshold=0.5)
  assert hard.dtype == np.bool_ and np.array_equal(hard, mask >= 0.5)


def test_interpolation_matches_torch_convention():
  # torch F.interpolate(bilinear, align_corners=False) of [0, 1] to 4: 0, .25, .75, 1.
  np.testing.assert_allclose(interpolation_matrix(2, 4) @ np.array([0.0, 1.0]),
                             [0, 0.25, 0.75, 1.0], atol=1e-7)
  assert np.allclose(interpolation_matrix(5, 5), np.eye(5))


def test_several_sketches_are_max_of_singles(predictor, files):
  _, photo, _ = files
  predictor.set_image(photo)
  singles = [predictor.segment(_sketch(s)) for s in (0, 4, 8)]
  group = predictor.segment(_sketch(0), _sketch(4), _sketch(8))
  np.testing.assert_allclose(group, np.max(singles, axis=0), atol=1e-6)
  np.testing.assert_array_equal(predictor.segment([_sketch(0), _sketch(4), _sketch(8)]), group)


def test_input_kinds_agree(predictor, files):
  d, photo, sketch = files
  predictor.set_image(d / "photo.png")
  base = predictor.segment(sketch)
  raster = predictor.raster(sketch)
  for same in (d / "cat.ndjson", str(d / "cat.svg"), raster, raster.astype(np.float32) / 255):
    np.testing.assert_allclose(predictor.segment(same), base, atol=1e-6)
  predictor.set_image(photo)
  np.testing.assert_allclose(predictor.segment(sketch), base, atol=1e-6)


def test_compiles_once_per_bucket(workdir, files):
  p = Predictor.from_checkpoint(workdir)
  _, photo, _ = files
  p.set_image(photo)
  p.set_image(photo[::-1].copy())
  for n in (1, 1, 3, 3, 4, 1):
    p.segment([_sketch(i) for i in range(n)])
  # The head: buckets 1 and 4. The sketch tower runs on new sketches only: s0 (bucket 1),
  # then s1 and s2 (bucket 2), then s3 (bucket 1 again).
  assert p.trace_counts == {"features": 1, "logits": 2, "queries": 2}
  assert len(p._embeddings) == 4
  # Head in groups of 8 and 2; the 5 new sketches through the tower as 4 + 1.
  p.segment([_sketch(i % 9) for i in range(10)])
  assert p.trace_counts == {"features": 1, "logits": 4, "queries": 3}
  shifts = iter(range(10, 20))
  for n in (1, 2, 5, 2):  # new sketches, buckets compiled already: no more traces
    p.segment([_sketch(next(shifts)) for _ in range(n)])
  p.set_image(photo)
  assert p.trace_counts == {"features": 1, "logits": 4, "queries": 3}
  assert len(p._embeddings) == 9 + 10


def test_embedding_cache_gives_same_masks(predictor, files):
  _, photo, sketch = files
  predictor.set_image(photo)
  predictor._embeddings.clear()
  predictor.cache_size = 2
  try:
    first = predictor.segment(sketch)
    for s in range(1, 5):
      predictor.segment(_sketch(s))
    assert len(predictor._embeddings) == 2
    np.testing.assert_allclose(predictor.segment(sketch), first, atol=1e-6)
  finally:
    predictor.cache_size = 64


def test_predict_batch(predictor, files):
  _, photo, sketch = files
  rng = np.random.default_rng(3)
  photos = [photo, rng.integers(0, 256, (20, 33, 3), dtype=np.uint8)] * 5
  sketches = [sketch, [_sketch(2), _sketch(5)]] * 5
  masks = predictor.predict_batch(photos, sketches)
  assert len(masks) == 10
  for im, sk, m in zip(photos[:2], sketches[:2], masks[:2]):
    predictor.set_image(im)
    assert m.shape == im.shape[:2]
    np.testing.assert_allclose(m, predictor.segment(sk), atol=1e-5)
  with pytest.raises(UserError, match="2 images and 1"):
    predictor.predict_batch(photos[:2], sketches[:1])


def test_errors_in_python(workdir, predictor, files):
  d, photo, sketch = files
  fresh = Predictor(predictor.stage, predictor.params)
  with pytest.raises(UserError, match="no image set"):
    fresh.segment(sketch)
  predictor.set_image(photo)
  with pytest.raises(UserError, match="empty sketch"):
    predictor.segment(Sketch([], (32, 32)))
  with pytest.raises(UserError, match="empty sketch"):
    predictor.segment(np.zeros((32, 32), np.float32))
  with pytest.raises(UserError, match="non-finite"):
    predictor.segment(np.full((32, 32), np.nan, np.float32))
  with pytest.raises(UserError, match="inside its 32x32 canvas"):
    predictor.segment(d / "outside.svg")
  with pytest.raises(UserError, match="threshold"):
    predictor.segment(sketch, threshold=1.5)


def _cli(capsys, *argv):
  rc = main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.fixture(scope="module")
def teacher_like(workdir, tmp_path_factory):
  fake = tmp_path_factory.mktemp("fake") / "teacher"
  shutil.copytree(workdir, fake)
  config = json.loads((fake / "config.json").read_text())
  config["stage"] = "teacher"
  (fake / "config.json").write_text(json.dumps(config))
  return fake


@pytest.mark.parametrize("case, pattern", [
    ("outside", "no stroke lies inside"),
    ("nan", "non-finite"),
    ("empty_sketch", "empty sketch"),
    ("text_photo", "not an image"),
    ("huge_photo", "megapixels"),
    ("missing_photo", "photo not found"),
    ("missing_sketch", "file not found"),
    ("teacher", "a teacher checkpoint, not a segmenter"),
    ("no_dir", "does not exist"),
    ("threshold", "--threshold"),
])
def test_cli_bad_input(capsys, tmp_path, workdir, teacher_like, files, case, pattern):
  d, _, _ = files
  args = dict(checkpoint=workdir, image=d / "photo.png", sketch=d / "cat.svg")
  extra = []
  if case in ("outside", "nan"):
    args["sketch"] = d / f"{case}.{'svg' if case == 'outside' else 'ndjson'}"
  elif case == "empty_sketch":
    args["sketch"] = d / "empty.png"
  elif case == "text_photo":
    args["image"] = d / "text.png"
  elif case == "huge_photo":
    args["image"] = d / "huge.png"
  elif case == "missing_photo":
    args["image"] = tmp_path / "nope.jpg"
  elif case == "missing_sketch":
    args["sketch"] = tmp_path / "nope.svg"
  elif case == "teacher":
    args["checkpoint"] = teacher_like
  elif case == "no_dir":
    args["checkpoint"] = tmp_path / "no_such_run"
  elif case == "threshold":
    extra = ["--threshold", "1.5"]
  rc, _, err = _cli(capsys, "segment", "--checkpoint", str(args["checkpoint"]),
                    "--image", str(args["image"]), "--sketch", str(args["sketch"]),
                    "--out", str(tmp_path / "mask.png"), *extra)
  assert rc != 0
  lines = err.strip().splitlines()
  assert len(lines) == 1 and pattern in lines[0], err
  assert "Traceback" not in err
  assert not (tmp_path / "mask.png").exists()


def test_cli_writes_mask_and_overlay(capsys, tmp_path, workdir, predictor, files):
  """On a supervised run in the quickstart's layout (ROOT/segmenter/ found from ROOT)."""
  d, photo, sketch = files
  run = tmp_path / "quickstart" / "segmenter"
  shutil.copytree(workdir, run)
  config = json.loads((run / "config.json").read_text())
  config["stage"], config["loss"] = "supervised", {"bce": 1.0, "dice": 1.0}
  (run / "config.json").write_text(json.dumps(config))
  rc, out, err = _cli(capsys, "segment", "--checkpoint", str(run.parent), "--image",
                      str(d / "photo.png"), "--sketch", str(d / "cat.svg"), "--sketch",
                      str(d / "other.svg"), "--out", str(tmp_path / "mask.png"), "--overlay",
                      str(tmp_path / "overlay.png"), "--threshold", "0.05")
  assert rc == 0, err
  assert "wrote" in out and "step 2" in out
  mask = np.asarray(Image.open(tmp_path / "mask.png"))
  assert mask.shape == (45, 70) and mask.dtype == np.uint8
  assert set(np.unique(mask)) <= {0, 255}
  predictor.set_image(photo)
  want = predictor.segment(sketch, _sketch(6), threshold=0.05)
  assert np.array_equal(mask == 255, want)
  over = np.asarray(Image.open(tmp_path / "overlay.png"))
  assert over.ndim == 3 and over.shape[2] == 3 and min(over.shape[:2]) == 256


def test_overlay_draws_mask_and_thumbnail():
  photo = np.full((120, 200, 3), 128, np.uint8)
  mask = np.zeros((120, 200), np.float32)
  mask[60:110, 120:190] = 0.9
  ink = np.zeros((32, 32), np.uint8)
  ink[8:24, 16] = 255
  out = render.overlay(photo, mask, ink)
  assert out.shape == photo.shape and out.dtype == np.uint8
  assert not np.array_equal(out[80, 150], photo[80, 150])        # tinted inside
  assert np.array_equal(out[30, 100], photo[30, 100])            # untouched outside
  assert (out[60, 150] == render.CONTOUR).all()                  # outline on the edge
  # The thumbnail goes in the top-left corner (the mask is bottom-right): white paper there.
  corner = out[:40, :40]
  assert (corner == 255).all(axis=2).sum() > 100
  assert render.overlay(photo, mask > 0.5, [ink, ink]).shape == photo.shape


def test_save_png_atomic(tmp_path):
  path = render.save_png(np.eye(4, dtype=bool), tmp_path / "m.png")
  assert np.array_equal(np.asarray(Image.open(path)), np.eye(4, dtype=np.uint8) * 255)
  assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
  with pytest.raises(UserError, match="does not exist"):
    render.save_png(np.zeros((2, 2), np.uint8), tmp_path / "nope" / "m.png")


def test_lazy_package_attribute():
  import sketchseg_jax
  assert sketchseg_jax.Predictor is Predictor
