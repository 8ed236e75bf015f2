"""Sketchy (Sangkloy et al., 2016): aligned fine-grained photo-sketch pairs, one record per sketch.

Layout of the rendered release (`root` holds `256x256/` and `info/`; the `256x256` folder
itself is accepted as root too):

  256x256/photo/<tx>/<class>/<photo_id>.jpg
  256x256/sketch/<tx>/<class>/<photo_id>-<k>.png      k = 1, 2, ... (several per photo)
  info/invalid-{ambiguous,context,error,pose}.txt     invalid sketch ids, `<photo_id>-<k>`
  info/testset.txt                                    the photos withheld for testing

`tx` picks the `tx_*` folder (alternative crops; `tx_000000000000` is the untouched frame).
With `svg_root` set, sketches come from the SVG release, `<svg_root>/<class>/<photo_id>-<k>.svg`,
on the drawing tool's canvas (read from each file). Pairs are made by file name within a
class folder. "aligned" is True when the sketch canvas maps onto the photo by plain scaling:
always for PNG sketches (photo and sketch share the tx transform), and for SVG sketches only
with the untouched `tx_000000000000` photos.

Invalid sketches listed in `info/` are left out by default (`exclude_invalid`). Splits are by
photo, so every sketch of a photo lands on the same side: list files when given
(`test_list="info/testset.txt"` gives the official split), else a hash of the photo id with
`test_fraction`. Zero-shot: `heldout_classes` (names or a file) with `class_split`.

Bad files: a sketch whose name is not `<photo_id>-<k>`, a sketch without its photo, a photo
without any sketch file (unless `allow_photos_without_sketches`, as in Sketchy-extended),
two photos with one id, and any unreadable header (`check_headers`) or undecodable file
(`verify`) among the files of the chosen split.
"""

from __future__ import annotations

import os
import re

import numpy as np

from sketchseg_jax.data.sources import common
from sketchseg_jax.data.sources.common import BadFiles, PhotoGallery, Source, SourceError

DEFAULT_TX = "tx_000000000000"
INVALID_LISTS = ("ambiguous", "context", "error", "pose")
_SKETCH_NAME = re.compile(r"^(.+)-(\d+)$")


class Sketchy(Source):
  """Sketchy photo-sketch pairs; see the module docstring for the layout and options."""

  kind = "sketchy"

  def __init__(self, root, split: str = "all", tx: str = DEFAULT_TX,
               resolution: str = "256x256", svg_root=None, exclude_invalid: bool = True,
               invalid_lists=INVALID_LISTS, info_dir="info", train_list=None, test_list=None,
               test_fraction: float = 0.1, split_seed: int = 0, classes=None,
               heldout_classes=None, class_split: str = "all",
               allow_photos_without_sketches: bool = False, skip_bad: bool = False,
               check_headers: bool = True, verify: bool = False):
    self.root = root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    common.require_dir(root, "Sketchy root")
    self.split = common.check_choice("split", split, common.SPLITS)
    test_fraction = common.check_fraction("test_fraction", test_fraction)
    base = os.path.join(root, resolution)
    if not os.path.isdir(base) and os.path.isdir(os.path.join(root, "photo")):
      base = root
    self._photo_dir = common.require_dir(os.path.join(base, "photo", tx), "Sketchy photo folder")
    if svg_root is None:
      self._sketch_dir = common.require_dir(os.path.join(base, "sketch", tx),
                                            "Sketchy sketch folder")
      sketch_exts = (".png", ".jpg")
    else:
      self._sketch_dir = common.require_dir(common.resolve(root, svg_root), "Sketchy SVG folder")
      sketch_exts = (".svg",)
    self.tx = tx
    self.sketch_format = "svg" if svg_root is not None else "png"
    self.aligned = svg_root is None or tx == DEFAULT_TX

    found = set(common.subfolders(self._photo_dir)) | set(common.subfolders(self._sketch_dir))
    self.categories = tuple(common.select_categories(
        sorted(found), root, classes, heldout_classes, class_split))
    invalid = self._invalid_ids(root, info_dir, invalid_lists) if exclude_invalid else set()

    bad = BadFiles()
    ignored = excluded = 0
    photos = []      # (category index, photo id, relative path)
    sketches = {}    # photo position -> [(k, relative path)]
    for c, cls in enumerate(self.categories):
      by_id, dup = {}, set()
      for name in common.files_in(os.path.join(self._photo_dir, cls)):
        stem, ext = common.split_ext(name)
        if ext not in common.IMAGE_EXTENSIONS:
          ignored += 1
        elif stem in by_id:
          dup.add(stem)
          bad.add(os.path.join(self._photo_dir, cls, name), f"a second photo with id {stem}")
        else:
          by_id[stem] = name
      for stem in dup:
        del by_id[stem]
      first = len(photos)
      position = {pid: first + j for j, pid in enumerate(sorted(by_id))}
      photos.extend((c, pid, f"{cls}/{by_id[pid]}") for pid in sorted(by_id))
      drawn = set()
      for name in common.files_in(os.path.join(self._sketch_dir, cls)):
        stem, ext = common.split_ext(name)
        if ext not in sketch_exts:
          ignored += 1
          continue
        path = os.path.join(self._sketch_dir, cls, name)
        m = _SKETCH_NAME.match(stem)
        if m is None:
          bad.add(path, "name is not <photo_id>-<k>")
          continue
        pid = m.group(1)
        if pid in dup:
          continue  # its photo is already counted as bad
        if pid not in position:
          bad.add(path, f"no photo {cls}/{pid}.jpg in {self._photo_dir}")
          continue
        drawn.add(pid)
        if stem in invalid:
          excluded += 1
          continue
        sketches.setdefault(position[pid], []).append((int(m.group(2)), f"{cls}/{name}"))
      if not allow_photos_without_sketches:
        for pid in sorted(set(by_id) - drawn):
          bad.add(os.path.join(self._photo_dir, cls, by_id[pid]), "photo without any sketch")

    ids = {pid for _, pid, _ in photos}
    sides, self._split_facts = common.split_by_lists(
        [pid for _, pid, _ in photos], lambda e: e if e in ids else None, root,
        train_list, test_list, test_fraction, split_seed)

    self._photo_paths, photo_cat, self._photo_ids = [], [], []
    self._sketch_paths, sketch_photo = [], []
    for j, (c, pid, rel) in enumerate(photos):
      if split != "all" and sides[pid] != split:
        continue
      if os.path.join(self._photo_dir, rel) in bad:
        continue
      if check_headers or verify:
        problem = common.file_problem(os.path.join(self._photo_dir, rel), "image", verify)
        if problem:
          bad.add(os.path.join(self._photo_dir, rel), problem)
          continue
      p = len(self._photo_paths)
      self._photo_paths.append(rel)
      photo_cat.append(c)
      self._photo_ids.append(pid)
      for _, srel in sorted(sketches.get(j, ())):
        if check_headers or verify:
          problem = common.file_problem(os.path.join(self._sketch_dir, srel), "sketch", verify)
          if problem:
            bad.add(os.path.join(self._sketch_dir, srel), problem)
            continue
        self._sketch_paths.append(srel)
        sketch_photo.append(p)
    self._photo_cat = np.asarray(photo_cat, np.int32)
    self._sketch_photo = np.asarray(sketch_photo, np.int32)
    self._size = len(self._sketch_paths)
    self.num_skipped, self.skipped_examples = bad.settle("Sketchy", root, skip_bad)
    self.num_excluded_invalid = excluded
    self.num_ignored_files = ignored
    common.no_records(self, f"split={split!r}, {len(self.categories)} categories")

  @staticmethod
  def _invalid_ids(root, info_dir, names) -> set:
    info = common.resolve(root, info_dir)
    if not os.path.isdir(info):
      raise SourceError(f"Sketchy info folder {info} does not exist; it lists the invalid "
                        "sketches. Set info_dir, or exclude_invalid=False to keep them all.")
    if isinstance(names, str):
      names = (names,)
    out = set()
    for name in names:
      path = os.path.join(info, f"invalid-{name}.txt")
      out.update(common.entry_stem(e) for e in common.read_lines(path, "invalid-sketch list"))
    return out

  def _record(self, i: int) -> dict:
    p = int(self._sketch_photo[i])
    c = int(self._photo_cat[p])
    sketch_path = os.path.join(self._sketch_dir, self._sketch_paths[i])
    image_path = os.path.join(self._photo_dir, self._photo_paths[p])
    return {
        "image": common.read_image(image_path),
        "sketch": common.read_sketch(sketch_path),
        "category": self.categories[c],
        "category_id": c,
        "photo_id": self._photo_ids[p],
        "sketch_id": common.split_ext(os.path.basename(sketch_path))[0],
        "sketch_path": sketch_path,
        "image_path": image_path,
        "aligned": self.aligned,
    }

  def gallery(self) -> PhotoGallery:
    """The photos of this split (also those whose sketches were all excluded), one record each."""
    return PhotoGallery(self.root, self.split, self.categories,
                        [os.path.join(self._photo_dir, r) for r in self._photo_paths],
                        self._photo_cat, self._photo_ids)

  def _facts(self) -> dict:
    return {"num_photos": len(self._photo_paths), "tx": self.tx,
            "sketch_format": self.sketch_format, "aligned": self.aligned,
            "photo_dir": self._photo_dir, "sketch_dir": self._sketch_dir,
            "num_excluded_invalid": self.num_excluded_invalid,
            "num_ignored_files": self.num_ignored_files, **self._split_facts}
