"""Using a trained segmenter: the Predictor (cached photo features, any number of sketches)
and the drawing of masks over photos (`render`). Imports are lazy so `render` alone stays
free of JAX."""

__all__ = ["Predictor", "load_photo"]


def __getattr__(name):
  if name in __all__:
    from sketchseg_jax.infer import predictor
    return getattr(predictor, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
