"""Tiny segmenter runs for tests: random-init towers, a few steps, seconds on a CPU."""

import importlib.util
import itertools
from pathlib import Path

from sketchseg_jax.train.config_lib import load_config

ROOT = Path(__file__).resolve().parents[1]

TINY_TEACHER = dict(
    vit=dict(family="clip", width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8,
             image_size=32, mlp="gelu", projection_dim=32, dtype="float32"),
    num_prompts=2, deep_prompts=False, separate_towers=True, pool="cls", tune="full")


def tiny_config(stage: str = "segmenter", steps: int = 2, image_size: int = 32, **overrides):
  """configs/segmenter_world.py:runlocal shrunk to a 32-wide random-init teacher."""
  arg = "runlocal" + (",supervised" if stage == "supervised" else "")
  c = load_config(f"{ROOT / 'configs' / 'segmenter_world.py'}:{arg}")
  c.unlock()
  c.total_steps = steps
  c.log_every_steps = 1
  c.tensorboard = False
  c.teacher.random_init = True
  c.teacher.model = TINY_TEACHER
  c.teacher.data = dict(image_size=32, raster_size=32, sketch_width=2.0)
  c.data.source.size = image_size
  c.data.image_size = image_size
  c.data.batch_size = 8
  c.eval.num = 8
  c.eval.quick_num = 8
  c.eval.batch_size = 8
  c.eval.grid = 4
  c.checkpoint.async_save = False
  # Unpooled logits, so that the parity tests compare maps that vary within colour regions;
  # tests/test_regions.py covers model.regions (the config's default).
  c.model.regions = 0.0
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def train_tiny(workdir, stage: str = "segmenter", **overrides):
  from sketchseg_jax.train.loop import train
  config = tiny_config(stage, **overrides)
  train(config, workdir)
  return Path(workdir)


def stage_with_batch(config):
  """(stage ready to train, one training batch, its initial params) of a tiny config."""
  import jax

  from sketchseg_jax.data.pipeline import build_dataset
  from sketchseg_jax.param_tree import plain
  from sketchseg_jax.train import stage as stage_lib
  stage = stage_lib.build(config)
  stage.prepare_training()
  batch = next(iter(build_dataset(stage.data_config("train"), "train")))
  return stage, batch, plain(jax.jit(stage.init)(jax.random.key(0), batch))


_generated = itertools.count()


def import_generated(out):
  """The sketchseg_torch.py that `sketchseg export` wrote to folder `out`, imported under a
  fresh module name."""
  spec = importlib.util.spec_from_file_location(f"sketchseg_torch_test_{next(_generated)}",
                                                Path(out) / "sketchseg_torch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
