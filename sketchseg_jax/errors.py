"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class UserError(ValueError):
  """Bad input from the user: a file, a flag or a value; the message names what and why."""


class CheckpointError(UserError):
  """A checkpoint is missing, truncated, or of another architecture than asked for."""
