"""Writing files safely: every output is written under a temporary name beside its final path and
renamed into place, so a reader never sees a half-written file and an interrupted run leaves none.

Temporaries are named ``.NAME.XXXXXXXX.part.EXT`` (hidden, 8 random characters from `tempfile`);
a process killed outright (SIGKILL) cannot remove its own, so `remove_stale_temporaries` deletes
files with exactly that naming, and nothing else, before a run writes into a folder again.
Outputs get the permissions of the umask (0666 masked), as `open` would give them.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.part(\.[^.]+)?$")  # what `atomic_paths` names its files


ENCODING_SUFFIX = ".encoding.safetensors"  # a saved image encoding's file name ends so (`steps.encoding`)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_temporary(path: Path | str) -> bool:
    """Whether a file name has the form `atomic_paths` gives its temporaries."""
    return bool(_TEMP_NAME.match(Path(path).name))


@contextmanager
def atomic_paths(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths beside `paths` (folders made as needed); on success rename all of them
    into place, on any error remove them all, so a failed run never leaves partial outputs."""
    temps = []
    try:
        for p in paths:
            p = Path(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part" + p.suffix, dir=p.parent)
            os.close(fd)
            os.chmod(name, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the umask
            temps.append(Path(name))
        yield temps
        for tmp, final in zip(temps, paths):
            os.replace(tmp, final)
        temps = []
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Write text under a temporary name and rename it into place (permissions from the umask)."""
    with atomic_paths([Path(path)]) as (tmp,):
        tmp.write_text(text)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries `atomic_paths` left under folder (recursively) when a process was
    killed; files named otherwise are never touched. Call only while no writer is running there.
    Returns how many were removed."""
    stale = [p for p in Path(folder).rglob(".*.part*") if p.is_file() and not p.is_symlink() and is_temporary(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
