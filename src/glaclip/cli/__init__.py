"""The command line: typer commands only (`glaclip.cli:main`, `python -m glaclip`)."""

from .main import app, main

__all__ = ["app", "main"]
