"""QMUL ShoeV2 / ChairV2 (Yu et al.): fine-grained photo-sketch pairs of one category.

Releases lay files out differently (`photo/` + `sketch/` folders with list files, or
`trainA`/`trainB`/`testA`/`testB` folders, PNG or SVG sketches), so the layout comes from the
config: `photo_glob` and `sketch_glob` are glob patterns relative to `root` (`**` recurses),
`train_list` / `test_list` are text files of stems (or file names, or paths; one a line).

Pairing is by file stem: a sketch whose stem equals a photo's stem pairs with it; otherwise
`stem_regex` (group 1) takes the photo stem out of the sketch stem (default: a trailing
`_<n>` is a sketch number, so `2429245009_1.svg` pairs with `2429245009.png`). List entries are
matched the same way, so a list of sketch names works too.

Split: with list files, a photo is on the side of the list that names it (with one list, the
other side is the rest); without lists, a hash of the photo stem with `test_fraction`; a
folder layout like `testA`/`testB` is read with split="all" and globs into those folders.
Records are object-centred ("aligned": False): QMUL sketches are drawn on their own canvas.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from sketchseg_jax.data.sources import common
from sketchseg_jax.data.sources.common import BadFiles, PhotoGallery, Source, SourceError

DEFAULT_STEM_REGEX = r"^(.+?)(?:_\d+)?$"


class QMUL(Source):
  """ShoeV2 / ChairV2 style photo-sketch pairs found by globs; see the module docstring."""

  kind = "qmul"

  def __init__(self, root, photo_glob: str, sketch_glob: str, category: str,
               split: str = "all", train_list=None, test_list=None, test_fraction: float = 0.1,
               split_seed: int = 0, stem_regex: str = DEFAULT_STEM_REGEX,
               allow_photos_without_sketches: bool = False, skip_bad: bool = False,
               check_headers: bool = True, verify: bool = False):
    self.root = root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    common.require_dir(root, "QMUL root")
    self.split = common.check_choice("split", split, common.SPLITS)
    test_fraction = common.check_fraction("test_fraction", test_fraction)
    if not isinstance(category, str) or not category:
      raise SourceError(f"category must be a non-empty name, got {category!r}")
    self.categories = (category,)
    try:
      pattern = re.compile(stem_regex)
    except (re.error, TypeError) as e:
      raise SourceError(f"stem_regex {stem_regex!r} is not a regular expression ({e})") from None
    if pattern.groups < 1:
      raise SourceError(f"stem_regex {stem_regex!r} needs a group that captures the photo stem")

    bad = BadFiles()
    photo_files = self._glob(root, photo_glob, "photo_glob", common.IMAGE_EXTENSIONS)
    sketch_files = self._glob(root, sketch_glob, "sketch_glob", common.SKETCH_EXTENSIONS)
    photos, dup = {}, set()
    for path in photo_files:
      stem = common.split_ext(os.path.basename(path))[0]
      if stem in photos:
        dup.add(stem)
        bad.add(path, f"a second photo with stem {stem} (first: {photos[stem]})")
      else:
        photos[stem] = path
    for stem in dup:
      del photos[stem]

    def photo_of(stem):
      if stem in photos:
        return stem
      m = pattern.match(stem)
      return m.group(1) if m and m.group(1) in photos else None

    by_photo = {}
    for path in sketch_files:
      stem = common.split_ext(os.path.basename(path))[0]
      pid = photo_of(stem)
      if pid is None:
        m = pattern.match(stem)
        if stem not in dup and not (m and m.group(1) in dup):  # else its photo is the bad one
          bad.add(path, f"no photo with its stem among the {len(photos)} of photo_glob")
        continue
      by_photo.setdefault(pid, []).append(path)
    if not allow_photos_without_sketches:
      for pid in sorted(set(photos) - set(by_photo)):
        bad.add(photos[pid], "photo without any sketch")

    keys = sorted(photos, key=common.natural_key)
    sides, self._split_facts = common.split_by_lists(
        keys, photo_of, root, train_list, test_list, test_fraction, split_seed)
    self._photo_paths, self._photo_ids, self._sketch_paths, sketch_photo = [], [], [], []
    for pid in keys:
      if (split != "all" and sides[pid] != split) or photos[pid] in bad:
        continue
      if check_headers or verify:
        problem = common.file_problem(photos[pid], "image", verify)
        if problem:
          bad.add(photos[pid], problem)
          continue
      p = len(self._photo_paths)
      self._photo_paths.append(photos[pid])
      self._photo_ids.append(pid)
      for path in sorted(by_photo.get(pid, ()), key=common.natural_key):
        if check_headers or verify:
          problem = common.file_problem(path, "sketch", verify)
          if problem:
            bad.add(path, problem)
            continue
        self._sketch_paths.append(path)
        sketch_photo.append(p)
    self._sketch_photo = np.asarray(sketch_photo, np.int32)
    self._size = len(self._sketch_paths)
    self.num_skipped, self.skipped_examples = bad.settle("QMUL", root, skip_bad)
    self._globs = (photo_glob, sketch_glob)
    common.no_records(self, f"split={split!r}, photo_glob={photo_glob!r}, "
                            f"sketch_glob={sketch_glob!r}")

  @staticmethod
  def _glob(root, pattern, key, extensions) -> list:
    if not isinstance(pattern, str) or not pattern:
      raise SourceError(f"{key} must be a glob pattern relative to the root, got {pattern!r}")
    paths = glob.glob(common.resolve(root, pattern), recursive=True)
    return sorted(p for p in paths
                  if os.path.isfile(p) and common.split_ext(p)[1] in extensions
                  and not os.path.basename(p).startswith("."))

  def _record(self, i: int) -> dict:
    p = int(self._sketch_photo[i])
    sketch_path, image_path = self._sketch_paths[i], self._photo_paths[p]
    return {
        "image": common.read_image(image_path),
        "sketch": common.read_sketch(sketch_path),
        "category": self.categories[0],
        "category_id": 0,
        "photo_id": self._photo_ids[p],
        "sketch_id": common.split_ext(os.path.basename(sketch_path))[0],
        "sketch_path": sketch_path,
        "image_path": image_path,
        "aligned": False,
    }

  def gallery(self) -> PhotoGallery:
    """The photos of this split, one record each (the fine-grained retrieval gallery)."""
    return PhotoGallery(self.root, self.split, self.categories, self._photo_paths,
                        np.zeros(len(self._photo_paths), np.int32), self._photo_ids)

  def _facts(self) -> dict:
    return {"num_photos": len(self._photo_paths), "photo_glob": self._globs[0],
            "sketch_glob": self._globs[1], **self._split_facts}
