"""`python -m sketchseg_jax ...`: the `sketchseg` command where the console script is not on
PATH (a venv that is not activated)."""

import sys

from sketchseg_jax.cli import main

sys.exit(main())
