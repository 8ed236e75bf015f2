"""On-the-fly augmentations: pure functions `f(sample, rng_or_seed, **params) -> sample`.

The sample convention (the data pipelines use it too). A sample is a plain dict:

  "sketch":    Sketch, the query; strokes may carry StrokeLabel(object_id, category, part).
  "image":     optional (H, W, 3) uint8 photo.
  "masks":     optional (K, H, W) bool/uint8 masks aligned with the image, described by
  "mask_info": a list of K dicts {"object_id": int, "part": str ("" = whole object),
               "category": str}.
  "aligned":   True when the sketch canvas maps onto the photo by plain scaling
               (photo_px = canvas_xy * (W / canvas_w, H / canvas_h); Sketchy-style pairs),
               False for object-centred sketches on their own canvas.
  "target":    optional (H, W) bool, what the query depicts (evaluation only). Every
               augmentation keeps it true for the augmented query, or removes it when it
               cannot (never leaves it wrong).
  "region":    optional (x0, y0, x1, y1) in canvas units, set by partition.
  "queries":   optional list of Sketch for a multi-sketch query (group with query="separate");
               "sketch" then holds their merged view.
  "stroke_widths" / "query_stroke_widths": optional per-stroke width multipliers for "sketch"
               / each of "queries" (set by width_jitter; missing means 1).
  "tiles", "chosen": set by group: the mosaic pixel box of each tile (kept up to date by
               crop and hflip) and the indices of the tiles the query shows.

Rules every augmentation keeps:
  - it returns a new dict and never writes into the arrays or Sketch of its input;
  - its randomness comes only from the numpy Generator it is given (or one made from the seed
    it is given: an int, a tuple of ints or a SeedSequence), never from global state, so the
    same seed gives the same sample in any process;
  - masks and target are read only to keep them consistent, never to decide what the model
    sees (training is mask-free); the one exception is crop at evaluation time, which keeps
    the target's box in view when a target is given.

Stroke level (stroke.py): stroke_dropout, first_n_strokes, point_jitter, width_jitter,
affine, elastic. Partitioning (partitioning.py): partition. Grouping (grouping.py): group,
which takes a list of 1-4 samples. Photo level (photo.py): crop, zoom_out, hflip, colour_jitter.
Chains (compose.py): build_augment(config_list) -> Augment, a picklable
(sample, seed) -> sample.
"""

from sketchseg_jax.sketch.augment.compose import REGISTRY, Augment, build_augment, parameters
from sketchseg_jax.sketch.augment.grouping import group
from sketchseg_jax.sketch.augment.partitioning import partition
from sketchseg_jax.sketch.augment.photo import colour_jitter, crop, hflip, zoom_out
from sketchseg_jax.sketch.augment.sample import as_rng
from sketchseg_jax.sketch.augment.stroke import (
    affine, elastic, first_n_strokes, point_jitter, stroke_dropout, width_jitter)

__all__ = [
    "REGISTRY", "Augment", "build_augment", "parameters", "as_rng", "partition", "group",
    "stroke_dropout", "first_n_strokes", "point_jitter", "width_jitter", "affine", "elastic",
    "crop", "zoom_out", "hflip", "colour_jitter",
]
