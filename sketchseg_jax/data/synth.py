"""Write the procedural world to disk, as a TFDS dataset or as the plain evaluation folder.

  synth(out, split="train", num=1000, format="tfds", size=224, seed=0, kind="query",
        granularities=GRANULARITIES, aligned_share=0.0, heldout=None, overwrite=False)
    -> SynthResult(path, split, format, count, seconds)

Records are exactly `WorldSource(split, kind, num, size, seed, granularities, aligned_share,
heldout)[i]` for i in range(num), so reading the output back gives the on-the-fly world:

  tfds    DIR/sketchseg_world/1.0.0/ (array_record, uint8 tensors: no TensorFlow needed), read
          by TFDSSource / build_source({"name": "tfds", "path": DIR, "split": split}); its
          metadata.json holds SETTINGS (categories with the ids of WorldSource.categories,
          heldout, kind, size, seed, granularities, ...).
  folder  the layout EvalFolder reads (see sketchseg_jax.data.sources.eval_folder), one query
          per record, named f"{split}_{index:06d}":
            images/NAME.png     the photo
            masks/NAME.png      an index mask: one value per (object, part) region, described
                                in the manifest's "masks" table; the query's target is its
                                "target_indices" (so records also carry masks and mask_info)
            sketches/NAME.svg   the query sketch; a group query has its separate object-centred
                                sketches as NAME_0.svg, NAME_1.svg, ... (the reader's
                                multi-sketch rule; "aligned" is then false, as they
                                are) and its one-canvas merged view in
                                merged_sketches/NAME.svg, named by meta["merged_sketch"],
                                its placement by meta["merged_aligned"]
            manifest.json       version 1; categories = WorldSource.categories, then the
                                "a+b" names of group queries; per query its granularity,
                                heldout and aligned flags, and in "meta" the world's extras
                                (index, object_ids, categories, parts, instances, stroke widths)

Both formats also write DIR/synth.json (the settings). Output is staged in a hidden sibling
folder and renamed into place when complete, so an interrupted run leaves nothing that looks
like a dataset; an existing non-empty DIR is replaced only with overwrite=True, and only when it
holds a synth.json (a folder this writer made), never an arbitrary folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from sketchseg_jax.errors import UserError

FORMATS = ("tfds", "folder")
DATASET_NAME = "sketchseg_world"
SETTINGS_FILE = "synth.json"
MANIFEST_FILE = "manifest.json"
MERGED_DIR = "merged_sketches"
# The photos' film grain leaves zlib little to find: level 1 encodes a 224 photo in ~3 ms
# against ~11 ms at the default 6, for ~6% more bytes.
PNG_LEVEL = 1


@dataclasses.dataclass(frozen=True)
class SynthResult:
  path: str
  split: str
  format: str
  count: int
  seconds: float

  @property
  def samples_per_second(self) -> float:
    return self.count / max(self.seconds, 1e-9)

  def summary(self) -> str:
    return (f"wrote {self.count} {self.split} samples ({self.format}) to {self.path} in "
            f"{self.seconds:.1f} s ({self.samples_per_second:.1f} samples/s)")


# ---------------------------------------------------------------------------- arguments

def parse_granularities(text: str) -> dict:
  """"object,part:2" -> {"object": 1.0, "part": 2.0}: names with optional weights."""
  from sketchseg_jax.data.world import GRANULARITIES
  out = {}
  for item in str(text).split(","):
    item = item.strip()
    if not item:
      continue
    name, colon, weight = item.partition(":")
    name = name.strip()
    if name not in GRANULARITIES:
      raise UserError(f"unknown granularity {name!r}; choose from {', '.join(GRANULARITIES)}")
    try:
      w = float(weight) if colon else 1.0
    except ValueError:
      raise UserError(f"granularity weight must be a number, got {item!r}") from None
    if not w > 0 or not np.isfinite(w):
      raise UserError(f"granularity weight must be positive, got {item!r}")
    if name in out:
      raise UserError(f"granularity {name!r} given twice")
    out[name] = w
  if not out:
    raise UserError("name at least one granularity")
  return out


def parse_names(text: Optional[str]) -> Optional[tuple]:
  """"a,b" -> ("a", "b"); None stays None (the default); "" or "none" -> ()."""
  if text is None:
    return None
  if text.strip().lower() in ("", "none"):
    return ()
  return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_size(text) -> Union[int, tuple]:
  """224 -> 224; "320x240" -> (320, 240)."""
  if isinstance(text, (int, np.integer)):
    return int(text)
  w, x, h = str(text).lower().partition("x")
  try:
    return (int(w), int(h)) if x else int(w)
  except ValueError:
    raise UserError(f"size must be S or WxH in pixels, got {text!r}") from None


# ---------------------------------------------------------------------------- the writer

def make_source(split: str, num: int, size=224, seed: int = 0, kind: str = "query",
                granularities=None, aligned_share: float = 0.0,
                heldout: Optional[Sequence[str]] = None):
  """The WorldSource whose records synth writes (validated, errors as UserError)."""
  from sketchseg_jax.data.sources.synthetic import WorldSource
  from sketchseg_jax.data.world import GRANULARITIES, SPLITS
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
    raise UserError(f"num must be a positive integer, got {num!r}")
  if not 0.0 <= float(aligned_share) <= 1.0:
    raise UserError(f"aligned share must be in [0, 1], got {aligned_share!r}")
  return WorldSource(split=split, kind=kind, num=int(num), size=size, seed=seed,
                     granularities=GRANULARITIES if granularities is None else granularities,
                     aligned_share=float(aligned_share), heldout=heldout)


def settings_of(source, size, fmt: str) -> dict:
  return {"generator": "sketchseg_jax world", "format": fmt, "split": source.split,
          "num": source.num, "kind": source.kind, "size": size, "seed": source.seed,
          "granularities": dict(zip(source.granularities, source.probs)),
          "aligned_share": source.aligned_share, "categories": list(source.categories),
          "heldout": list(source.heldout_categories),
          "split_categories": list(source.world.categories)}


def synth(out, split: str = "train", num: int = 1000, format: str = "tfds", size=224,
          seed: int = 0, kind: str = "query", granularities=None, aligned_share: float = 0.0,
          heldout: Optional[Sequence[str]] = None, overwrite: bool = False) -> SynthResult:
  """Write `num` world records of `split` to `out` in `format`; see the module docstring."""
  if format not in FORMATS:
    raise UserError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
  source = make_source(split, num, size, seed, kind, granularities, aligned_share, heldout)
  settings = settings_of(source, size, format)
  start = time.perf_counter()
  with staged_output(out, overwrite) as stage:
    if format == "tfds":
      write_tfds(source, stage, settings)
    else:
      write_folder(source, stage)
    (stage / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
  return SynthResult(str(out), split, format, source.num, time.perf_counter() - start)


@contextlib.contextmanager
def staged_output(out, overwrite: bool = False):
  """Yields an empty hidden sibling of `out`; on success it becomes `out`, on any failure
  (KeyboardInterrupt included) it is removed."""
  out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
  check_output(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
  os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's 0700 would make the result private
  try:
    yield stage
    check_output(out, overwrite)  # it may have appeared while we were writing
    if out.exists() and any(out.iterdir()):
      old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
      os.rename(out, old / "d")
      try:
        os.rename(stage, out)
      except BaseException:
        os.rename(old / "d", out)
        old.rmdir()
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      if out.exists():
        out.rmdir()
      os.rename(stage, out)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def check_output(out: Path, overwrite: bool) -> None:
  if not out.exists():
    return
  if not out.is_dir():
    raise UserError(f"output {out} exists and is not a folder")
  if not any(out.iterdir()):
    return
  if not overwrite:
    raise UserError(f"output folder {out} is not empty; pass --overwrite to replace it")
  if not (out / SETTINGS_FILE).is_file():
    raise UserError(f"output folder {out} is not empty and holds no {SETTINGS_FILE}, so it "
                    "was not written by `sketchseg data synth`; refusing to replace it "
                    "(remove it yourself)")


# ---------------------------------------------------------------------------- TFDS

def write_tfds(source, out_dir, metadata: Mapping) -> Path:
  """The source's records as TFDS dataset DATASET_NAME, split source.split, under out_dir."""
  from sketchseg_jax.data import tfds_store
  desc = (f"The sketchseg_jax procedural world: {source.kind} records of split "
          f"{source.split!r}, seed {source.seed}.")
  with _quiet():
    path = tfds_store.write(out_dir, DATASET_NAME, {source.split: (source.num,
                                                                    source.__getitem__)},
                            description=desc, metadata=dict(metadata))
  downloads = Path(out_dir) / "downloads"
  for d in (downloads / "extracted", downloads):  # TFDS makes these; nothing is downloaded
    with contextlib.suppress(OSError):
      d.rmdir()
  return path


@contextlib.contextmanager
def _quiet():
  """TFDS announces "Downloading and preparing" on stdout and warns through absl."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.setLevel(level)


# ---------------------------------------------------------------------------- folder

def record_name(split: str, index: int) -> str:
  return f"{split}_{index:06d}"


def write_folder(source, out_dir) -> Path:
  """The source's records in the evaluation folder layout under out_dir (must exist)."""
  out = Path(out_dir)
  for d in ("images", "masks", "sketches"):
    (out / d).mkdir(exist_ok=True)
  queries, tables = [], {}
  for i in range(source.num):
    name = record_name(source.split, i)
    query, table = write_record(source[i], name, out, index=i)
    queries.append(query)
    if table is not None:
      tables[name] = table
  extra = sorted({q["category"] for q in queries} - set(source.categories))
  manifest = {"version": 1, "categories": list(source.categories) + extra,
              "masks": tables, "queries": queries}
  (out / MANIFEST_FILE).write_text(json.dumps(manifest, separators=(",", ":")) + "\n")
  return out


def write_record(sample: dict, name: str, out: Path, index: Optional[int] = None) -> tuple:
  """Writes one world sample's files; returns (manifest query, region table or None)."""
  from PIL import Image

  from sketchseg_jax.sketch.io import save

  Image.fromarray(np.asarray(sample["image"], np.uint8)).save(
      out / "images" / f"{name}.png", compress_level=PNG_LEVEL)
  target = np.asarray(sample["target"], bool)
  query = {"name": name, "category": sample["category"],
           "granularity": sample.get("granularity", "object"),
           "heldout": bool(sample.get("heldout", False)),
           "aligned": bool(sample.get("aligned", False))}
  values, table = index_mask(sample.get("masks"), sample.get("mask_info"))
  indices = None if values is None else target_indices(values, target)
  if indices is None:  # no regions, or a target they cannot express: a plain binary mask
    table = None
    mask = Image.fromarray(target.astype(np.uint8) * 255)
  else:
    query["target_indices"] = indices
    mask = Image.fromarray(values)  # uint8 -> mode L, uint16 -> mode I;16
  mask.save(out / "masks" / f"{name}.png", compress_level=PNG_LEVEL)

  meta = {} if index is None else {"index": int(index)}
  queries = sample.get("queries")
  if queries and len(queries) > 1:
    for k, q in enumerate(queries):
      save(q, str(out / "sketches" / f"{name}_{k}.svg"))
    (out / MERGED_DIR).mkdir(exist_ok=True)
    save(sample["sketch"], str(out / MERGED_DIR / f"{name}.svg"))
    meta["merged_sketch"] = f"{MERGED_DIR}/{name}.svg"
    # The separate sketches are object-centred whatever the merged view is, and "aligned"
    # speaks for the sketches the reader gives; the merged view's placement is kept here.
    meta["merged_aligned"] = query["aligned"]
    query["aligned"] = False
  else:
    save(sample["sketch"], str(out / "sketches" / f"{name}.svg"))
  for key in ("category_id", "object_ids", "categories", "parts", "instances", "background"):
    if key in sample:
      meta[key] = _plain(sample[key])
  # SVG keeps one stroke width per file; the world's width jitter survives here.
  if sample.get("stroke_widths") is not None:
    meta["stroke_widths"] = _plain(sample["stroke_widths"])
  if queries and len(queries) > 1 and sample.get("query_stroke_widths") is not None:
    meta["query_stroke_widths"] = _plain(sample["query_stroke_widths"])
  query["meta"] = meta
  return query, table


def index_mask(masks, mask_info) -> tuple:
  """(values, table): an index mask with one value per (object, part) region of the world's
  masks, 0 elsewhere, and its manifest region table; (None, None) without masks.

  Parts of one object are disjoint in the world (one label per pixel), so a pixel's region
  is its object and the part covering it; object pixels under no part form the object's
  region with part "". Regions with no visible pixel keep a value, so the reader rebuilds
  every mask of the sample, empty ones included.
  """
  if masks is None or mask_info is None or len(mask_info) == 0:
    return None, None
  masks = np.asarray(masks, bool)
  H, W = masks.shape[1:]
  keys, table = {}, {}
  values = np.zeros((H, W), np.int32)

  def value_of(obj, cat, part):
    key = (obj, part)
    if key not in keys:
      keys[key] = len(keys) + 1
      table[str(keys[key])] = {"object_id": int(obj), "category": cat, "part": part}
    return keys[key]

  objects = [(k, m) for k, m in enumerate(mask_info) if m["part"] == ""]
  for k, m in objects:
    obj = int(m["object_id"])
    parts = [(j, p) for j, p in enumerate(mask_info) if p["part"] and
             int(p["object_id"]) == obj]
    covered = np.zeros((H, W), bool)
    for j, p in parts:
      values[masks[j]] = value_of(obj, p["category"], p["part"])
      covered |= masks[j]
    rest = masks[k] & ~covered
    if rest.any():
      values[rest] = value_of(obj, m["category"], "")
  if len(keys) > 65535:
    return None, None
  return values.astype(np.uint8 if len(keys) < 256 else np.uint16), table


def target_indices(values: np.ndarray, target: np.ndarray) -> Optional[list]:
  """The region values whose union is exactly `target`, or None if no union is."""
  inside = np.unique(values[target])
  if inside.size == 0 or inside[0] == 0:
    return None
  chosen = [int(v) for v in inside]
  if not np.array_equal(np.isin(values, chosen), target):
    return None
  return chosen


def _plain(v):
  """JSON-ready copy of a world value (numpy arrays and scalars to lists and numbers)."""
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  return v
