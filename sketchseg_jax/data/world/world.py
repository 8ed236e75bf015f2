"""The World: seeded generators of SBIR pairs, scenes and segmentation queries.

Every output is a pure function of (seed, split, index, kind): its numpy Generator comes from
SeedSequence([seed, split_id, index, kind_id]), nothing else is random, so any process (a grain
worker, another host) gets the same bytes. See the package docstring for the API.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sketchseg_jax.data.world import render
from sketchseg_jax.data.world.categories import CATEGORIES, CATEGORY_NAMES, DEFAULT_HELDOUT
from sketchseg_jax.data.world.draw import Drawing, Style, centred, draw_object, place
from sketchseg_jax.data.world.shapes import Part, objects_bbox
from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch.types import Sketch

SPLITS = ("train", "val", "test")
GRANULARITIES = ("object", "part", "group", "instance", "category")
_KIND_IDS = {"scene": 0, "sbir": 1, "object": 2, "part": 3, "group": 4, "instance": 5,
             "category": 6}


@dataclasses.dataclass
class _Object:
  """One instance: its posed parts (frame with longer side 1), box, and a drawing seed."""
  category: str
  parts: List[Part]
  box: Tuple[float, float, float, float]
  draw_seed: int
  scale: float = 0.0            # photo pixels per frame unit
  offset: Optional[np.ndarray] = None  # photo = frame * scale + offset
  _drawing: Optional[Drawing] = None

  def drawing(self, style: Style) -> Drawing:
    if self._drawing is None:
      rng = np.random.default_rng(self.draw_seed)
      self._drawing = draw_object(self.parts, self.box, rng, style)
    return self._drawing

  def photo_box(self) -> Tuple[float, float, float, float]:
    b = np.asarray(self.box) * self.scale + np.tile(self.offset, 2)
    return tuple(float(v) for v in b)


class World:
  """Procedural sketch-photo-mask world; see sketchseg_jax.data.world for the API."""

  def __init__(self, size=224, split: str = "train", seed: int = 0, canvas: float = 256.0,
               heldout: Sequence[str] = DEFAULT_HELDOUT, plain_background_share: float = 0.3,
               max_objects: int = 4, min_objects: int = 1, repeat_share: float = 0.3,
               occluder_share: float = 0.15, max_occlusion: float = 0.5, grain: float = 3.0,
               style: Style = Style(), categories: Optional[Sequence[str]] = None):
    if isinstance(size, numbers.Integral):
      w, h = int(size), int(size)
    else:
      try:
        w, h = (int(v) for v in size)
      except (TypeError, ValueError):
        raise UserError(f"size must be an int or (width, height), got {size!r}") from None
    if w < 16 or h < 16:
      raise UserError(f"size must be at least 16 pixels a side, got {size!r}")
    if split not in SPLITS:
      raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
      raise UserError(f"seed must be a non-negative int, got {seed!r}")
    unknown = [c for c in heldout if c not in CATEGORIES]
    if unknown:
      raise UserError(f"unknown held-out categories {unknown}; known: {list(CATEGORY_NAMES)}")
    if len(set(heldout)) >= len(CATEGORY_NAMES) - 1:
      raise UserError("hold out fewer categories: training needs at least two")
    if not 1 <= min_objects <= max_objects:
      raise UserError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    for name, v in (("plain_background_share", plain_background_share),
                    ("repeat_share", repeat_share), ("occluder_share", occluder_share),
                    ("max_occlusion", max_occlusion)):
      if not 0.0 <= float(v) <= 1.0:
        raise UserError(f"{name} must be in [0, 1], got {v!r}")
    if not float(canvas) > 0:
      raise UserError(f"canvas must be positive, got {canvas!r}")
    self.width, self.height = w, h
    self.split, self.seed, self.canvas = split, int(seed), float(canvas)
    self.heldout_categories = tuple(c for c in CATEGORY_NAMES if c in heldout)
    self.all_categories = CATEGORY_NAMES
    in_split = (CATEGORY_NAMES if split == "test" else
                tuple(c for c in CATEGORY_NAMES if c not in heldout))
    if categories is not None:
      outside = [c for c in categories if c not in in_split]
      if outside or not categories:
        raise UserError(f"categories {list(categories)} must be a non-empty subset of the "
                        f"{split!r} split's {list(in_split)}")
      in_split = tuple(c for c in in_split if c in categories)
    self.categories = in_split
    self.plain_background_share = float(plain_background_share)
    self.min_objects, self.max_objects = int(min_objects), int(max_objects)
    self.repeat_share, self.occluder_share = float(repeat_share), float(occluder_share)
    self.max_occlusion, self.grain, self.style = float(max_occlusion), float(grain), style

  def __repr__(self):
    return (f"World(size=({self.width}, {self.height}), split={self.split!r}, seed={self.seed}, "
            f"{len(self.categories)} categories)")

  @property
  def size(self) -> Tuple[int, int]:
    return self.width, self.height

  def category_parts(self, category: str) -> Tuple[str, ...]:
    """Every part name the category can have."""
    return CATEGORIES[category].parts

  # --------------------------------------------------------------------------- public samples

  def sbir_pair(self, index: int, aligned: bool = False) -> dict:
    """One object, centred in its photo (a plain backdrop with probability
    plain_background_share, else clutter), and its sketch (object-centred unless `aligned`)."""
    rng = self._rng(index, "sbir")
    obj = self._instance(rng, self._pick(rng, self.categories))
    plain = bool(rng.random() < self.plain_background_share)
    side = min(self.width, self.height)
    obj.scale = rng.uniform(0.55, 0.85) * side
    centre = np.array([self.width / 2, self.height / 2]) + rng.normal(0, 0.03 * side, 2)
    obj.offset = centre - _centre(obj.box) * obj.scale
    image, masks, info, _ = self._photo(rng, [obj], plain, occluder=False)
    sketch, widths = self._sketch(rng, obj, 0, aligned)
    return {"image": image, "sketch": sketch, "stroke_widths": widths, "aligned": bool(aligned),
            "category": obj.category, "object_id": 0, "target": masks[0].copy(),
            "masks": masks, "mask_info": info, "background": "plain" if plain else "clutter"}

  def scene(self, index: int) -> dict:
    """A photo of 1-4 objects (min_objects..max_objects) with every object's sketches."""
    rng = self._rng(index, "scene")
    objs = self._scene_objects(rng, int(rng.integers(self.min_objects, self.max_objects + 1)))
    image, masks, info, visible = self._photo(rng, objs, False, self._occluder(rng))
    objects = []
    for oid, obj in enumerate(objs):
      sketch, widths = self._sketch(rng, obj, oid, False)
      aligned, _ = self._sketch(rng, obj, oid, True)
      objects.append({"object_id": oid, "category": obj.category, "sketch": sketch,
                      "stroke_widths": widths, "aligned_sketch": aligned,
                      "parts": [p.name for p in obj.parts], "box": obj.photo_box(),
                      "visible": visible[oid]})
    return {"image": image, "masks": masks, "mask_info": info, "objects": objects}

  def query(self, index: int, granularity: str, aligned: bool = False) -> dict:
    """A scene photo and a query sketch of the given granularity with its target mask."""
    if granularity not in GRANULARITIES:
      raise UserError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    rng = self._rng(index, granularity)
    if granularity in ("object", "part"):
      n = int(rng.integers(self.min_objects, self.max_objects + 1))
      objs = self._scene_objects(rng, n)
    elif granularity == "group":
      top = max(2, self.max_objects)
      objs = self._scene_objects(rng, int(rng.integers(max(2, self.min_objects), top + 1)))
    else:
      objs = self._repeated_objects(rng)
    image, masks, info, visible = self._photo(rng, objs, False, self._occluder(rng))
    rows = {(m["object_id"], m["part"]): k for k, m in enumerate(info)}
    ok = _eligible(visible, [masks[rows[(i, "")]].sum() for i in range(len(objs))],
                   self.width * self.height)
    sample = {"image": image, "masks": masks, "mask_info": info, "granularity": granularity,
              "aligned": bool(aligned)}
    if granularity == "object":
      oid = int(rng.choice(ok))
      sketch, widths = self._sketch(rng, objs[oid], oid, aligned)
      target, ids = masks[rows[(oid, "")]].copy(), [oid]
    elif granularity == "part":
      oid, chosen = self._pick_parts(rng, objs, ok, masks, rows)
      sketch, widths = self._sketch(rng, objs[oid], oid, aligned, keep_parts=chosen)
      target = np.any(masks[[rows[(oid, p)] for p in chosen]], axis=0)
      ids = [oid]
      sample["parts"] = list(chosen)
    elif granularity == "group":
      pool = ok if len(ok) >= 2 else list(np.argsort(visible)[::-1][:2])
      k = int(rng.integers(2, min(3, len(pool)) + 1))
      ids = sorted(int(i) for i in rng.choice(pool, k, replace=False))
      sketch, widths, queries, qwidths = self._group_sketch(rng, objs, ids, aligned)
      sample["queries"], sample["query_stroke_widths"] = queries, qwidths
      target = np.any(masks[[rows[(i, "")] for i in ids]], axis=0)
    else:
      cat = objs[_repeated(objs)].category
      same = [i for i, o in enumerate(objs) if o.category == cat]
      if granularity == "instance":
        pool = [i for i in same if i in ok] or same
        oid = int(rng.choice(pool))
        sketch, widths = self._sketch(rng, objs[oid], oid, aligned)
        target, ids = masks[rows[(oid, "")]].copy(), [oid]
      else:
        sketch, widths = self._category_sketch(rng, cat, [objs[i] for i in same], aligned)
        target, ids = np.any(masks[[rows[(i, "")] for i in same]], axis=0), same
      sample["instances"] = len(same)
    cats = []
    for i in ids:
      if objs[i].category not in cats:
        cats.append(objs[i].category)
    sample.update({"sketch": sketch, "stroke_widths": widths, "target": target,
                   "object_ids": list(ids), "categories": cats, "category": "+".join(cats)})
    return sample

  # --------------------------------------------------------------------------- composition

  def _rng(self, index: int, kind: str) -> np.random.Generator:
    if not isinstance(index, numbers.Integral) or index < 0:
      raise UserError(f"index must be a non-negative int, got {index!r}")
    return np.random.default_rng(np.random.SeedSequence(
        [self.seed, SPLITS.index(self.split), int(index), _KIND_IDS[kind]]))

  @staticmethod
  def _pick(rng, names: Sequence[str]) -> str:
    return names[int(rng.integers(len(names)))]

  def _instance(self, rng, category: str) -> _Object:
    """A new instance, posed (tilt, mirror, slight stretch) and normalised: longer side 1."""
    cat = CATEGORIES[category]
    parts = cat.build(rng)
    box = objects_bbox(parts)
    a = np.deg2rad(rng.uniform(-cat.tilt, cat.tilt))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    stretch = float(np.exp(rng.uniform(-0.1, 0.1)))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = rot @ np.diag([flip * stretch, 1.0 / stretch])
    parts = [p.transformed(m, -m @ _centre(box)) for p in parts]
    box = objects_bbox(parts)
    size = max(box[2] - box[0], box[3] - box[1])
    parts = [p.transformed(np.eye(2) / size, -_centre(box) / size) for p in parts]
    return _Object(category, parts, objects_bbox(parts), int(rng.integers(2 ** 63)))

  def _scene_objects(self, rng, n: int) -> List[_Object]:
    names = [self._pick(rng, self.categories) for _ in range(n)]
    if n >= 2 and rng.random() < self.repeat_share:
      names[int(rng.integers(1, n))] = names[0]
      rng.shuffle(names)
    objs = [self._instance(rng, c) for c in names]
    self._layout(rng, objs)
    return objs

  def _repeated_objects(self, rng) -> List[_Object]:
    """2-3 instances of one category and, room permitting, others of other categories."""
    top = max(2, self.max_objects)
    cat = self._pick(rng, self.categories)
    k = int(rng.integers(2, min(3, top) + 1))
    others = [c for c in self.categories if c != cat]
    extra = int(rng.integers(0, top - k + 1)) if others else 0
    names = [cat] * k + [self._pick(rng, others) for _ in range(extra)]
    rng.shuffle(names)
    objs = [self._instance(rng, c) for c in names]
    self._layout(rng, objs)
    return objs

  def _layout(self, rng, objs: List[_Object]) -> None:
    """Sizes and places objects; any object's box may lose at most max_occlusion of its area
    to the others' boxes (summed), so every object stays mostly visible."""
    W, H = self.width, self.height
    side = min(W, H)
    n = len(objs)
    lo, hi = {1: (0.5, 0.85), 2: (0.38, 0.62)}.get(n, (0.3, 0.5))
    boxes, covered = [], []
    for obj in objs:
      w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
      length = rng.uniform(lo, hi) * side
      for attempt in range(48):
        bw, bh = w * length, h * length
        cx = rng.uniform(bw / 2, W - bw / 2) if bw < W else W / 2
        cy = rng.uniform(bh / 2, H - bh / 2) if bh < H else H / 2
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        inter = [_intersection(box, b) for b in boxes]
        area = bw * bh
        if (sum(inter) <= self.max_occlusion * area and
            all(c + i <= self.max_occlusion * _area(b) for c, i, b in zip(covered, inter, boxes))):
          break
        if attempt % 8 == 7:
          length *= 0.9
      covered = [c + i for c, i in zip(covered, inter)] + [sum(inter)]
      boxes.append(box)
      obj.scale = length
      obj.offset = np.array([cx, cy]) - _centre(obj.box) * length

  def _occluder(self, rng) -> bool:
    return bool(rng.random() < self.occluder_share)

  def _photo(self, rng, objs: List[_Object], plain: bool, occluder: bool):
    """(image, masks, mask_info, visible share per object) for posed, placed objects."""
    image, labels, table, full = self._render(rng, objs, plain, occluder)
    masks, info = _masks(labels, table, objs)
    rows = [k for k, m in enumerate(info) if m["part"] == ""]
    visible = [float(masks[r].sum()) / max(f, 1) for r, f in zip(rows, full)]
    return image, masks, info, visible

  def _render(self, rng, objs: List[_Object], plain: bool, occluder: bool):
    """(image, label map, [(object index, part name)] per label, full pixel count per
    object): the backdrop, then the objects back to front, then any occluder."""
    W, H = self.width, self.height
    if plain:
      base = render.plain_background(rng, W, H)
      pil = Image.fromarray(base.astype(np.uint8))
      for obj in objs:
        render.draw_shadow(pil, obj.photo_box(), rng.uniform(0.3, 0.8))
    else:
      base = render.cluttered_background(rng, W, H)
      pil = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
      count = int(rng.integers(3, 10) * max(1.0, W * H / 224 ** 2) ** 0.5)
      render.draw_distractors(pil, rng, count)
    img = np.asarray(pil, dtype=np.float32).copy()
    labels = np.zeros((H, W), np.int16)
    table, full = [], []
    for oid, obj in enumerate(objs):
      m = np.diag([obj.scale, obj.scale])
      parts = [p.transformed(m, obj.offset) for p in obj.parts]
      hues = dict(CATEGORIES[obj.category].hues)
      full.append(render.paint_object(img, labels, parts, len(table) + 1, hues, rng))
      table += [(oid, p.name) for p in obj.parts]
    if occluder:
      render.draw_occluder(img, labels, rng)
    return render.finish(img, rng, self.grain), labels, table, full

  # --------------------------------------------------------------------------- sketches

  def _aligned_canvas(self) -> Tuple[float, float]:
    return self.canvas, self.canvas * self.height / self.width

  def _sketch(self, rng, obj: _Object, oid: int, aligned: bool, keep_parts=None):
    """The object's drawing as an aligned sketch (where it is in the photo) or object-centred
    (filling its own canvas less a random margin)."""
    drawing = obj.drawing(self.style)
    if aligned:
      k = self.canvas / self.width
      return place(drawing, obj.scale * k, obj.offset * k, self._aligned_canvas(), oid,
                   obj.category, keep_parts)
    scale, offset = centred(obj.box, self.canvas, rng.uniform(0.05, 0.12),
                            rng.normal(0, 0.015 * self.canvas, 2))
    return place(drawing, scale, offset, (self.canvas, self.canvas), oid, obj.category,
                 keep_parts)

  def _pick_parts(self, rng, objs, ok, masks, rows):
    """An object and a strict subset (1-3) of its drawn parts that are visible in the photo."""
    min_px = max(4, int(0.0005 * self.width * self.height))
    # objects in random order, drawing only until one qualifies (drawings cost time)
    for oid in rng.permutation(np.asarray(ok)):
      oid = int(oid)
      drawn = objs[oid].drawing(self.style).drawn_parts()
      good = [p for p in drawn if masks[rows[(oid, p)]].sum() >= min_px]
      if good:
        break
    else:  # every drawn part nearly hidden: take the most visible drawn one
      oid = int(ok[0])
      drawn = objs[oid].drawing(self.style).drawn_parts()
      return oid, [max(drawn, key=lambda p: int(masks[rows[(oid, p)]].sum()))]
    k = int(rng.integers(1, max(1, min(3, len(good) - 1)) + 1))
    chosen = [good[i] for i in sorted(rng.choice(len(good), k, replace=False))]
    return oid, chosen

  def _group_sketch(self, rng, objs, ids, aligned):
    """Merged view of several objects' sketches plus the separate object-centred ones."""
    separate = [self._sketch(rng, objs[i], i, False) for i in ids]
    if aligned:
      parts = [self._sketch(rng, objs[i], i, True) for i in ids]
    else:
      parts = self._layout_sketches(rng, [objs[i] for i in ids], ids)
    merged = Sketch([s for sk, _ in parts for s in sk.strokes], parts[0][0].canvas_size,
                    labels=[l for sk, _ in parts for l in sk.labels])
    widths = np.concatenate([w for _, w in parts]).astype(np.float32)
    return merged, widths, [s for s, _ in separate], [w for _, w in separate]

  def _layout_sketches(self, rng, objs, ids):
    """Object-centred sketches of several objects on one canvas: at their places in the
    photo (their union box fills the canvas) or side by side in a row, left to right."""
    C = self.canvas
    if rng.random() < 0.5:
      boxes = np.array([o.photo_box() for o in objs])
      union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
      s, off = centred(union, C, rng.uniform(0.04, 0.1))
      return [place(o.drawing(self.style), o.scale * s, o.offset * s + off, (C, C), i,
                    o.category) for o, i in zip(objs, ids)]
    order = np.argsort([o.photo_box()[0] for o in objs])
    shares = rng.uniform(0.7, 1.3, len(objs))
    edges = np.concatenate([[0], np.cumsum(shares[order])]) / shares.sum() * C
    out = [None] * len(objs)
    for slot, j in enumerate(order):
      o = objs[j]
      cell_w = edges[slot + 1] - edges[slot]
      w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
      s = min(cell_w * 0.9 / w, C * 0.8 / h)
      cx = (edges[slot] + edges[slot + 1]) / 2
      cy = C / 2 + rng.uniform(-1, 1) * max(0.0, C * 0.9 - h * s) / 2
      off = np.array([cx, cy]) - _centre(o.box) * s
      out[j] = place(o.drawing(self.style), s, off, (C, C), ids[j], o.category)
    return out

  def _category_sketch(self, rng, cat: str, instances: List[_Object], aligned: bool):
    """A new instance of the category, not in the photo (object_id -1 on its strokes):
    object-centred, or for `aligned` drawn over the box of one of the instances."""
    fresh = self._instance(rng, cat)
    if not aligned:
      return self._sketch(rng, fresh, -1, False)
    over = instances[int(rng.integers(len(instances)))]
    fresh.scale = over.scale
    fresh.offset = _centre(over.photo_box()) - _centre(fresh.box) * over.scale
    return self._sketch(rng, fresh, -1, True)


# ----------------------------------------------------------------------------- helpers

def _centre(box) -> np.ndarray:
  return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _area(b) -> float:
  return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a, b) -> float:
  return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def _eligible(visible: Sequence[float], pixels: Sequence[int], area: int) -> List[int]:
  """Objects fit to be a query: mostly visible and not tiny; the most visible one otherwise."""
  ok = [i for i, (v, px) in enumerate(zip(visible, pixels)) if v >= 0.4 and px >= 0.002 * area]
  return ok or [int(np.argmax(pixels))]


def _repeated(objs: List[_Object]) -> int:
  """Index of the first object whose category occurs more than once."""
  names = [o.category for o in objs]
  return next(i for i, c in enumerate(names) if names.count(c) > 1)


def _masks(labels: np.ndarray, table, objs) -> Tuple[np.ndarray, List[Dict]]:
  """Per object its instance mask, then one mask per part, from the label map."""
  H, W = labels.shape
  owner = np.zeros(len(table) + 1, np.int16)
  owner[1:] = [oid + 1 for oid, _ in table]
  object_map = owner[labels]
  masks = np.empty((len(objs) + len(table), H, W), bool)
  info: List[Dict] = []
  row = 0
  for oid, obj in enumerate(objs):
    masks[row] = object_map == oid + 1
    info.append({"object_id": oid, "part": "", "category": obj.category})
    row += 1
    for g, (owner_id, name) in enumerate(table, start=1):
      if owner_id == oid:
        masks[row] = labels == g
        info.append({"object_id": oid, "part": name, "category": obj.category})
        row += 1
  return masks, info
