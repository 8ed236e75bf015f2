"""The Predictor: a trained segmenter behind a SAM-style interface.

  p = Predictor.from_checkpoint("runs/seg")      # a "segmenter" or "supervised" workdir
  p.set_image("photo.jpg")                       # the backbone runs once; its features stay
  mask = p.segment("cat.svg")                    # float32 (H, W) at the photo's size
  mask = p.segment("ear1.ndjson", "ear2.png")    # several separate sketches: max of their masks
  masks = p.predict_batch(photos, sketches)      # offline: many photos at a fixed batch size

Sketches are what `sketchseg_jax.sketch` reads: a file path in any accepted format, a
`Sketch`, or a raster array, rasterised exactly as the training pipeline does
(`Featurize`: the model's raster_size, sketch_width and sketch_fit, ink rounded to uint8).
Raster arrays: a 2-D float or bool array is an ink map (ink = 1, paper = 0); a 2-D uint8
array is the model's own raster convention (ink = 255, paper = 0, what `rasters()` returns);
an (H, W, 3|4) uint8 array is a picture of a sketch (dark ink on light paper, as a PNG file is
read). Rasters of another size are resized as the pipeline resizes raster sketches.

Masks at the photo's size: the model's low-resolution logits (one per patch) are upsampled
bilinearly with half-pixel centres (torch's F.interpolate(mode="bilinear",
align_corners=False), no antialiasing, also when shrinking) straight to the ORIGINAL photo
size, then the max over the sketches is taken and the sigmoid applied (max and sigmoid
commute); the PyTorch export is to do the same. At the model's own image size this equals
`stage.predict`. A segmenter trained with model.regions instead averages its logits over the
photo's colour regions at the model's size (upsampled there, max over the sketches, pooled, as
in training) and upsamples that map to the original size. With model.min_component, the
mask's components (at 0.5, at the size it is returned) smaller than that share of its largest
are then dropped.

Compilation: the image path compiles once per batch size (1 for set_image, batch_size for
predict_batch); the head once per (images, bucket), the number of sketches padded up to 1,
2, 4 or 8 (more run in groups of 8); the sketch tower once per bucket, new sketches run in
whole buckets (3 as 2 + 1, 13 as 8 + 4 + 1) so it never runs on padding.
Sketch-tower embeddings are cached by raster content (the last `cache_size`), so a sketch
seen before costs only the head. The last upsample to
the photo's size is numpy on the host (separable gathers and lerps, taps cached per size), so
a new photo size never compiles anything. `trace_counts` says how many times each jitted
function was traced.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sketchseg_jax.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

SEGMENTER_STAGES = ("segmenter", "supervised")
BUCKETS = (1, 2, 4, 8)
MAX_PHOTO_PIXELS = 40_000_000


# ------------------------------------------------------------------------------ photos

def load_photo(image, where: str = "photo") -> np.ndarray:
  """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array.

  Paths are read with PIL (EXIF orientation applied, converted to RGB); arrays may be (H, W, 3)
  uint8, (H, W) uint8 grey or (H, W, 4) uint8 (alpha dropped). Anything over
  MAX_PHOTO_PIXELS, unreadable, or of another type raises UserError.
  """
  from PIL import Image
  if isinstance(image, (str, bytes, os.PathLike)):
    return _read_photo(os.fsdecode(image))
  if isinstance(image, Image.Image):
    _check_pixels(image.width, image.height, where)
    return np.asarray(image.convert("RGB"))
  if not (isinstance(image, np.ndarray) or hasattr(image, "__array__")):
    raise UserError(f"{where}: expected a path, a PIL image or an (H, W, 3) uint8 array, got "
                    f"{type(image).__name__}")
  a = np.asarray(image)
  if a.dtype != np.uint8:
    raise UserError(f"{where}: a photo array must be uint8 (0..255), got {a.dtype}")
  if a.ndim == 2:
    a = np.repeat(a[:, :, None], 3, axis=2)
  elif a.ndim == 3 and a.shape[2] == 4:
    a = a[:, :, :3]
  if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
    raise UserError(f"{where}: a photo array must be (H, W, 3), got shape {a.shape}")
  _check_pixels(a.shape[1], a.shape[0], where)
  return np.ascontiguousarray(a)


def _check_pixels(width: int, height: int, where: str):
  if width * height > MAX_PHOTO_PIXELS:
    raise UserError(f"{where}: {width}x{height} pixels is over the limit of "
                    f"{MAX_PHOTO_PIXELS / 1e6:g} megapixels; shrink it first")
  if width < 1 or height < 1:
    raise UserError(f"{where}: empty image ({width}x{height})")


def _read_photo(path: str) -> np.ndarray:
  from PIL import Image, ImageOps, UnidentifiedImageError
  if os.path.isdir(path):
    raise UserError(f"{path}: is a directory, not a photo")
  try:
    f = open(path, "rb")
  except FileNotFoundError:
    raise UserError(f"{path}: photo not found") from None
  except OSError as e:
    raise UserError(f"{path}: cannot open the photo: {e.strerror or e}") from None
  with f:
    try:
      with warnings.catch_warnings():
        # The size is checked below against our own, lower, cap.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(f) as im:
          _check_pixels(im.width, im.height, path)
          im = ImageOps.exif_transpose(im)
          return np.asarray(im.convert("RGB"))
    except UserError:
      raise
    except Image.DecompressionBombError:
      raise UserError(f"{path}: the photo is over the limit of {MAX_PHOTO_PIXELS / 1e6:g} "
                      "megapixels") from None
    except UnidentifiedImageError:
      raise UserError(f"{path}: not an image file PIL can read") from None
    # Damaged files surface as any of these, depending on the decoder and the damage.
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
            ZeroDivisionError, MemoryError) as e:
      text = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
      raise UserError(f"{path}: corrupt or unsupported photo ({text})") from None


def resize_photo(photo: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8 with PIL bilinear, as the data pipeline does."""
  from PIL import Image
  if photo.shape[:2] == (size, size):
    return photo
  return np.asarray(Image.fromarray(photo).resize((size, size), Image.BILINEAR))


# ------------------------------------------------------------------------------ masks

@functools.lru_cache(maxsize=128)
def interpolation_taps(n_in: int, n_out: int) -> tuple:
  """(i0, i1, w1) of 1-D linear interpolation from n_in to n_out samples with half-pixel
  centres and clamped edges (torch's bilinear align_corners=False along one axis):
  out[j] = (1 - w1[j]) * x[i0[j]] + w1[j] * x[i1[j]]."""
  src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = (src - i0).astype(np.float32)
  for a in (i0, i1, w1):
    a.setflags(write=False)
  return i0, i1, w1


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The same interpolation as an (n_out, n_in) float32 matrix."""
  i0, i1, w1 = interpolation_taps(n_in, n_out)
  m = np.zeros((n_out, n_in), np.float32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), 1.0 - w1)
  np.add.at(m, (rows, i1), w1)
  return m


def _lerp(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
  i0, i1, w1 = interpolation_taps(x.shape[axis], n_out)
  shape = [1] * x.ndim
  shape[axis] = n_out
  a = np.take(x, i0, axis=axis)
  b = np.take(x, i1, axis=axis)
  b -= a
  b *= w1.reshape(shape)
  a += b
  return a


def upsample_logits(low: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """(Q, h, w) logits -> (Q, H, W) float32, bilinear (see `interpolation_taps`). Gathers and
  lerps rather than matrix products: two taps per output, and no BLAS threads to wake."""
  low = np.asarray(low, np.float32)
  return _lerp(_lerp(low, int(size[0]), 1), int(size[1]), 2)


def sigmoid(z: np.ndarray) -> np.ndarray:
  with np.errstate(over="ignore"):
    out = np.exp(-np.asarray(z, np.float32))
  out += 1.0
  return np.reciprocal(out, out=out)


def drop_small_components(probs: np.ndarray, min_share: float) -> np.ndarray:
  """(H, W) probabilities with the 4-connected components of `probs > 0.5` smaller than
  `min_share` of the largest set to 0: numpy's twin of
  sketchseg_jax.models.segmenter.drop_small_components (model.min_component)."""
  if not min_share:
    return probs
  from scipy import ndimage
  on = probs > 0.5
  labels, n = ndimage.label(on)
  if n < 2:
    return probs
  sizes = np.bincount(labels.ravel())[1:]
  small = np.flatnonzero(sizes < min_share * sizes.max()) + 1
  return np.where(np.isin(labels, small), np.float32(0.0), probs).astype(probs.dtype)


def mask_from_logits(low: np.ndarray, size: Sequence[int],
                     threshold: Optional[float] = None,
                     regions: Optional[np.ndarray] = None,
                     min_component: float = 0.0) -> np.ndarray:
  """(Q, h, w) logits of one photo's sketches -> its (H, W) mask: float32 probabilities, or
  bool `>= threshold` when a threshold is given. With `regions` (the colour regions of the
  photo at the model's size, for a model.regions segmenter) the logits are pooled over them
  at that size, as in training, and the pooled map is upsampled to `size`. With
  `min_component`, the mask's small components at `size` are dropped (see
  drop_small_components)."""
  if regions is None:
    z = upsample_logits(low, size).max(axis=0)
  else:
    from sketchseg_jax.data.proposals import region_mean
    z = region_mean(upsample_logits(low, regions.shape).max(axis=0), regions)
    if tuple(size) != regions.shape:
      z = upsample_logits(z[None], size)[0]
  probs = drop_small_components(sigmoid(z), min_component)
  return probs if threshold is None else probs >= float(threshold)


def bucket(n: int) -> int:
  """The padded sketch count for n <= 8 sketches."""
  for b in BUCKETS:
    if n <= b:
      return b
  raise ValueError(f"bucket() takes at most {BUCKETS[-1]} sketches, got {n}")


def _check_threshold(threshold):
  if threshold is None:
    return None
  t = float(threshold)
  if not 0.0 < t < 1.0:
    raise UserError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
  return t


# ------------------------------------------------------------------------------ the Predictor

class Predictor:
  """Segments one photo (cached features) or many (batched) with the sketches given."""

  def __init__(self, stage, params, batch_size: int = 8, cache_size: int = 64):
    import jax

    from sketchseg_jax.models.segmenter import Segmenter
    from sketchseg_jax.param_tree import plain
    if int(batch_size) < 1:
      raise UserError(f"batch_size must be >= 1, got {batch_size}")
    self.stage = stage
    self.batch_size = int(batch_size)
    data = stage.data_config("eval")
    self.image_size = int(data["image_size"])
    self.raster_size = int(data["raster_size"])
    self.sketch_width = float(data["sketch_width"])
    self.sketch_fit = str(data.get("sketch_fit") or "canvas")
    self.region_threshold = float(data.get("regions") or 0.0)
    self.min_component = float(stage.mcfg.get("min_component") or 0.0)
    params = plain(params)
    missing = [k for k in ("segmenter", "teacher") if k not in params]
    if missing:
      raise UserError(f"Predictor params lack {missing}; expected a segmenter stage's "
                      "{'segmenter', 'teacher', ...} tree")
    # Only the segmenter and the sketch tower run here; a student photo tower would not.
    self.params = jax.device_put({k: params[k] for k in ("segmenter", "teacher")})
    self.trace_counts = collections.Counter()
    model = stage.model

    def features(seg, photos):
      self.trace_counts["features"] += 1
      return model.apply({"params": seg}, photos, method=Segmenter.features)

    def queries(teacher, ink):
      self.trace_counts["queries"] += 1
      return stage.queries({"teacher": teacher}, ink[None])[0].astype(np.float32)

    def logits(seg, feats, q):
      self.trace_counts["logits"] += 1
      z = model.apply({"params": seg}, feats, q, method=Segmenter.logits)
      return z.astype(np.float32)

    self._features_fn = jax.jit(features)
    self._queries_fn = jax.jit(queries)
    self._logits_fn = jax.jit(logits)
    # Sketch-tower embeddings by raster content: redrawing one sketch of a group (the demo),
    # or segmenting many photos with one sketch, runs the tower only for what is new.
    self._embeddings = collections.OrderedDict()
    self.cache_size = int(cache_size)
    self._features = None   # (1, h, w, E) on device
    self._size = None       # (H, W) of the photo as given
    self._regions = None    # its colour regions at the model's size (model.regions only)
    self.workdir = self.step = None  # set by from_checkpoint
    # One photo at a time: a server calling from several threads must not interleave
    # set_image and segment, nor two cache updates.
    self._lock = threading.RLock()

  @classmethod
  def from_checkpoint(cls, workdir, step: Optional[int] = None, **kwargs) -> "Predictor":
    """The Predictor of a trained segmenter's workdir (its config.json and checkpoints/).
    A workdir without config.json but with a `segmenter/` run inside (the quickstart's layout)
    means that run."""
    from sketchseg_jax.param_tree import plain
    from sketchseg_jax.train import config_lib, stage as stage_lib
    import jax
    workdir = Path(workdir)
    if not workdir.is_dir():
      raise CheckpointError(f"checkpoint directory {workdir} does not exist")
    if not (workdir / "config.json").exists() and (workdir / "segmenter" / "config.json").exists():
      workdir = workdir / "segmenter"
    config = config_lib.read_saved_config(workdir)
    kind = config.get("stage")
    if kind not in SEGMENTER_STAGES:
      raise CheckpointError(f"{workdir} holds a {kind} checkpoint, not a segmenter (its "
                            f"config.json says stage={kind!r}; expected one of "
                            f"{', '.join(SEGMENTER_STAGES)})")
    if not (workdir / "checkpoints").is_dir():
      raise CheckpointError(f"{workdir} has no checkpoints/ folder; has the run saved a "
                            "checkpoint yet?")
    stage = stage_lib.build_saved(config, workdir)
    from sketchseg_jax.train.checkpoints import read_params
    params, got = read_params(workdir / "checkpoints", step)
    missing = [k for k in ("segmenter", "teacher") if k not in params]
    if missing:
      raise CheckpointError(f"checkpoint {workdir}/checkpoints/{got} lacks {missing}: not a "
                            "segmenter's checkpoint")
    log.info("predictor from %s, step %d", workdir, got)
    predictor = cls(stage, jax.device_get(plain(params)), **kwargs)
    predictor.workdir, predictor.step = workdir, got
    return predictor

  def __repr__(self):
    return (f"Predictor(image_size={self.image_size}, raster_size={self.raster_size}, "
            f"image set: {self._size is not None})")

  # -------------------------------------------------------------- the photo

  def set_image(self, image) -> None:
    """Read the photo (a path, PIL image or HxWx3 uint8 array), resize it to the model's
    size and compute its features once; later `segment` calls reuse them."""
    photo = load_photo(image)
    x = resize_photo(photo, self.image_size)[None]
    regions = self.regions_of(x[0])
    with self._lock:
      self._features = self._features_fn(self.params["segmenter"], x)
      self._size = photo.shape[:2]
      self._regions = regions

  def regions_of(self, resized: np.ndarray) -> Optional[np.ndarray]:
    """The colour regions a model.regions segmenter pools over, of a photo at the model's
    size (None for a segmenter without them)."""
    if not self.region_threshold:
      return None
    from sketchseg_jax.data.proposals import colour_regions
    return colour_regions(resized, self.region_threshold)

  @property
  def regions(self) -> Optional[np.ndarray]:
    """The current photo's colour regions at the model's size, or None (see regions_of)."""
    return self._regions

  def reset_image(self) -> None:
    self._features = self._size = self._regions = None

  @property
  def is_image_set(self) -> bool:
    return self._features is not None

  @property
  def original_size(self) -> Optional[tuple]:
    """(H, W) of the photo given to set_image."""
    return None if self._size is None else tuple(self._size)

  @property
  def image_features(self) -> np.ndarray:
    """(h, w, E) unit features of the current photo."""
    self._need_image()
    return np.asarray(self._features[0])

  def _need_image(self):
    if self._features is None:
      raise UserError("no image set: call set_image(photo) before segment()")

  # -------------------------------------------------------------- sketches

  def raster(self, sketch, where: str = "sketch") -> np.ndarray:
    """One sketch -> the model's (R, R) uint8 raster, ink = 255; bad input raises UserError."""
    from sketchseg_jax import sketch as sketch_lib
    from sketchseg_jax.sketch import Sketch, SketchFormatError
    if isinstance(sketch, (str, bytes, os.PathLike)):
      where = os.fsdecode(sketch)
      sketch = sketch_lib.load(sketch)
    if isinstance(sketch, Sketch):
      if sketch.num_strokes == 0:
        raise SketchFormatError(f"{where}: empty sketch (no strokes)")
      ink = sketch_lib.rasterize(sketch, self.raster_size, width=self.sketch_width,
                                 fit=self.sketch_fit)
    else:
      ink = sketch_lib.resize_raster(self._ink_array(sketch, where), self.raster_size,
                                     fit=self.sketch_fit)
    out = np.round(ink * 255).astype(np.uint8)
    if not out.any():
      if isinstance(sketch, Sketch):
        w, h = sketch.canvas_size
        raise SketchFormatError(f"{where}: no stroke lies inside its {w:g}x{h:g} canvas, so "
                                "nothing would be drawn")
      raise SketchFormatError(f"{where}: empty sketch (the raster holds no ink)")
    return out

  @staticmethod
  def _ink_array(value, where):
    """A raster sketch as something resize_raster reads: float ink maps, or pictures."""
    from PIL import Image

    from sketchseg_jax.sketch import SketchFormatError
    if isinstance(value, Image.Image):
      value = np.asarray(value.convert("RGBA"))  # transparency reads as paper
    if not (isinstance(value, np.ndarray) or hasattr(value, "__array__")):
      raise SketchFormatError(f"{where}: expected a sketch file path, a Sketch or a raster "
                              f"array, got {type(value).__name__}")
    a = np.asarray(value)
    if a.size == 0 or a.ndim not in (2, 3):
      raise SketchFormatError(f"{where}: a raster sketch must be (H, W) or (H, W, 3|4), got "
                              f"shape {a.shape}")
    if a.ndim == 3:
      if a.dtype != np.uint8 or a.shape[2] not in (3, 4):
        raise SketchFormatError(f"{where}: a picture of a sketch must be (H, W, 3|4) uint8, "
                                f"got {a.dtype} {a.shape}")
      return a
    if a.dtype == np.bool_:
      return a.astype(np.float32)
    if a.dtype == np.uint8:
      return a.astype(np.float32) / 255.0  # the model's rasters: ink = 255
    if a.dtype.kind == "f":
      if not np.all(np.isfinite(a)):
        raise SketchFormatError(f"{where}: the raster has non-finite values")
      if a.min() < 0 or a.max() > 1:
        raise SketchFormatError(f"{where}: a float raster is an ink map in [0, 1], got values "
                                f"in [{a.min():g}, {a.max():g}]")
      return a.astype(np.float32)
    raise SketchFormatError(f"{where}: a raster sketch must be float (ink = 1), bool or uint8 "
                            f"(ink = 255), got {a.dtype}")

  def rasters(self, sketch, *more) -> np.ndarray:
    """(Q, R, R) uint8 rasters of the sketches `segment` would be given."""
    items = _flatten(sketch, more)
    several = len(items) > 1
    return np.stack([self.raster(s, f"sketch {i + 1}" if several else "sketch")
                     for i, s in enumerate(items)])

  # -------------------------------------------------------------- segmentation

  def embed(self, rasters: np.ndarray) -> np.ndarray:
    """(K, R, R) uint8 rasters -> (K, E) float32 sketch-tower embeddings (raw, as the
    segmenter's queries take them); recent ones come from a cache keyed by content."""
    keys = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rasters]
    with self._lock:
      return self._embed(rasters, keys)

  def _embed(self, rasters, keys):
    todo = list(dict.fromkeys(k for k in keys if k not in self._embeddings))
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    while todo:
      # Whole buckets only (3 sketches run as 2 + 1): the tower is the expensive part, and
      # padding would run it on blank rasters.
      take = max(b for b in BUCKETS if b <= len(todo))
      chunk, todo = todo[:take], todo[take:]
      part = np.stack([rasters[first[k]] for k in chunk])
      emb = np.asarray(self._queries_fn(self.params["teacher"], part))
      for k, e in zip(chunk, emb):
        self._embeddings[k] = e
    out = np.stack([self._embeddings[k] for k in keys])
    for k in keys:
      self._embeddings.move_to_end(k)
    while len(self._embeddings) > self.cache_size:
      self._embeddings.popitem(last=False)
    return out

  def _low_logits(self, feats, q: np.ndarray) -> np.ndarray:
    """feats (N, h, w, E) on device, q (N, Q, E) -> (N, Q, h, w) numpy logits."""
    n, count = q.shape[:2]
    out = []
    for lo in range(0, count, BUCKETS[-1]):
      part = q[:, lo:lo + BUCKETS[-1]]
      k = part.shape[1]
      if bucket(k) != k:
        part = np.concatenate([part, np.zeros((n, bucket(k) - k, q.shape[2]), np.float32)], 1)
      out.append(np.asarray(self._logits_fn(self.params["segmenter"], feats, part))[:, :k])
    return np.concatenate(out, axis=1)

  def logits(self, sketch, *more) -> np.ndarray:
    """(Q, h, w) low-resolution logits of the current photo for each sketch."""
    ink = self.rasters(sketch, *more)
    with self._lock:
      self._need_image()
      return self._low_logits(self._features, self.embed(ink)[None])[0]

  def segment(self, sketch, *more, threshold: Optional[float] = None) -> np.ndarray:
    """The mask of the current photo for a sketch, or for several separate sketches (given
    as more arguments or as a list): float32 (H, W) probabilities at the photo's size, the
    max over the sketches; bool `>= threshold` when threshold is given."""
    threshold = _check_threshold(threshold)
    with self._lock:
      low, size, regions = self.logits(sketch, *more), self._size, self._regions
    return mask_from_logits(low, size, threshold, regions, self.min_component)

  def predict_batch(self, images: Sequence, sketches: Sequence,
                    threshold: Optional[float] = None) -> list:
    """Masks for many photos: images[i] (path, PIL image or array) with sketches[i] (one
    sketch, or a list of separate sketches). Photos run through the model batch_size at a
    time (the last batch padded). Returns one mask per photo, as `segment` would."""
    threshold = _check_threshold(threshold)
    images, sketches = list(images), list(sketches)
    if len(images) != len(sketches):
      raise UserError(f"predict_batch got {len(images)} images and {len(sketches)} sketch "
                      "entries; give one entry (a sketch or a list) per image")
    masks = []
    b = self.batch_size
    for lo in range(0, len(images), b):
      photos = [load_photo(im, f"image {i}") for i, im in enumerate(images[lo:lo + b], lo)]
      rasters = [self.rasters(s) for s in sketches[lo:lo + b]]
      x = np.zeros((b, self.image_size, self.image_size, 3), np.uint8)
      for i, photo in enumerate(photos):
        x[i] = resize_photo(photo, self.image_size)
      emb = self.embed(np.concatenate(rasters))
      q = np.zeros((b, max(r.shape[0] for r in rasters), emb.shape[1]), np.float32)
      at = 0
      for i, r in enumerate(rasters):
        q[i, :r.shape[0]] = emb[at:at + r.shape[0]]
        at += r.shape[0]
      feats = self._features_fn(self.params["segmenter"], x)
      with self._lock:
        low = self._low_logits(feats, q)
      for i, (photo, r) in enumerate(zip(photos, rasters)):
        masks.append(mask_from_logits(low[i, :r.shape[0]], photo.shape[:2], threshold,
                                      self.regions_of(x[i]), self.min_component))
    return masks


def _flatten(sketch, more) -> list:
  items = []
  for s in (sketch,) + tuple(more):
    if isinstance(s, (list, tuple)):
      items.extend(s)
    else:
      items.append(s)
  if not items:
    raise UserError("no sketch given: segment needs at least one sketch")
  return items
