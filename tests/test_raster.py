"""Rasterizer: exact coverage model, agreement with supersampled PIL, placement, raster input."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sketchseg_jax.sketch.raster import placement, rasterize, resize_raster
from sketchseg_jax.sketch.types import Sketch


def centroid(img):
  """Ink centroid (x, y) in output coordinates (pixel j spans [j, j+1))."""
  ys, xs = np.indices(img.shape)
  total = img.sum()
  return np.array([((xs + 0.5) * img).sum() / total, ((ys + 0.5) * img).sum() / total])


def pen_strokes(rng, n_strokes, lo, hi, step=(3.0, 12.0)):
  strokes = []
  for _ in range(n_strokes):
    n = int(rng.integers(3, 30))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.4, n))
    steps = rng.uniform(*step, n)
    start = rng.uniform(lo, hi, 2)
    walk = np.cumsum(np.stack([np.cos(heading) * steps, np.sin(heading) * steps], 1), 0)
    strokes.append(np.vstack([start, start + walk]))
  return strokes


def brute_force(sketch, size, width, antialias):
  """The coverage model evaluated on every pixel for every segment, in plain numpy."""
  scale, ox, oy = placement(sketch, size)
  w, h = size
  ys, xs = np.indices((h, w)).astype(np.float64) + 0.5
  img = np.zeros((h, w))
  r = width / 2 if antialias else max(width / 2, 0.5)
  for stroke in sketch.strokes:
    p = stroke.astype(np.float64) * scale + [ox, oy]
    segs = zip(p[:-1], p[1:]) if len(p) > 1 else [(p[0], p[0])]
    d2 = np.full((h, w), np.inf)
    for a, b in segs:
      d = b - a
      l2 = d @ d
      t = np.zeros_like(xs) if l2 == 0 else ((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / l2
      t = np.clip(t, 0, 1)
      d2 = np.minimum(d2, (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2)
    if antialias:
      cov = np.minimum(np.clip(r + 0.5 - np.sqrt(d2), 0, 1), min(1.0, 2 * r))
    else:
      cov = (d2 <= r * r).astype(np.float64)
    img = np.maximum(img, cov)
  return img


def pil_reference(sketch, size, width, ss=16):
  """Supersampled PIL drawing of the same polylines with round joins and caps, box-averaged."""
  scale, ox, oy = placement(sketch, size)
  w, h = size
  big = Image.new("L", (w * ss, h * ss), 0)
  draw = ImageDraw.Draw(big)
  rad = width * ss / 2
  for stroke in sketch.strokes:
    # PIL puts integer coordinates at pixel centres; ours puts them at pixel corners.
    p = (stroke * scale + [ox, oy]) * ss - 0.5
    if len(p) > 1:
      draw.line(p.ravel().tolist(), fill=255, width=int(round(width * ss)))
    for x, y in p:
      draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
  a = np.asarray(big, np.float32) / 255
  return a.reshape(h, ss, w, ss).mean(axis=(1, 3))


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("width", [0.6, 1.0, 2.5, 7.0])
def test_matches_coverage_model_everywhere(width, antialias):
  rng = np.random.default_rng(int(width * 10) + antialias)
  # Long and short segments, axis-aligned ones, repeated points, dots, and points far outside.
  strokes = pen_strokes(rng, 4, 5, 55, step=(0.5, 25.0))
  strokes += [[[3.2, 10.7], [50.9, 10.7]], [[20.3, 2.2], [20.3, 58.1]], [[7.7, 40.1]],
              [[30.1, 30.6], [30.1, 30.6], [44.4, 51.2], [44.4, 51.2]],
              [[-500.0, 33.3], [700.0, 47.9]], [[1e12, 1e12], [2e12, -1e12]]]
  sketch = Sketch(strokes, (64, 48))
  got = rasterize(sketch, (80, 60), width=width, antialias=antialias)
  want = brute_force(sketch, (80, 60), width, antialias)
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("seed,width", [(0, 1.5), (1, 2.0), (2, 3.0), (3, 5.0)])
def test_agrees_with_supersampled_pil(seed, width):
  rng = np.random.default_rng(seed)
  sketch = Sketch(pen_strokes(rng, 5, 15, 50), (64, 64))
  got = rasterize(sketch, 96, width=width)
  ref = pil_reference(sketch, (96, 96), width)
  assert got.sum() == pytest.approx(ref.sum(), rel=0.03)
  assert np.abs(centroid(got) - centroid(ref)).max() < 0.25
  assert np.abs(got - ref).mean() < 0.01


@pytest.mark.parametrize("width", [1.0, 1.7, 2.0, 3.0, 4.5])
@pytest.mark.parametrize("y", [16.0, 16.3, 16.5, 16.85])
def test_horizontal_segment_profile(width, y):
  img = rasterize(Sketch([[[10.0, y], [40.0, y]]], (64, 64)), 64, width=width)
  r = width / 2
  column = img[:, 25]
  d = np.abs(np.arange(64) + 0.5 - y)
  np.testing.assert_allclose(column, np.clip(r + 0.5 - d, 0, 1), atol=1e-6)
  # A box-filtered cross-section holds exactly `width` of ink per column, centred on the line
  # up to the sampling of its ramps.
  assert column.sum() == pytest.approx(width, abs=1e-5)
  assert ((np.arange(64) + 0.5) * column).sum() / column.sum() == pytest.approx(y, abs=0.1)
  # Round caps: the whole image is the capsule's coverage, ends included.
  yc, xc = np.indices(img.shape) + 0.5
  dist = np.hypot(np.maximum(np.maximum(10 - xc, xc - 40), 0), yc - y)
  np.testing.assert_allclose(img, np.clip(r + 0.5 - dist, 0, 1), atol=1e-6)
  assert img[:, :int(np.floor(9 - r))].max() == 0 and img[:, int(np.ceil(40 + r)) + 1:].max() == 0


def test_thin_lines_keep_their_ink():
  img = rasterize(Sketch([[[5.0, 8.3], [40.0, 8.3]]], (64, 64)), 64, width=0.4)
  assert img[:, 20].sum() == pytest.approx(0.4, abs=1e-5)


@pytest.mark.parametrize("canvas,size,point", [
    ((64, 64), (64, 64), (12.5, 7.5)),
    ((200, 100), (100, 100), (50.0, 20.0)),
    ((100, 300), (120, 90), (80.0, 250.0)),
    ((640, 480), (224, 224), (600.0, 10.0)),
])
def test_canvas_mode_places_points(canvas, size, point):
  cw, ch = canvas
  w, h = size
  scale = min(w / cw, h / ch)
  # Uniform scale, canvas centred in the output.
  expect = np.array([(w - cw * scale) / 2 + point[0] * scale,
                     (h - ch * scale) / 2 + point[1] * scale])
  img = rasterize(Sketch([[point]], canvas), size, width=3.0)
  assert img.shape == (h, w)
  assert np.abs(centroid(img) - expect).max() < 0.05
  i, j = np.unravel_index(img.argmax(), img.shape)
  assert abs(j + 0.5 - expect[0]) <= 1.0 and abs(i + 0.5 - expect[1]) <= 1.0
  assert placement(Sketch([[point]], canvas), size) == pytest.approx(
      (scale, (w - cw * scale) / 2, (h - ch * scale) / 2))


def test_canvas_corners_map_to_output_corners():
  sketch = Sketch([[[0.0, 0.0], [200.0, 0.0], [200.0, 100.0], [0.0, 100.0], [0.0, 0.0]]],
                  (200, 100))
  img = rasterize(sketch, (100, 50), width=2.0)
  # The border rectangle's centreline is the output's edge: half the line falls outside.
  assert img[0, 50] == img[49, 50] == img[25, 0] == img[25, 99] == 1.0
  assert img[1, 50] == 0.0 and img[25, 1] == 0.0


@pytest.mark.parametrize("size", [(200, 200), (300, 120)])
def test_fit_mode_fills_with_margin(size):
  # Two dots mark the strokes' bounding box, 100 x 50 canvas units, far from the canvas centre.
  sketch = Sketch([[[510.0, 720.0]], [[610.0, 770.0]]], (1000, 1000))
  w, h = size
  margin = 0.1
  img = rasterize(sketch, size, width=2.0, fit="fit", margin=margin)
  scale = min(w * (1 - 2 * margin) / 100, h * (1 - 2 * margin) / 50)
  x0, y0 = (w - 100 * scale) / 2, (h - 50 * scale) / 2
  half = w // 2
  assert np.abs(centroid(img[:, :half]) - [x0, y0]).max() < 0.05
  right = centroid(img[:, half:]) + [half, 0]
  assert np.abs(right - [x0 + 100 * scale, y0 + 50 * scale]).max() < 0.05
  # The limiting side touches the margin exactly.
  assert min(x0, y0) == pytest.approx(margin * (w if x0 < y0 else h))


def test_fit_mode_degenerate_extents():
  dot = rasterize(Sketch([[[7.0, 9.0]]], (100, 100)), 64, width=4.0, fit="fit")
  assert np.abs(centroid(dot) - [32, 32]).max() < 0.05
  line = rasterize(Sketch([[[10.0, 5.0], [30.0, 5.0]]], (100, 100)), 64, width=2.0, fit="fit")
  cols = np.flatnonzero(line.max(axis=0) > 0.5)
  assert cols[0] == pytest.approx(0.05 * 64, abs=1.5)
  assert cols[-1] == pytest.approx(0.95 * 64, abs=1.5)
  assert np.abs(centroid(line) - [32, 32]).max() < 0.05


@pytest.mark.parametrize("fit", ["canvas", "fit"])
def test_empty_sketch_gives_zeros(fit):
  img = rasterize(Sketch([], (50, 50)), (30, 20), fit=fit)
  assert img.shape == (20, 30) and img.dtype == np.float32 and not img.any()


def test_values_in_unit_range_and_overlaps_do_not_darken():
  rng = np.random.default_rng(7)
  strokes = pen_strokes(rng, 30, 10, 54)
  strokes += [[[5.0, 5.0], [60.0, 60.0]]] * 3
  img = rasterize(Sketch(strokes, (64, 64)), (90, 70), width=4.0)
  assert img.dtype == np.float32 and img.shape == (70, 90)
  assert img.min() >= 0.0 and img.max() == 1.0


def test_per_stroke_widths():
  sketch = Sketch([[[10.0, 10.5], [50.0, 10.5]], [[10.0, 40.5], [50.0, 40.5]]], (64, 64))
  img = rasterize(sketch, 64, widths=[2.0, 5.0])
  assert img[:, 30][:25].sum() == pytest.approx(2.0, abs=1e-5)
  assert img[:, 30][25:].sum() == pytest.approx(5.0, abs=1e-5)
  with pytest.raises(ValueError, match="widths"):
    rasterize(sketch, 64, widths=[2.0])
  with pytest.raises(ValueError):
    rasterize(sketch, 64, widths=[2.0, float("nan")])


def test_aliased_is_binary_and_connected():
  sketch = Sketch([[[2.3, 3.1], [61.7, 20.8]]], (64, 64))
  img = rasterize(sketch, 64, width=0.2, antialias=False)
  assert set(np.unique(img)) == {0.0, 1.0}
  cols = img[:, 3:61]
  assert (cols.sum(axis=0) >= 1).all()
  aa = rasterize(sketch, 64, width=3.0)
  hard = rasterize(sketch, 64, width=3.0, antialias=False)
  assert hard.sum() == pytest.approx(aa.sum(), rel=0.1)


def test_float_raster_input_is_resized():
  rng = np.random.default_rng(3)
  sketch = Sketch(pen_strokes(rng, 6, 10, 54), (64, 64))
  big = rasterize(sketch, 128, width=4.0)
  small = rasterize(big, 64)
  direct = rasterize(sketch, 64, width=2.0)
  assert small.shape == (64, 64) and small.dtype == np.float32
  assert small.sum() == pytest.approx(big.sum() / 4, rel=1e-3)
  assert small.sum() == pytest.approx(direct.sum(), rel=0.05)
  assert np.abs(small - direct).mean() < 0.02
  np.testing.assert_allclose(rasterize(direct, 64), direct)


def test_paper_image_input_and_aspect():
  # A 40 x 80 (h x w) white page with a black bar: integer images are ink on paper.
  page = np.full((40, 80, 3), 255, np.uint8)
  page[10:20, 20:60] = 0
  img = rasterize(page, 40)
  assert img.shape == (40, 40)
  # Scaled by 1/2 and centred vertically: rows 10..30 hold the page, the bar at rows 15..20.
  assert img[15:20, 10:30].min() == pytest.approx(1.0)
  assert img[:10].max() == 0.0 and img[30:].max() == 0.0
  assert img.sum() == pytest.approx(5 * 20, abs=1e-3)
  rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent: paper everywhere
  rgba[4:8, 4:8] = [0, 0, 0, 255]
  out = resize_raster(rgba, 16)
  assert out.sum() == pytest.approx(16.0) and out[4:8, 4:8].min() == 1.0


def test_raster_fit_mode_crops_to_ink():
  ink = np.zeros((100, 100), np.float32)
  ink[40:50, 30:50] = 1.0
  out = rasterize(ink, 64, fit="fit", margin=0.0)
  # A 20 x 10 blob scaled by 3.2 fills the width and is centred vertically.
  assert out[:, 0].max() == 1.0 and out[:, 63].max() == 1.0
  rows = np.flatnonzero(out.max(axis=1) > 0.5)
  assert rows[0] == 16 and rows[-1] == 47
  assert not rasterize(np.zeros((10, 10), np.float32), 32, fit="fit").any()


def test_bad_arguments():
  sketch = Sketch([[[1.0, 1.0]]], (10, 10))
  with pytest.raises(ValueError):
    rasterize(sketch, 32, fit="stretch")
  with pytest.raises(ValueError):
    rasterize(sketch, (32, 0))
  with pytest.raises(ValueError):
    rasterize(sketch, 32, fit="fit", margin=0.5)
  with pytest.raises(TypeError):
    rasterize([[1.0, 1.0]], 32)
  with pytest.raises(ValueError):
    rasterize(np.zeros((4, 4, 3), np.float32), 32)
