"""The training engine: configs, mesh and shardings, optimizer, checkpoints, the loop."""
