"""Data: the procedural world, dataset sources, grain pipelines."""
