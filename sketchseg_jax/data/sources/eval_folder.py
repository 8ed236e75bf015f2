"""The plain evaluation folder: photos, sketch queries, masks and a manifest; one record per query.

Layout:

  DIR/manifest.json
  DIR/images/<image>.png | .jpg | .jpeg
  DIR/sketches/<name>.svg | .ndjson | .npz | .png | .jpg    (or <name>_0.svg, <name>_1.svg, ...)
  DIR/masks/<mask>.png

manifest.json, version 1 (the `sketchseg data synth --format folder` writer emits exactly this):

  {
    "version": 1,
    "categories": ["house", "mug", ...],      optional; fixes the category ids (list order);
                                              default: the sorted categories of the queries
    "masks": {                                optional; region tables of index masks, by mask
      "scene_0007": {                         name: pixel value (decimal string, 1..65535) ->
        "1": {"object_id": 0, "category": "house", "part": ""},       the object and part the
        "2": {"object_id": 0, "category": "house", "part": "roof"},   pixels show; part "" is
        "3": {"object_id": 1, "category": "mug", "part": "handle"}    the object's unnamed rest
      }
    },
    "queries": [
      {
        "name": "scene_0007_q0",        required, unique; letters, digits, "_", "-", "."
        "category": "house",            required; in "categories" when that is given
        "granularity": "part",          required: object | part | group | instance | category
        "image": "scene_0007",          optional, default = name: images/<image>.(png|jpg|jpeg)
        "mask": "scene_0007",           optional, default = image: masks/<mask>.png
        "sketch": "scene_0007_q0.svg",  optional: a file name in sketches/, or a list of them
        "target_indices": [2],          optional: the mask is an index mask and the target is
                                        the pixels with these values (1..65535)
        "heldout": false,               optional, default false: category unseen in training
        "aligned": false,               optional, default false: the sketch canvas maps onto the
                                        photo by plain scaling (Sketchy-style placement)
        "meta": {}                      optional: any JSON, passed through as record["meta"]
      }
    ]
  }

Masks. Without "target_indices" the target is the nonzero pixels (for a mask without a
region table, in any colour channel, fully transparent pixels being background). With
"target_indices" the mask is an index mask (single channel: 8-bit grey, palette indices, or
16-bit grey; 0 = background) and the target is the pixels holding those values. A mask listed under "masks" also gives records "masks"
(K, H, W) bool and "mask_info" (the sample convention): one per object (the union of its
regions, part "") and then one per named part, ordered by object_id and part name.

Sketches. A query's sketches are its "sketch" entry when given; otherwise
`sketches/<name>.<ext>` when that exists, else the numbered files `sketches/<name>_0.<ext>`,
`<name>_1.<ext>`, ... counted from 0 up to the first gap. One stem has one extension; both
forms for one name is an error; a numbered stem that is itself a query's name belongs to
that query. Several files make one
multi-sketch query (a group): the record's "queries" holds them in order and "sketch" their
merged view (strokes scaled onto the first canvas; raster images of one size, ink maxed).
A file holding several drawings (ndjson, npz) gives its first (sketch-rnn: test split).

Records: "image" (H, W, 3) uint8, "sketch", ["queries"], "target" (H, W) bool,
"granularity", "category", "category_id", "heldout", "aligned", "query_name", "photo_id"
(the image name), "image_path", "mask_path", "sketch_path" (the first), "sketch_paths",
["masks", "mask_info"], ["meta"]. describe() counts queries per granularity, held-out
queries, and the files in images/, sketches/, masks/ that no kept query reads.

Errors: a manifest that is not this schema (unknown keys included, so typos surface) raises
whatever skip_bad says; missing or unreadable files, and an image and mask of different sizes,
are bad queries (raised, or skipped and counted with skip_bad=True).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from sketchseg_jax.data.sources import common
from sketchseg_jax.data.sources.common import BadFiles, Source, SourceError
from sketchseg_jax.sketch.types import Sketch

GRANULARITIES = ("object", "part", "group", "instance", "category")
MANIFEST_VERSION = 1
_QUERY_KEYS = {"name", "category", "granularity", "image", "mask", "sketch", "target_indices",
               "heldout", "aligned", "meta"}
_TOP_KEYS = {"version", "categories", "masks", "queries"}
_REGION_KEYS = {"object_id", "category", "part"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SKETCH_EXTS = (".svg", ".ndjson", ".npz", ".png", ".jpg", ".jpeg")


class EvalFolder(Source):
  """An evaluation set in the plain folder layout; see the module docstring for the schema."""

  kind = "eval_folder"

  def __init__(self, root, manifest: str = "manifest.json", granularities=None,
               heldout: str = "all", classes=None, skip_bad: bool = False,
               check_headers: bool = True, verify: bool = False):
    self.root = root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    common.require_dir(root, "evaluation folder")
    self.split = common.check_choice("heldout", heldout, ("all", "seen", "heldout"))
    if granularities is not None:
      granularities = [granularities] if isinstance(granularities, str) else list(granularities)
      for g in granularities:
        common.check_choice("granularities entry", g, GRANULARITIES)
    self._manifest_path = common.resolve(root, manifest)
    doc = _load_manifest(self._manifest_path)
    queries = doc["queries"]
    self.categories = tuple(doc.get("categories") or sorted({q["category"] for q in queries}))
    self._tables = {m: _region_table(self._manifest_path, m, t)
                    for m, t in (doc.get("masks") or {}).items()}
    _check_queries(self._manifest_path, queries, set(self.categories), self._tables)
    classes = common.read_names(classes, root, "classes")
    if classes is not None:
      unknown = sorted(set(classes) - set(self.categories))
      if unknown:
        raise SourceError(f"classes names categories not in {self._manifest_path}: {unknown}")

    dirs = {d: os.path.join(root, d) for d in ("images", "sketches", "masks")}
    listing = {d: _by_stem(path) for d, path in dirs.items()}
    names = {q["name"] for q in queries}
    used = {d: set() for d in dirs}
    bad = BadFiles()
    checked = {}  # path -> (problem, size), shared by queries of one photo
    self._queries = []
    for q in queries:
      if granularities is not None and q["granularity"] not in granularities:
        continue
      if heldout != "all" and bool(q.get("heldout", False)) != (heldout == "heldout"):
        continue
      if classes is not None and q["category"] not in classes:
        continue
      where = f"query {q['name']!r}"
      image = q.get("image", q["name"])
      mask = q.get("mask", image)
      image_file = _one(listing["images"], image, common.IMAGE_EXTENSIONS, dirs["images"], bad,
                        where)
      mask_file = _one(listing["masks"], mask, (".png",), dirs["masks"], bad, where)
      sketch_files = _sketches(q, listing["sketches"], names, dirs["sketches"], bad, where)
      if image_file is None or mask_file is None or sketch_files is None:
        continue
      used["images"].add(image_file)
      used["masks"].add(mask_file)
      used["sketches"].update(sketch_files)
      paths = (os.path.join(dirs["images"], image_file), os.path.join(dirs["masks"], mask_file),
               tuple(os.path.join(dirs["sketches"], s) for s in sketch_files))
      if (check_headers or verify) and not _files_ok(paths, checked, verify, bad, where):
        continue
      self._queries.append((q, image, mask, paths))
    self._size = len(self._queries)
    self.num_skipped, self.skipped_examples = bad.settle("evaluation folder", root, skip_bad)
    self.num_unused_files = sum(len(set().union(*listing[d].values()) - used[d])
                                for d in dirs if listing[d])
    common.no_records(self, f"granularities={granularities}, heldout={heldout!r}, "
                            f"classes={classes}")

  def _record(self, i: int) -> dict:
    q, image_name, mask_name, (image_path, mask_path, sketch_paths) = self._queries[i]
    image = common.read_image(image_path)
    indices = q.get("target_indices")
    table = self._tables.get(mask_name)
    index_mask = indices is not None or table is not None
    values = _read_mask(mask_path, binary=not index_mask)
    if values.shape != image.shape[:2]:
      raise SourceError(f"{mask_path}: mask is {values.shape[1]}x{values.shape[0]} but the "
                        f"image {image_path} is {image.shape[1]}x{image.shape[0]}")
    if indices is not None:
      target = np.isin(values, indices)
    else:
      target = values != 0
    sketches = [common.read_sketch(p) for p in sketch_paths]
    c = self._category_ids[q["category"]]
    rec = {
        "image": image,
        "sketch": sketches[0] if len(sketches) == 1 else merge_sketches(sketches, sketch_paths),
        "target": np.ascontiguousarray(target, dtype=bool),
        "granularity": q["granularity"],
        "category": q["category"],
        "category_id": c,
        "heldout": bool(q.get("heldout", False)),
        "aligned": bool(q.get("aligned", False)),
        "query_name": q["name"],
        "photo_id": image_name,
        "image_path": image_path,
        "mask_path": mask_path,
        "sketch_path": sketch_paths[0],
        "sketch_paths": sketch_paths,
    }
    if len(sketches) > 1:
      rec["queries"] = sketches
    if table is not None:
      rec["masks"], rec["mask_info"] = _region_masks(values, table)
    if "meta" in q:
      rec["meta"] = q["meta"]
    return rec

  def _facts(self) -> dict:
    counts = {}
    for q, *_ in self._queries:
      counts[q["granularity"]] = counts.get(q["granularity"], 0) + 1
    return {"manifest": self._manifest_path, "queries_per_granularity": counts,
            "num_heldout": sum(1 for q, *_ in self._queries if q.get("heldout", False)),
            "num_unused_files": self.num_unused_files}


# ---------------------------------------------------------------------------- the manifest

def _load_manifest(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read())
  except FileNotFoundError:
    raise SourceError(f"{path}: manifest not found (an evaluation folder needs "
                      "manifest.json; see sketchseg_jax.data.sources.eval_folder)") from None
  except (OSError, ValueError) as e:
    raise SourceError(f"{path}: not a readable JSON manifest "
                      f"({common.describe_exception(e)})") from None
  if not isinstance(doc, dict):
    raise SourceError(f"{path}: the manifest must be a JSON object with a 'queries' list")
  _no_unknown(path, "the manifest", doc, _TOP_KEYS)
  if doc.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
    raise SourceError(f"{path}: manifest version {doc['version']!r}; this reader knows "
                      f"version {MANIFEST_VERSION}")
  if not isinstance(doc.get("queries"), list) or not doc["queries"]:
    raise SourceError(f"{path}: 'queries' must be a non-empty list")
  cats = doc.get("categories")
  if cats is not None and (not isinstance(cats, list) or not all(
      isinstance(c, str) and c for c in cats) or len(set(cats)) != len(cats)):
    raise SourceError(f"{path}: 'categories' must be a list of distinct non-empty names")
  if not isinstance(doc.get("masks", {}), dict):
    raise SourceError(f"{path}: 'masks' must map mask names to region tables")
  return doc


def _no_unknown(path, where, obj, allowed):
  unknown = sorted(set(obj) - allowed)
  if unknown:
    raise SourceError(f"{path}: {where} has unknown key(s) {unknown}; allowed: "
                      f"{sorted(allowed)}")


def _region_table(path: str, mask: str, table) -> dict:
  """{pixel value: (object_id, category, part)} of one index mask."""
  where = f"masks[{mask!r}]"
  if not isinstance(table, dict) or not table:
    raise SourceError(f"{path}: {where} must map pixel values to regions")
  out = {}
  for key, region in table.items():
    if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 65535):
      raise SourceError(f"{path}: {where}: pixel value {key!r} must be a decimal in 1..65535")
    if not isinstance(region, dict):
      raise SourceError(f"{path}: {where}[{key!r}] must be an object")
    _no_unknown(path, f"{where}[{key!r}]", region, _REGION_KEYS)
    obj, cat, part = region.get("object_id"), region.get("category"), region.get("part", "")
    if type(obj) is not int or obj < 0 or not isinstance(cat, str) or not isinstance(part, str):
      raise SourceError(f"{path}: {where}[{key!r}] needs object_id (int >= 0), category (str) "
                        "and optionally part (str)")
    out[int(key)] = (obj, cat, part)
  return out


def _check_queries(path: str, queries: list, categories: set, tables: dict) -> None:
  seen = set()
  for i, q in enumerate(queries):
    if not isinstance(q, dict):
      raise SourceError(f"{path}: queries[{i}] must be an object")
    name = q.get("name")
    where = f"queries[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
    _no_unknown(path, where, q, _QUERY_KEYS)
    for key in ("name", "image", "mask"):
      if key in q and not (isinstance(q[key], str) and _NAME.match(q[key])):
        raise SourceError(f"{path}: {where}: {key!r} must be a plain file stem "
                          f"(letters, digits, '_', '-', '.'), got {q[key]!r}")
    if name is None:
      raise SourceError(f"{path}: {where}: 'name' is required")
    if name in seen:
      raise SourceError(f"{path}: {where}: duplicate name {name!r}")
    seen.add(name)
    if not isinstance(q.get("category"), str) or not q["category"]:
      raise SourceError(f"{path}: {where}: 'category' (a non-empty name) is required")
    if q["category"] not in categories:
      raise SourceError(f"{path}: {where}: category {q['category']!r} is not in 'categories'")
    if q.get("granularity") not in GRANULARITIES:
      raise SourceError(f"{path}: {where}: 'granularity' must be one of {list(GRANULARITIES)}, "
                        f"got {q.get('granularity')!r}")
    for key in ("heldout", "aligned"):
      if key in q and not isinstance(q[key], bool):
        raise SourceError(f"{path}: {where}: {key!r} must be true or false")
    sk = q.get("sketch")
    if sk is not None:
      items = [sk] if isinstance(sk, str) else sk
      if not isinstance(items, list) or not items or not all(
          isinstance(s, str) and _NAME.match(s) for s in items):
        raise SourceError(f"{path}: {where}: 'sketch' must be a file name in sketches/ or a "
                          "non-empty list of them")
    idx = q.get("target_indices")
    if idx is not None:
      if not isinstance(idx, list) or not idx or not all(
          type(v) is int and 1 <= v <= 65535 for v in idx):
        raise SourceError(f"{path}: {where}: 'target_indices' must be a non-empty list of "
                          "pixel values in 1..65535")
      table = tables.get(q.get("mask", q.get("image", name)))
      if table is not None and not set(idx) <= set(table):
        raise SourceError(f"{path}: {where}: target_indices {sorted(set(idx) - set(table))} "
                          "are not in the mask's region table")


# ---------------------------------------------------------------------------- files

def _by_stem(folder: str) -> dict:
  out = {}
  for name in common.files_in(folder):
    out.setdefault(common.split_ext(name)[0], []).append(name)
  return out


def _one(listing, stem, exts, folder, bad, where):
  names = [n for n in listing.get(stem, ()) if common.split_ext(n)[1] in exts]
  if len(names) == 1:
    return names[0]
  if names:
    bad.add(os.path.join(folder, stem + ".*"), f"{where}: several files {names}")
  else:
    bad.add(os.path.join(folder, stem + exts[0]), f"{where}: missing")
  return None


def _sketches(q, listing, query_names, folder, bad, where):
  explicit = q.get("sketch")
  if explicit is not None:
    files = [explicit] if isinstance(explicit, str) else list(explicit)
    for f in files:
      stem, ext = common.split_ext(f)
      if ext not in _SKETCH_EXTS or f not in listing.get(stem, ()):
        bad.add(os.path.join(folder, f), f"{where}: " + (
            "missing" if ext in _SKETCH_EXTS else "not a sketch file extension"))
        return None
    return files
  name = q["name"]
  numbered = f"{name}_0" in listing and f"{name}_0" not in query_names
  if any(common.split_ext(n)[1] in _SKETCH_EXTS for n in listing.get(name, ())):
    if numbered:
      bad.add(os.path.join(folder, name + ".*"),
              f"{where}: both {name}.<ext> and numbered {name}_0.<ext> sketches; keep one form")
      return None
    one = _one(listing, name, _SKETCH_EXTS, folder, bad, where)
    return None if one is None else [one]
  files, k = [], 0
  while f"{name}_{k}" in listing and f"{name}_{k}" not in query_names:
    one = _one(listing, f"{name}_{k}", _SKETCH_EXTS, folder, bad, where)
    if one is None:
      return None
    files.append(one)
    k += 1
  if not files:
    bad.add(os.path.join(folder, name + ".svg"),
            f"{where}: no sketch {name}.<ext> or {name}_0.<ext>")
    return None
  return files


def _files_ok(paths, checked, verify, bad, where) -> bool:
  image_path, mask_path, sketch_paths = paths
  sizes = []
  for path, kind in [(image_path, "image"), (mask_path, "image")] + [
      (p, "sketch") for p in sketch_paths]:
    if path not in checked:
      problem = common.file_problem(path, kind, verify)
      size = common.image_size(path) if problem is None and kind == "image" else None
      checked[path] = (problem, size)
    problem, size = checked[path]
    if problem:
      bad.add(path, f"{where}: {problem}")
      return False
    sizes.append(size)
  if sizes[0] != sizes[1]:
    bad.add(mask_path, f"{where}: mask is {sizes[1][0]}x{sizes[1][1]}, image "
                       f"{os.path.basename(image_path)} is {sizes[0][0]}x{sizes[0][1]}")
    return False
  return True


def _read_mask(path: str, binary: bool) -> np.ndarray:
  """Binary: (H, W) bool target. Index: (H, W) integer pixel values."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode == "1":
        values = np.asarray(im, dtype=bool)
      elif mode in ("L", "P") or mode.startswith("I"):
        values = np.asarray(im).astype(np.int32)
      elif binary and mode in ("RGB", "RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(np.any(rgba[..., :3] != 0, axis=-1) & (rgba[..., 3] != 0))
      else:
        raise SourceError(f"{path}: {'a binary' if binary else 'an index'} mask cannot be "
                          f"of image mode {mode}; use 8-bit grey, palette or 16-bit grey")
  except SourceError:
    raise
  except FileNotFoundError:
    raise SourceError(f"{path}: mask file not found") from None
  except Exception as e:  # noqa: BLE001  (Pillow reports damage in many types)
    raise SourceError(f"{path}: cannot decode the mask ({common.describe_exception(e)})") \
        from None
  return values != 0 if binary else values


def _region_masks(values: np.ndarray, table: dict) -> tuple:
  objects, parts = {}, {}
  for value, (obj, cat, part) in table.items():
    objects.setdefault(obj, (cat, []))[1].append(value)
    if part:
      parts.setdefault((obj, part), (cat, []))[1].append(value)
  masks, info = [], []
  for obj in sorted(objects):
    cat, vals = objects[obj]
    masks.append(np.isin(values, vals))
    info.append({"object_id": obj, "part": "", "category": cat})
  for obj, part in sorted(parts):
    cat, vals = parts[(obj, part)]
    masks.append(np.isin(values, vals))
    info.append({"object_id": obj, "part": part, "category": cat})
  return np.stack(masks).astype(bool), info


def merge_sketches(sketches: list, paths) -> object:
  """One view of a multi-sketch query: strokes scaled onto the first canvas, or ink maxed."""
  if all(isinstance(s, Sketch) for s in sketches):
    cw, ch = sketches[0].canvas_size
    strokes, labels = [], []
    for s in sketches:
      scale = np.array([cw / s.canvas_size[0], ch / s.canvas_size[1]], np.float32)
      strokes.extend(st * scale for st in s.strokes)
      labels.extend(s.labels if s.labels is not None else [None] * s.num_strokes)
    keep = any(lab is not None for lab in labels)
    return Sketch(strokes, (cw, ch), labels=labels if keep else None)
  if all(isinstance(s, np.ndarray) for s in sketches):
    shapes = {s.shape for s in sketches}
    if len(shapes) == 1:
      return np.maximum.reduce(sketches)
    raise SourceError(f"raster sketches of one query differ in size ({sorted(shapes)}): "
                      f"{', '.join(paths)}")
  raise SourceError(f"one query mixes vector and raster sketches: {', '.join(paths)}")
