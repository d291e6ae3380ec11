"""`glaclip cache info|clear`: the on-disk cache of text-query embeddings (a sub-command group of `cli.app`)."""

from __future__ import annotations

import typer

from ..errors import GlaclipError

cache_app = typer.Typer(help="The on-disk cache of text-query embeddings ($GLACLIP_CACHE_DIR or the user cache).",
                        no_args_is_help=True)


@cache_app.command("info")
def cache_info_cmd() -> None:
    """Where the cache is, how many query embeddings it holds and its size."""
    from ..steps.text_cache import cache_info

    info = cache_info()
    other = f"\nother:    {info['other_files']} files that are not cache entries" if info["other_files"] else ""
    typer.echo(f"location: {info['location']}\nentries:  {info['entries']} query embeddings "
               f"({info['models']} text models)\nsize:     {info['bytes'] / 2**20:.2f} MiB{other}")


@cache_app.command("clear")
def cache_clear_cmd() -> None:
    """Remove the cached text embeddings (only files the cache wrote; anything else stays)."""
    from ..steps.text_cache import cache_root, clear_cache

    root = cache_root()
    report = clear_cache(root)
    typer.echo(f"removed {report.removed} query embeddings from {root}")
    if report.kept:
        shown = ", ".join(str(p) for p in report.kept[:3]) + (", ..." if len(report.kept) > 3 else "")
        typer.echo(f"kept {len(report.kept)} files or folders that the cache did not write: {shown}")
    if report.failed:
        path, reason = report.failed[0]
        raise GlaclipError(f"could not remove {len(report.failed)} cache files ({reason}: {path}"
                           f"{' and others' if len(report.failed) > 1 else ''})")
