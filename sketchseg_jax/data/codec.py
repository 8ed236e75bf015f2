"""Samples <-> flat records of numpy arrays, for array_record / TFDS storage.

A record has five features, so a TFDS dataset of samples needs no TensorFlow (no Image
feature, only uint8/float32/int32 tensors):
  image          (H, W, 3) uint8 (an empty (0, 0, 3) array when the sample has no photo)
  masks_packed   (N,) uint8: every mask-like array (`masks`, `target`) bit-packed, back to back
  points         (P, 2) float32: the points of every stroke of every Sketch in the sample
  stroke_lengths (S,) int32: points per stroke, in order
  meta           (M,) uint8: UTF-8 JSON of everything else, with Sketches and packed masks
                 replaced by references into the arrays above
Every value round-trips exactly (float32 survives JSON through float64).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.types import Sketch, StrokeLabel

PACKED_KEYS = ("masks", "target")
FEATURE_KEYS = ("image", "masks_packed", "points", "stroke_lengths", "meta")


class _Encoder:
  def __init__(self):
    self.points, self.lengths, self.packed = [], [], []
    self.num_strokes = 0
    self.packed_bytes = 0

  def sketch(self, s: Sketch) -> dict:
    ref = {"first_stroke": self.num_strokes, "num_strokes": s.num_strokes,
           "canvas": list(s.canvas_size)}
    for stroke in s.strokes:
      self.points.append(stroke)
      self.lengths.append(stroke.shape[0])
    self.num_strokes += s.num_strokes
    if s.labels is not None:
      ref["labels"] = [None if l is None else [l.object_id, l.category, l.part] for l in s.labels]
    for name in ("times", "pressures"):
      extra = getattr(s, name)
      if extra is not None:
        ref[name] = [self.array(a) for a in extra]
    return {"__sketch__": ref}

  def mask(self, a: np.ndarray) -> dict:
    a = np.asarray(a)
    bits = np.packbits(a.astype(bool).reshape(-1))
    ref = {"offset": self.packed_bytes, "nbytes": int(bits.size), "shape": list(a.shape),
           "dtype": a.dtype.str}
    self.packed.append(bits)
    self.packed_bytes += int(bits.size)
    return {"__mask__": ref}

  @staticmethod
  def array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
      raise UserError(f"cannot encode an array of dtype {a.dtype}")
    return {"__array__": {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.reshape(-1).tolist()}}

  def value(self, v: Any, key: str = "") -> Any:
    if isinstance(v, Sketch):
      return self.sketch(v)
    if isinstance(v, np.ndarray) and key in PACKED_KEYS:
      return self.mask(v)
    if isinstance(v, (np.ndarray, np.generic)):
      return self.array(np.asarray(v)) if isinstance(v, np.ndarray) else v.item()
    if isinstance(v, StrokeLabel):
      return {"__label__": [v.object_id, v.category, v.part]}
    if isinstance(v, dict):
      bad = [k for k in v if not isinstance(k, str)]
      if bad:
        raise UserError(f"sample keys must be strings, got {bad[:3]}")
      return {k: self.value(x, k) for k, x in v.items()}
    if isinstance(v, tuple):
      return {"__tuple__": [self.value(x) for x in v]}
    if isinstance(v, list):
      return [self.value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
      return v
    raise UserError(f"cannot encode a value of type {type(v).__name__} under {key!r}")


def encode(sample: dict) -> dict:
  """A flat record (the five FEATURE_KEYS) from a sample dict."""
  enc = _Encoder()
  rest = {k: v for k, v in sample.items() if k != "image"}
  meta = enc.value(rest)
  image = sample.get("image")
  image = np.zeros((0, 0, 3), np.uint8) if image is None else np.asarray(image, np.uint8)
  return {
      "image": image,
      "masks_packed": (np.concatenate(enc.packed) if enc.packed else np.zeros(0, np.uint8)),
      "points": (np.concatenate(enc.points).astype(np.float32) if enc.points
                 else np.zeros((0, 2), np.float32)),
      "stroke_lengths": np.asarray(enc.lengths, np.int32),
      "meta": np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), np.uint8),
  }


def decode(record: dict) -> dict:
  """The sample dict a record was encoded from."""
  missing = [k for k in FEATURE_KEYS if k not in record]
  if missing:
    raise UserError(f"not a sketchseg record: missing features {missing}")
  points = np.asarray(record["points"], np.float32)
  lengths = np.asarray(record["stroke_lengths"], np.int64)
  starts = np.concatenate([[0], np.cumsum(lengths)])
  if starts[-1] != points.shape[0]:
    raise UserError(f"corrupt record: stroke lengths sum to {starts[-1]} but there are "
                    f"{points.shape[0]} points")
  packed = np.asarray(record["masks_packed"], np.uint8)
  try:
    meta = json.loads(bytes(np.asarray(record["meta"], np.uint8)).decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"corrupt record metadata: {e}") from e

  def array(ref):
    return np.asarray(ref["data"], dtype=np.dtype(ref["dtype"])).reshape(ref["shape"])

  def value(v):
    if isinstance(v, dict):
      if "__sketch__" in v:
        ref = v["__sketch__"]
        i0 = ref["first_stroke"]
        strokes = [points[starts[i]:starts[i + 1]] for i in range(i0, i0 + ref["num_strokes"])]
        labels = ref.get("labels")
        if labels is not None:
          labels = [None if l is None else StrokeLabel(int(l[0]), l[1], l[2]) for l in labels]
        extras = {n: [array(a["__array__"]) for a in ref[n]] for n in ("times", "pressures") if n in ref}
        return Sketch(strokes, ref["canvas"], labels=labels, **extras)
      if "__mask__" in v:
        ref = v["__mask__"]
        bits = packed[ref["offset"]:ref["offset"] + ref["nbytes"]]
        n = int(np.prod(ref["shape"]))
        return np.unpackbits(bits, count=n).reshape(ref["shape"]).astype(np.dtype(ref["dtype"]))
      if "__array__" in v:
        return array(v["__array__"])
      if "__tuple__" in v:
        return tuple(value(x) for x in v["__tuple__"])
      if "__label__" in v:
        l = v["__label__"]
        return StrokeLabel(int(l[0]), l[1], l[2])
      return {k: value(x) for k, x in v.items()}
    if isinstance(v, list):
      return [value(x) for x in v]
    return v

  sample = value(meta)
  image = np.asarray(record["image"])
  if image.size:
    sample["image"] = image
  return sample
