"""One reader (and writer) per sketch file format; `sketchseg_jax.sketch.io` picks among them."""
