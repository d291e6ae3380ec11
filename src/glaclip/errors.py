"""The one exception type users see: its message is a complete, single-line explanation."""


class GlaclipError(Exception):
    """A problem with the user's input, files or environment (never a bug in glaclip)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
