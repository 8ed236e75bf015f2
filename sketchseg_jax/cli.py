"""The `sketchseg` command. Each subcommand lives in sketchseg_jax/commands/<name>.py and
provides `register(subparsers)`; heavy imports happen inside the handlers so `--help` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order `sketchseg --help` lists them in.
COMMANDS = ("convert", "sketch")


class CommandError(Exception):
  """A user-facing failure: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="sketchseg",
      description="Freestyle sketch-guided image segmentation (JAX/Flax).")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  sub.required = True
  for name in COMMANDS:
    importlib.import_module(f"sketchseg_jax.commands.{name}").register(sub)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from sketchseg_jax.errors import UserError
  try:
    return int(args.handler(args) or 0)
  except (UserError, CommandError) as e:
    print(f"sketchseg {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
