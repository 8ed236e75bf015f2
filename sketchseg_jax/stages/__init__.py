"""Training stages: each a small module implementing sketchseg_jax.train.stage.Stage."""
