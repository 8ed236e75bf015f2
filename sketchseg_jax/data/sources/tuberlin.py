"""TU-Berlin (Eitz et al., 2012): 250 categories x 80 sketches, sketch-only.

Layout: `root/svg/<class>/<n>.svg` (800 x 800 canvas, read from each file), and in the PNG
release `root/png/<class>/<n>.png` (1111 x 1111 rasters); `format` picks which, `sketch_dir`
points elsewhere. Files at the top of the sketch folder (e.g. a file list) are not sketches
and are ignored. There is no official split: train/test is a hash of "<class>/<n>" with
`test_fraction`; zero-shot classes through `heldout_classes` and `class_split`.
"""

from __future__ import annotations

import os

import numpy as np

from sketchseg_jax.data.sources import common
from sketchseg_jax.data.sources.common import BadFiles, Source

_EXTENSIONS = {"svg": (".svg",), "png": (".png",)}


class TUBerlin(Source):
  """TU-Berlin sketches, one record each; see the module docstring."""

  kind = "tuberlin"

  def __init__(self, root, format: str = "svg", sketch_dir=None, split: str = "all",
               test_fraction: float = 0.1, split_seed: int = 0, classes=None,
               heldout_classes=None, class_split: str = "all", skip_bad: bool = False,
               check_headers: bool = True, verify: bool = False):
    self.root = root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    common.require_dir(root, "TU-Berlin root")
    self.split = common.check_choice("split", split, common.SPLITS)
    self.format = common.check_choice("format", format, tuple(_EXTENSIONS))
    test_fraction = common.check_fraction("test_fraction", test_fraction)
    self._dir = common.require_dir(
        common.resolve(root, sketch_dir if sketch_dir is not None else format),
        "TU-Berlin sketch folder")
    self.categories = tuple(common.select_categories(
        common.subfolders(self._dir), root, classes, heldout_classes, class_split))

    bad = BadFiles()
    ignored = 0
    self._paths, cats = [], []
    for c, cls in enumerate(self.categories):
      for name in sorted(common.files_in(os.path.join(self._dir, cls)), key=common.natural_key):
        stem, ext = common.split_ext(name)
        if ext not in _EXTENSIONS[self.format]:
          ignored += 1
          continue
        if split != "all" and common.in_test(f"{cls}/{stem}", test_fraction, split_seed) != (
            split == "test"):
          continue
        rel = f"{cls}/{name}"
        if check_headers or verify:
          problem = common.file_problem(os.path.join(self._dir, rel), "sketch", verify)
          if problem:
            bad.add(os.path.join(self._dir, rel), problem)
            continue
        self._paths.append(rel)
        cats.append(c)
    self._cat = np.asarray(cats, np.int32)
    self._size = len(self._paths)
    self.num_skipped, self.skipped_examples = bad.settle("TU-Berlin", root, skip_bad)
    self.num_ignored_files = ignored
    self._split_rule = f"hash (test_fraction={test_fraction}, split_seed={split_seed})"
    common.no_records(self, f"split={split!r}, format={format!r}")

  def _record(self, i: int) -> dict:
    c = int(self._cat[i])
    path = os.path.join(self._dir, self._paths[i])
    return {"sketch": common.read_sketch(path), "category": self.categories[c],
            "category_id": c, "sketch_id": common.split_ext(self._paths[i])[0],
            "sketch_path": path}

  def _facts(self) -> dict:
    return {"format": self.format, "sketch_dir": self._dir, "split_rule": self._split_rule,
            "num_ignored_files": self.num_ignored_files}
