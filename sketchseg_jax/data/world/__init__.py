"""A procedural sketch-photo-mask world: objects made of named parts, photographed in clutter
and sketched by a freehand hand, with true instance and part masks.

    world = World(size=224, split="train", seed=0, canvas=256,
                  heldout=("bus", "rocket", "umbrella"), plain_background_share=0.3,
                  max_objects=4, min_objects=1, repeat_share=0.3, occluder_share=0.15,
                  max_occlusion=0.5, grain=3.0, style=Style(), categories=None)

  size: int or (width, height) of the photos; canvas: side of a sketch canvas in canvas units.
  world.categories: the categories this split draws from. "train" and "val" leave the held-out
  categories out; "test" draws from all of them (seen and held out), so zero-shot results are
  the test samples whose category is in world.heldout_categories. world.all_categories holds
  the 16 categories of the table (categories.CATEGORIES: name, part names, builder).
  categories: optionally narrows the split to a subset of its categories (for example only
  the held-out ones on "test"); every object of every sample then comes from that subset.

  world.sbir_pair(index, aligned=False) -> sample: the SBIR kind, one object centred in its
    photo (plain product-shot backdrop with probability plain_background_share, else clutter)
    and its sketch, object-centred ("aligned" False) or, with aligned=True, placed where the
    object is. Keys: image, sketch, stroke_widths, aligned, category, object_id (0), target
    (its mask), masks, mask_info, background ("plain" | "clutter").
  world.scene(index) -> {"image", "masks", "mask_info", "objects"}: the scene kind, 1-4
    objects (min_objects..max_objects) on clutter, sometimes several of one category,
    overlapping in depth order, sometimes behind a non-object occluder. "objects" has one dict
    per object: object_id, category, sketch (object-centred), stroke_widths, aligned_sketch,
    parts (its part names), box (x0, y0, x1, y1 photo pixels), visible (share not hidden).
  world.query(index, granularity, aligned=False) -> sample with image, masks, mask_info,
    sketch, stroke_widths, target, granularity, aligned, category, categories, object_ids:
      "object":   one object's sketch; target its visible mask.
      "part":     the strokes of 1-3 of one object's parts (a strict subset; labels kept, on
                  the whole object's canvas); target the union of those part masks; "parts".
      "group":    2-3 objects' sketches merged on one canvas (at their photo places or side
                  by side), "queries"/"query_stroke_widths" the separate object-centred ones;
                  target the union of their masks; "category" joins their names with "+".
      "instance": a scene with 2-3 instances of one category; the sketch of one of them;
                  target its mask only; "instances" the count.
      "category": the same kind of scene; the sketch of a new instance of that category that
                  is not in the photo (strokes labelled object_id -1); target all instances.
    group, instance and category scenes have at least 2 objects whatever max_objects says.

Samples follow the convention of sketchseg_jax.sketch.augment: masks (K, H, W) bool, one per
object (part "") followed by one per part, visible pixels only, each described by mask_info
{"object_id", "part", "category"}; every stroke carries StrokeLabel(object_id, category,
part). An aligned sketch's canvas is the photo frame scaled to width `canvas`
(photo_px = canvas_xy * W / canvas). Object-centred sketches fill their canvas less a margin of
5-12%.

Determinism: a sample is a pure function of (seed, split, index, kind) through
np.random.SeedSequence([seed, split_id, index, kind_id]); the same arguments give the same bytes
in any process, and splits never share a sample. A World holds only its settings: cheap to
build and to pickle into grain workers.
"""

from sketchseg_jax.data.world.categories import (
    CATEGORIES, CATEGORY_NAMES, DEFAULT_HELDOUT, Category, shape_families)
from sketchseg_jax.data.world.draw import Drawing, Style
from sketchseg_jax.data.world.world import GRANULARITIES, SPLITS, World

__all__ = ["World", "Style", "Drawing", "Category", "CATEGORIES", "CATEGORY_NAMES",
           "DEFAULT_HELDOUT", "GRANULARITIES", "SPLITS", "shape_families"]
