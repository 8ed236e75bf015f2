"""What every data source shares: the base class, bad-file bookkeeping, file checks, splits.

A source is a grain random-access data source: `len(source)`, `source[i] -> record` (a fresh
dict following the sample convention of `sketchseg_jax.sketch.augment`), plus `categories`
and `describe()`. It holds file lists only, so it pickles cheaply into grain workers, and it
decodes nothing at construction unless asked to (`verify=True`).

Bad data is never read half-silently: files that cannot be used are collected while the
index is built, then either raise one `SourceError` naming the root, how many and the first
few, or, with `skip_bad=True`, are left out and counted in `num_skipped` and `describe()`.
"""

from __future__ import annotations

import hashlib
import operator
import os
import re
from typing import Iterable, Optional, Sequence

import numpy as np

from sketchseg_jax.errors import UserError
from sketchseg_jax.sketch import io as sketch_io
from sketchseg_jax.sketch.types import SketchFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SKETCH_EXTENSIONS = (".svg", ".ndjson", ".npz", ".png", ".jpg", ".jpeg")
SPLITS = ("all", "train", "test")
CLASS_SPLITS = ("all", "seen", "heldout")
LISTED = 5  # bad files named in a message or in describe()
_HEAD_BYTES = 512
_MAX_LIST_BYTES = 64 << 20


class SourceError(UserError):
  """A data set on disk is missing, malformed or misconfigured; the message says where."""


def describe_exception(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


class BadFiles:
  """Files (or lines, or manifest entries) that cannot be used, with the reason for each."""

  def __init__(self):
    self.items: list = []
    self._paths: set = set()

  def add(self, path: str, reason: str) -> None:
    self.items.append((str(path), reason))
    self._paths.add(str(path))

  def __len__(self):
    return len(self.items)

  def __contains__(self, path):
    return path in self._paths

  def settle(self, what: str, root: str, skip_bad: bool) -> tuple:
    """Raises when there are bad files and skip_bad is off; else (count, first few)."""
    if not self.items:
      return 0, ()
    n = len(self.items)
    first = tuple(f"{p} ({r})" for p, r in self.items[:LISTED])
    if not skip_bad:
      more = f"; and {n - LISTED} more" if n > LISTED else ""
      raise SourceError(
          f"{what} at {root}: {n} bad file{'s' if n != 1 else ''}: {'; '.join(first)}{more}. "
          "Fix or remove them, or set skip_bad=True to leave them out.")
    return n, first


def check_choice(name: str, value, choices: Sequence[str]) -> str:
  if value not in choices:
    raise SourceError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
  return value


def check_fraction(name: str, value) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise SourceError(f"{name} must be a number in [0, 1], got {value!r}") from None
  if not 0.0 <= v <= 1.0:
    raise SourceError(f"{name} must be in [0, 1], got {value!r}")
  return v


def check_cap(name: str, value) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise SourceError(f"{name} must be a positive integer or None, got {value!r}")
  return int(value)


def resolve(root: str, path) -> str:
  """`path` as given when absolute (or ~), else relative to `root`."""
  path = os.path.expanduser(os.fspath(path))
  return path if os.path.isabs(path) else os.path.join(root, path)


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise SourceError(f"{what} {path} " + ("is not a folder" if os.path.exists(path)
                                           else "does not exist"))
  return path


def subfolders(path: str) -> list:
  """Sorted names of the non-hidden folders in `path`."""
  with os.scandir(path) as it:
    return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def files_in(path: str) -> list:
  """Sorted names of the non-hidden files in `path` (none when it does not exist)."""
  if not os.path.isdir(path):
    return []
  with os.scandir(path) as it:
    return sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))


def split_ext(name: str) -> tuple:
  stem, ext = os.path.splitext(name)
  return stem, ext.lower()


def natural_key(text: str):
  """Sort key that puts "x-2" before "x-10"."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def hash_unit(key: str, seed: int = 0) -> float:
  """A number in [0, 1) fixed by (seed, key) alone: the same on every host and Python."""
  digest = hashlib.blake2b(f"{int(seed)}\0{key}".encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0 ** 64


def in_test(key: str, test_fraction: float, seed: int) -> bool:
  return hash_unit(key, seed) < test_fraction


# ---------------------------------------------------------------------------- list files

_LIST_EXTENSIONS = frozenset(IMAGE_EXTENSIONS + SKETCH_EXTENSIONS + (".txt",))


def read_lines(path: str, what: str) -> list:
  """Non-blank, non-comment lines of a UTF-8 text file; anything else raises."""
  try:
    with open(path, "rb") as f:
      data = f.read(_MAX_LIST_BYTES + 1)
  except FileNotFoundError:
    raise SourceError(f"{what} {path} does not exist") from None
  except OSError as e:
    raise SourceError(f"{what} {path}: cannot read ({describe_exception(e)})") from None
  if len(data) > _MAX_LIST_BYTES:
    raise SourceError(f"{what} {path}: over {_MAX_LIST_BYTES >> 20} MiB; not a list file")
  if b"\0" in data:
    raise SourceError(f"{what} {path}: a binary file, not a text list")
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise SourceError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None
  return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def entry_stem(entry: str) -> str:
  """A list entry as a file stem: "cls/x.jpg", "x.jpg" and "x" all give "x"."""
  name = entry.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
  stem, ext = split_ext(name)
  return stem if ext in _LIST_EXTENSIONS else name


def read_names(value, root: str, what: str) -> Optional[list]:
  """Category names given inline (a list) or as a text file (a str path, one name a line)."""
  if value is None:
    return None
  if isinstance(value, (str, os.PathLike)):
    return read_lines(resolve(root, value), what)
  if isinstance(value, Iterable):
    names = list(value)
    if not all(isinstance(n, str) for n in names):
      raise SourceError(f"{what} must be a list of names or a path to a text file, got {value!r}")
    return names
  raise SourceError(f"{what} must be a list of names or a path to a text file, got {value!r}")


def select_categories(found: Sequence[str], root: str, classes=None, heldout_classes=None,
                      class_split: str = "all") -> list:
  """The categories a source keeps, in sorted order; unknown names raise (typos are caught).

  classes: restrict to these (None: every one found). heldout_classes: the zero-shot held-out
  set; class_split "seen" drops them, "heldout" keeps only them, "all" keeps both.
  """
  check_choice("class_split", class_split, CLASS_SPLITS)
  found_set = set(found)
  keep = sorted(found_set)
  for key, value in (("classes", classes), ("heldout_classes", heldout_classes)):
    names = read_names(value, root, key)
    if names is None:
      continue
    unknown = sorted(set(names) - found_set)
    if unknown:
      raise SourceError(f"{key} names {len(unknown)} categor{'y' if len(unknown) == 1 else 'ies'}"
                        f" not found at {root}: {', '.join(map(repr, unknown[:LISTED]))}")
    if key == "classes":
      keep = [c for c in keep if c in set(names)]
    elif class_split == "seen":
      keep = [c for c in keep if c not in set(names)]
    elif class_split == "heldout":
      keep = [c for c in keep if c in set(names)]
  if class_split != "all" and heldout_classes is None:
    raise SourceError(f"class_split={class_split!r} needs heldout_classes")
  return keep


def split_by_lists(keys: Sequence[str], match, root: str, train_list, test_list,
                   test_fraction: float, seed: int) -> tuple:
  """{key: "train" | "test" | None} for every key, and a dict of facts for describe().

  With list files: a key in test_list is test, in train_list train; with only one list the
  other side is its complement; with both, unlisted keys are in neither. `match(entry_stem)`
  maps a list entry to a key or None. Without lists: a hash of the key with test_fraction.
  """
  facts = {}
  if train_list is None and test_list is None:
    facts["split_rule"] = f"hash (test_fraction={test_fraction}, split_seed={seed})"
    return {k: "test" if in_test(k, test_fraction, seed) else "train" for k in keys}, facts
  listed = {}
  for side, value in (("train", train_list), ("test", test_list)):
    if value is None:
      continue
    path = resolve(root, value)
    entries = read_lines(path, f"{side}_list")
    hits = {match(entry_stem(e)) for e in entries} - {None}
    if entries and not hits and keys:
      raise SourceError(f"{side}_list {path}: none of its {len(entries)} entries names a file "
                        f"found at {root} (first entry {entries[0]!r})")
    facts[f"{side}_list"] = path
    facts[f"{side}_list_unmatched"] = sum(1 for e in entries if match(entry_stem(e)) is None)
    listed[side] = hits
  both = listed.get("train", set()) & listed.get("test", set())
  if both:
    raise SourceError(f"train_list and test_list share {len(both)} entries, e.g. "
                      f"{sorted(both)[0]!r}")
  out = {}
  for k in keys:
    if "test" in listed and "train" in listed:
      out[k] = "test" if k in listed["test"] else "train" if k in listed["train"] else None
    elif "test" in listed:
      out[k] = "test" if k in listed["test"] else "train"
    else:
      out[k] = "train" if k in listed["train"] else "test"
  facts["split_rule"] = "lists"
  facts["unlisted"] = sum(1 for v in out.values() if v is None)
  return out, facts


# ---------------------------------------------------------------------------- file checks

def image_header_problem(path: str) -> Optional[str]:
  """Why the image at `path` cannot be opened (header only), or None."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as im:
      w, h = im.size
  except FileNotFoundError:
    return "missing"
  except UnidentifiedImageError:
    return "not a readable image"
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    return f"unreadable image header ({describe_exception(e)})"
  return None if w > 0 and h > 0 else "empty image"


def image_size(path: str) -> tuple:
  """(width, height) from the header; raises SourceError naming the path."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      return im.size
  except Exception as e:  # noqa: BLE001  (Pillow reports header damage in many types)
    raise SourceError(f"{path}: cannot read the image header ({describe_exception(e)})") from None


def image_decode_problem(path: str) -> Optional[str]:
  """Why the image at `path` cannot be fully decoded, or None."""
  try:
    read_image(path)
  except SourceError as e:
    return str(e).removeprefix(f"{path}: ")
  return None


def sketch_header_problem(path: str) -> Optional[str]:
  """Why the sketch file cannot be used, judged by its first bytes, or None."""
  ext = split_ext(path)[1]
  try:
    with open(path, "rb") as f:
      head = f.read(_HEAD_BYTES)
  except FileNotFoundError:
    return "missing"
  except OSError as e:
    return f"cannot read ({describe_exception(e)})"
  if not head:
    return "empty file"
  expected = {".svg": "svg", ".ndjson": "ndjson", ".npz": "npz"}.get(ext, "raster")
  found = sketch_io.sniff(head)
  if found != expected:
    return f"content is not {expected}" + (f" (looks like {found})" if found else "")
  if expected == "raster":
    return image_header_problem(path)
  return None


def sketch_decode_problem(path: str) -> Optional[str]:
  try:
    sketch_io.load(path)
  except SketchFormatError as e:
    return str(e).removeprefix(f"{path}: ")
  return None


def file_problem(path: str, kind: str, verify: bool) -> Optional[str]:
  """Header check of an image or sketch file, plus a full decode when verify is set."""
  header = image_header_problem if kind == "image" else sketch_header_problem
  problem = header(path)
  if problem is None and verify:
    problem = (image_decode_problem if kind == "image" else sketch_decode_problem)(path)
  return problem


# ---------------------------------------------------------------------------- decoding

def read_image(path: str) -> np.ndarray:
  """An (H, W, 3) uint8 RGB photo; transparency is composited over white; pixels as stored
  (no EXIF rotation, so masks drawn on the stored pixels stay aligned)."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.load()
      if im.mode.startswith("I"):  # 16/32-bit greyscale: scale 0..65535 to 0..255
        grey = np.clip(np.asarray(im, np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
      if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(paper, rgba).convert("RGB")
      else:
        rgb = im.convert("RGB")
      return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
  except FileNotFoundError:
    raise SourceError(f"{path}: image file not found") from None
  except Exception as e:  # noqa: BLE001  (Pillow reports damage in many types)
    raise SourceError(f"{path}: cannot decode the image ({describe_exception(e)})") from None


def read_sketch(path: str):
  """A Sketch, or a float32 (H, W) ink image for raster files; SketchFormatError names the path."""
  return sketch_io.load(path)


# ---------------------------------------------------------------------------- the base class

class Source:
  """Base of the data sources: indexing, bookkeeping and describe().

  Subclasses set `root`, `categories` (a tuple), `split`, `num_skipped`, `skipped_examples`
  and `_size`, and implement `_record(i)` and optionally `_facts()` for describe().
  """

  kind = "source"
  root: str = ""
  split: str = "all"
  categories: tuple = ()
  num_skipped: int = 0
  skipped_examples: tuple = ()
  _size: int = 0

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index) -> dict:
    try:
      i = operator.index(index)
    except TypeError:
      raise TypeError(f"{type(self).__name__} indices must be integers, got "
                      f"{type(index).__name__}") from None
    if i < 0:
      i += self._size
    if not 0 <= i < self._size:
      raise IndexError(f"index {index} out of range for {self._size} records")
    return self._record(i)

  def _record(self, i: int) -> dict:
    raise NotImplementedError

  def _facts(self) -> dict:
    return {}

  def category_id(self, name: str) -> int:
    return self._category_ids[name]

  @property
  def _category_ids(self) -> dict:
    ids = self.__dict__.get("_id_cache")
    if ids is None:
      ids = {c: i for i, c in enumerate(self.categories)}
      self.__dict__["_id_cache"] = ids
    return ids

  def describe(self) -> dict:
    """A JSON-friendly summary: counts, categories, split, what was skipped and why."""
    out = {"source": self.kind, "root": self.root, "split": self.split,
           "num_records": len(self), "num_categories": len(self.categories),
           "categories": list(self.categories), "num_skipped": self.num_skipped,
           "skipped_examples": list(self.skipped_examples)}
    out.update(self._facts())
    return out

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_id_cache", None)
    return state

  def __repr__(self):
    return (f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, "
            f"records={len(self)}, categories={len(self.categories)}, "
            f"skipped={self.num_skipped})")


def no_records(source: Source, settings: str) -> None:
  if len(source) == 0:
    raise SourceError(f"{source.kind} at {source.root}: no records ({settings})")


class PhotoGallery(Source):
  """The photos of a paired source's split, for retrieval galleries: one record per photo."""

  kind = "gallery"

  def __init__(self, root: str, split: str, categories: Sequence[str], paths: Sequence[str],
               category_index: Sequence[int], photo_ids: Sequence[str]):
    self.root, self.split = root, split
    self.categories = tuple(categories)
    self._paths = list(paths)
    self._cat = np.asarray(category_index, np.int32)
    self._photo_ids = list(photo_ids)
    self._size = len(self._paths)

  def _record(self, i):
    c = int(self._cat[i])
    return {"image": read_image(self._paths[i]), "category": self.categories[c],
            "category_id": c, "photo_id": self._photo_ids[i], "image_path": self._paths[i]}
