"""Samples stored as a TFDS dataset (array_record files, uint8/float32/int32 tensors only,
so neither writing nor reading needs TensorFlow), and read back as a grain source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from sketchseg_jax.data import codec
from sketchseg_jax.errors import UserError

VERSION = "1.0.0"


def _features():
  import tensorflow_datasets as tfds
  t = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "image": t(shape=(None, None, 3), dtype=np.uint8, encoding="bytes"),
      "masks_packed": t(shape=(None,), dtype=np.uint8, encoding="bytes"),
      "points": t(shape=(None, 2), dtype=np.float32, encoding="bytes"),
      "stroke_lengths": t(shape=(None,), dtype=np.int32, encoding="bytes"),
      "meta": t(shape=(None,), dtype=np.uint8, encoding="bytes"),
  })


def _builder_class():
  import tensorflow_datasets as tfds

  class SampleRecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over in-memory sample generators (no class registration, no download)."""
    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, name: str, splits: Mapping, description: str, metadata: dict,
                 **kwargs):
      self.name = name
      self._splits = splits
      self._description = description
      self._metadata = metadata
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=self._description,
                                   features=_features(), disable_shuffling=True,
                                   metadata=tfds.core.MetadataDict(self._metadata))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(num, make) for split, (num, make) in self._splits.items()}

    def _generate_examples(self, num, make):
      for i in range(num):
        yield i, codec.encode(make(i))

  return SampleRecordsBuilder


def write(out_dir, name: str, splits: Mapping[str, tuple], description: str = "",
          metadata: dict | None = None) -> Path:
  """Write `splits` = {split: (num, make(i) -> sample)} as TFDS dataset `name` under out_dir.
  `metadata` (JSON-able, e.g. {"categories": [...]}) lands in the dataset's metadata.json.

  Records keep the order of `make`'s indices. Returns the dataset's version folder (what
  `TFDSSource(path=...)` reads). TFDS itself
  builds in an `incomplete.*` folder and renames it when done, so an interrupted run leaves
  no dataset that looks complete.
  """
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  builder = _builder_class()(name=name, splits=splits, description=description,
                             metadata=dict(metadata or {}), data_dir=str(out_dir),
                             file_format="array_record")
  if builder.is_prepared():
    raise UserError(f"{builder.data_dir} already holds dataset {name!r} {VERSION}; choose "
                    "another --out or remove it")
  builder.download_and_prepare()
  return Path(builder.data_dir)


def find_dataset_dir(path) -> Path:
  """The version folder (holding dataset_info.json) at or under `path`."""
  path = Path(path)
  if (path / "dataset_info.json").exists():
    return path
  found = sorted(p.parent for p in path.glob("*/*/dataset_info.json"))
  found += sorted(p.parent for p in path.glob("*/dataset_info.json"))
  if len(found) != 1:
    what = "no TFDS dataset" if not found else f"{len(found)} TFDS datasets"
    raise UserError(f"{path}: found {what} (a folder with dataset_info.json); point at one")
  return found[0]


class TFDSSource:
  """A grain random-access source over a dataset written by `write` (or by
  `sketchseg data synth --format tfds`). Opens its files lazily, so it pickles as a path."""

  def __init__(self, path, split: str = "train"):
    self.path = str(find_dataset_dir(path))
    self.split = split
    self._source = None
    info = json.loads((Path(self.path) / "dataset_info.json").read_text())
    splits = {s["name"]: s for s in info.get("splits", [])}
    if split not in splits:
      raise UserError(f"{self.path}: no split {split!r}; it has {sorted(splits)}")
    self._len = int(sum(int(n) for n in splits[split].get("shardLengths", [])))
    meta_file = Path(self.path) / "metadata.json"
    self.metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    self.categories = tuple(self.metadata.get("categories", ()))

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds
      self._source = tfds.builder_from_directory(self.path).as_data_source(split=self.split)
    return self._source

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    if not -self._len <= index < self._len:
      raise IndexError(f"index {index} out of range for {self._len} records")
    return codec.decode(self._open()[index % self._len])

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def describe(self) -> dict:
    return {"path": self.path, "split": self.split, "records": self._len}
