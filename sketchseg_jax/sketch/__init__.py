"""Sketches as data: the Sketch type, readers and writers for the published formats, the
anti-aliased rasterizer, and on-the-fly augmentations (sketchseg_jax.sketch.augment)."""

from sketchseg_jax.sketch.io import FORMATS, coerce, detect_format, load, save
from sketchseg_jax.sketch.raster import placement, rasterize, resize_raster
from sketchseg_jax.sketch.types import Sketch, SketchFormatError, StrokeLabel

__all__ = ["Sketch", "StrokeLabel", "SketchFormatError", "load", "save", "coerce",
           "detect_format", "FORMATS", "rasterize", "placement", "resize_raster"]
