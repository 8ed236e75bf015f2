"""Real data sets from the user's own files, as grain random-access sources.

Each source has `len()`, `source[i] -> record` (a dict in the sample convention of
`sketchseg_jax.sketch.augment`), `categories`, `num_skipped` and `describe()`; it pickles as
file lists. `build_source(config)` makes one from a dict (or ConfigDict) whose "name" picks
the source and whose other keys are its constructor's arguments:

  name          source                       required keys
  sketchy       sketchy.Sketchy              root
  qmul          qmul.QMUL                    root, photo_glob, sketch_glob, category
  shoev2        qmul.QMUL, category "shoe"   root, photo_glob, sketch_glob
  chairv2       qmul.QMUL, category "chair"  root, photo_glob, sketch_glob
  quickdraw     quickdraw.QuickDraw          root
  tuberlin      tuberlin.TUBerlin            root
  eval_folder   eval_folder.EvalFolder       root        (alias: folder)
  world         synthetic.WorldSource        -           (the procedural world, on the fly)
  tfds          tfds_store.TFDSSource        path        (written by `sketchseg data synth`)

Keys most sources share: `split` ("all", "train", "test"), `skip_bad` (False: bad files raise
one error naming the root, the count and the first few; True: they are left out and counted
in `num_skipped`), `check_headers` (True: every image and sketch header of the chosen split is
opened at construction, tens of microseconds a file; QuickDraw checks its lines instead),
`verify` (True: every file is fully decoded at construction), and for categories `classes`,
`heldout_classes`, `class_split` ("all", "seen", "heldout"). Each module's docstring has the
layout it reads and the rest of its keys; `config_keys(name)` lists them with defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from sketchseg_jax.data.sources.common import PhotoGallery, Source, SourceError
from sketchseg_jax.data.sources.eval_folder import GRANULARITIES, EvalFolder
from sketchseg_jax.data.sources.qmul import QMUL
from sketchseg_jax.data.sources.quickdraw import QuickDraw
from sketchseg_jax.data.sources.sketchy import Sketchy
from sketchseg_jax.data.sources.synthetic import WorldSource, tfds_source
from sketchseg_jax.data.sources.tuberlin import TUBerlin

SOURCES = {
    "sketchy": (Sketchy, {}),
    "qmul": (QMUL, {}),
    "shoev2": (QMUL, {"category": "shoe"}),
    "chairv2": (QMUL, {"category": "chair"}),
    "quickdraw": (QuickDraw, {}),
    "tuberlin": (TUBerlin, {}),
    "eval_folder": (EvalFolder, {}),
    "folder": (EvalFolder, {}),
    "world": (WorldSource, {}),
    "tfds": (tfds_source, {}),
}


def config_keys(name: str) -> dict:
  """{key: default} of the source called `name`; required keys map to inspect.Parameter.empty."""
  cls, preset = _lookup(name)
  init = cls.__init__ if isinstance(cls, type) else cls
  params = list(inspect.signature(init).parameters.values())[int(isinstance(cls, type)):]
  return {p.name: preset.get(p.name, p.default) for p in params}


def _lookup(name):
  if name not in SOURCES:
    raise SourceError(f"unknown data source {name!r}; choose from {', '.join(sorted(SOURCES))}")
  return SOURCES[name]


def build_source(config) -> Source:
  """The source that `config["name"]` names, built from the config's other keys."""
  if not isinstance(config, Mapping) and hasattr(config, "to_dict"):
    config = config.to_dict()  # ml_collections.ConfigDict
  if not isinstance(config, Mapping):
    raise SourceError(f"a source config must be a dict, got {type(config).__name__}")
  config = dict(config)
  if "name" not in config:
    raise SourceError(f"a source config needs 'name' (one of {', '.join(sorted(SOURCES))})")
  name = config.pop("name")
  cls, preset = _lookup(name)
  keys = config_keys(name)
  unknown = sorted(set(config) - set(keys))
  if unknown:
    raise SourceError(f"source {name!r}: unknown config key{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(map(repr, unknown))}; accepted: {', '.join(keys)}")
  kwargs = {**preset, **config}
  missing = [k for k, v in keys.items() if v is inspect.Parameter.empty and k not in kwargs]
  if missing:
    raise SourceError(f"source {name!r}: missing config key{'s' if len(missing) > 1 else ''} "
                      f"{', '.join(map(repr, missing))}")
  return cls(**kwargs)


__all__ = ["SOURCES", "GRANULARITIES", "EvalFolder", "PhotoGallery", "QMUL", "QuickDraw",
           "Sketchy", "Source", "SourceError", "TUBerlin", "WorldSource", "build_source",
           "config_keys"]
