"""One glaclip run at a time per output folder: an exclusive OS lock (`fcntl.flock`) on
`OUT/.glaclip-lock`, which holds the holder's pid. The kernel releases the lock when its process
ends, however it ends (kill -9 included), so a stale file never blocks a later run; a run that ends
normally removes the file. Where there is no `fcntl` (Windows) runs are not locked.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import GlaclipError

LOCK = ".glaclip-lock"  # in the output folder

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def _acquire(folder: Path) -> int:
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise GlaclipError(f"cannot write to --out {folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise GlaclipError(f"cannot lock --out {folder}: {exc.strerror or exc}") from None
            raise GlaclipError(f"{folder} is in use by another glaclip run (pid {pid}); wait for it to end, "
                               "or use another --out") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file between our open and our lock: take the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold the lock on `folder` (made beforehand) for the block; refused (GlaclipError, naming the
    holder's pid) while another process holds it."""
    if fcntl is None:
        yield
        return
    fd = _acquire(Path(folder))
    try:
        yield
    finally:
        try:
            (Path(folder) / LOCK).unlink()  # while still held, so no other run has locked this file
        except OSError:
            pass
        os.close(fd)
