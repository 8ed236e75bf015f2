"""sketchseg_jax: freestyle sketch-guided image segmentation in JAX/Flax.

`sketchseg_jax.Predictor` is imported on first use, so `import sketchseg_jax` stays light."""


def __getattr__(name):
  if name == "Predictor":
    from sketchseg_jax.infer.predictor import Predictor
    return Predictor
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
