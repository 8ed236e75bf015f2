"""The `sketchseg` command. Each subcommand lives in sketchseg_jax/commands/<name>.py and
provides `register(subparsers)`; heavy imports happen inside the handlers so `--help` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order `sketchseg --help` lists them in.
COMMANDS = ("train", "eval", "segment", "convert", "export", "data", "sketch", "demo")


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
  args, extra = parser.parse_known_args(argv)
  # Only `train` (and commands like it) take free-form --config.a.b=value overrides.
  overrides, unknown = [], []
  i = 0
  while i < len(extra):
    item = extra[i]
    if getattr(args, "accepts_overrides", False) and item.startswith("--config."):
      if "=" not in item and i + 1 < len(extra):
        item, i = f"{item}={extra[i + 1]}", i + 1
      overrides.append(item)
    else:
      unknown.append(item)
    i += 1
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.overrides = overrides
  from sketchseg_jax.errors import UserError
  try:
    return int(args.handler(args) or 0)
  except (UserError, CommandError) as e:
    print(f"sketchseg {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
