"""The one exception type users see: its message is a complete, single-line explanation."""


class GlaclipError(Exception):
    """A problem with the user's input, files or environment (never a bug in glaclip)."""
