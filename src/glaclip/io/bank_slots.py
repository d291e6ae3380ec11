"""A store being built: the rows a build still owes a memory-bank store, in slots that any number of
processes fill concurrently and that survive a kill -9, then streamed into the store's `.pt`.

For a store `{stem}.pt` whose file holds rows 0 .. first-1 (none when it does not exist yet) and whose
manifest now has n rows, the work files beside it are

    {stem}.slots.npy   (n - first) x D float16 (NumPy's .npy): row i = store row first + i
    {stem}.done.npy    (n - first) bool: slot i written

A process writes an image's rows into their slots, then marks them done (in that order, with
os.pwrite through the same page cache, so a mark never outlives its rows when a process is killed;
nothing is memory-mapped, so no process's memory grows with the store). Processes write disjoint slots
(an image's ids belong to one process), so they need no lock. `finish` writes the store anew
(the old file's rows and the slots, chunk by chunk, `io.bank_store.open_store`: temporary name, then
rename) and then removes the work files; a work file found beside a store that already has every row
is what a kill between the two left, and is removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import GlaclipError, one_line
from .bank import read_store
from .bank_store import CHUNK_ROWS, open_store, store_chunks
from .files import atomic_paths


def slot_paths(store: str | Path) -> tuple[Path, Path]:
    """(`{stem}.slots.npy`, `{stem}.done.npy`) beside a store `{stem}.pt`."""
    store = Path(store)
    return store.with_name(store.stem + ".slots.npy"), store.with_name(store.stem + ".done.npy")


def store_rows(store: str | Path) -> int:
    """The rows a store file holds (0 when there is none)."""
    store = Path(store)
    return read_store(store).shape[0] if store.exists() else 0


def _data_offset(path: Path) -> int:
    """Where an .npy file's array starts (after its header)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
        return f.tell()


def _new_array(path: Path, shape: tuple, dtype) -> None:
    """An .npy file of zeros (sparse where the file system allows), made under a temporary name."""
    with atomic_paths([path]) as (tmp,):
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()


class Slots:
    """The work files of one store (module docstring): rows first .. n-1 of width dim."""

    def __init__(self, store: str | Path, first: int, n: int, dim: int):
        self.store, self.first, self.n, self.dim = Path(store), int(first), int(n), int(dim)
        self.rows_path, self.done_path = slot_paths(self.store)
        self._rows = self._done = None

    @classmethod
    def prepare(cls, store: str | Path, n: int, dim: int) -> "Slots | None":
        """The slots a store needs to reach n rows, made or resumed (on one process, before the others
        open them); None when the store has its n rows already (left-over work files removed). A store
        with more rows than n, or work files of another size, is a GlaclipError naming the file."""
        store = Path(store)
        first, width = read_store(store).shape if store.exists() else (0, dim)
        if width != dim:
            raise GlaclipError(f"memory bank store {store} has rows of width {width}, this model gives {dim}")
        rows_path, done_path = slot_paths(store)
        if first > n:
            raise GlaclipError(f"memory bank store {store} has {first} rows, its manifest {n} (a store only grows "
                               "with its manifest: not this bank's store?)")
        if first == n:
            rows_path.unlink(missing_ok=True)
            done_path.unlink(missing_ok=True)
            return None
        slots = cls(store, first, n, dim)
        want = (n - first, dim)
        for path, shape, dtype in ((rows_path, want, np.float16), (done_path, want[:1], np.bool_)):
            if path.exists():
                try:
                    arr = np.load(path, mmap_mode="r")
                    found = (arr.shape, arr.dtype)
                    del arr
                except Exception as exc:
                    raise GlaclipError(f"memory bank work file {path} cannot be read ({one_line(exc, 120)}); "
                                       "remove it to start this store again") from None
                if found[1] == np.dtype(dtype) and found[0][1:] == shape[1:] and found[0][0] < shape[0]:
                    _grow(path, shape, dtype)  # images came into the manifest after an interrupted build
                elif found != (shape, np.dtype(dtype)):
                    raise GlaclipError(f"memory bank work file {path} holds {found[0]} {found[1]}, this build needs "
                                       f"{shape} {np.dtype(dtype)} (did the manifest change?); remove it to start "
                                       "this store again")
            else:
                if path is rows_path:
                    done_path.unlink(missing_ok=True)  # marks without their rows mean nothing
                _new_array(path, shape, dtype)
        return slots

    def open(self) -> "Slots":
        """Get ready to write (every process that writes)."""
        self._rows, self._done = _data_offset(self.rows_path), _data_offset(self.done_path)
        return self

    def done(self) -> np.ndarray:
        """Which slots are written (read from the file, n - first bytes)."""
        return np.fromfile(self.done_path, dtype=np.bool_, count=self.n - self.first,
                           offset=_data_offset(self.done_path))

    def write(self, start: int, rows) -> None:
        """Store rows start .. start+k-1 (k x dim, cast to float16), then their marks."""
        arr = rows.detach().to("cpu").numpy() if hasattr(rows, "detach") else np.asarray(rows)
        a = start - self.first
        if arr.ndim != 2 or arr.shape[1] != self.dim or a < 0 or a + arr.shape[0] > self.n - self.first:
            raise GlaclipError(f"rows {start}..{start + len(arr) - 1} of width {arr.shape[-1]} do not fit the store "
                               f"{self.store.name} (rows {self.first}..{self.n - 1}, width {self.dim})")
        if self._rows is None:
            self.open()
        data = np.ascontiguousarray(arr, dtype="<f2").tobytes()
        _pwrite(self.rows_path, data, self._rows + a * self.dim * 2)
        _pwrite(self.done_path, b"\x01" * arr.shape[0], self._done + a)

    def finish(self, chunk_rows: int = CHUNK_ROWS) -> bool:
        """When every slot is written: the store rewritten with its old rows and the slots (streamed),
        then the work files removed; returns True. False (nothing written) while slots are missing."""
        if not bool(self.done().all()):
            return False
        offset, count = _data_offset(self.rows_path), self.n - self.first
        with open_store(self.store, self.dim) as writer:
            if self.first:
                for chunk in store_chunks(self.store, 0, self.first, chunk_rows):
                    writer.write(chunk)
            for a in range(0, count, chunk_rows):
                k = min(chunk_rows, count - a)
                writer.write(np.fromfile(self.rows_path, dtype="<f2", count=k * self.dim,
                                         offset=offset + a * self.dim * 2).reshape(k, self.dim))
        self.rows_path.unlink(missing_ok=True)
        self.done_path.unlink(missing_ok=True)
        return True


def _grow(path: Path, shape: tuple, dtype, chunk_bytes: int = 64 * 2**20) -> None:
    """An .npy work file lengthened to `shape` (zeros after its old content), by copying it into a
    new file renamed over it: the rows file is grown before its marks, so a mark still implies its row."""
    offset, size = _data_offset(path), path.stat().st_size
    with atomic_paths([path]) as (tmp,):
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
        start = _data_offset(tmp)
        with open(path, "rb") as src:
            src.seek(offset)
            at = start
            while at - start < size - offset:
                block = src.read(min(chunk_bytes, size - offset - (at - start)))
                if not block:
                    break
                _pwrite(tmp, block, at)
                at += len(block)


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    finally:
        os.close(fd)
