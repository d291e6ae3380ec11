"""Writing memory-bank stores (`{name}_{encoder}.pt`, `{name}_{vfm}.pt`): an N x D float16 tensor in
torch's zip format, written row chunk by row chunk, so that N x D is never in memory.

The file is what `torch.save` of the whole tensor gives, as far as `torch.load` (the release's
PTTensorDataset, with or without mmap=True) and `io.bank.read_store` can tell: records
`archive/data.pkl` (the pickle of `_rebuild_tensor_v2` over one HalfStorage), `archive/byteorder`
(`little`), `archive/data/0` (the rows, little-endian float16, stored uncompressed and 64-byte aligned,
as torch aligns its records), `archive/version` (3) and torch's `.format_version` /
`.storage_alignment` records. The rows are streamed into `data/0` with `zipfile` (zip64 headers, so
past 4 GiB too); `data.pkl` is written after them, when N is known.

Every store is written under a temporary name and renamed into place (`io.files.atomic_paths`):
a reader sees the old file or the new one, never half of one. `append_store` writes a new file from
the old one's rows (read in chunks) and the new rows, then renames it over the old one.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import GlaclipError, one_line
from .bank import read_store
from .files import atomic_paths

ARCHIVE = "archive"  # the zip's top folder; torch.load accepts any name
ALIGN = 64  # torch aligns each record's data to 64 bytes (its "FB" padding field)
CHUNK_ROWS = 65536  # rows read or converted at a time (128 MiB of float16 at D = 1024)
_PAD_ID = 0x4246  # b"FB": the extra-field id torch uses for its padding
_ZIP64_LOCAL_EXTRA = 20  # what zipfile adds to a local header with force_zip64 (id, size, two sizes)


class _StoragePlaceholder:
    """Stands for the tensor's storage in the pickle (a persistent id, as torch.save writes it)."""


class _TensorRecord:
    """Pickles as torch.save pickles a contiguous N x D float16 CPU tensor with storage key '0'."""

    def __init__(self, n: int, d: int):
        self.n, self.d = n, d

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_STORAGE, 0, (self.n, self.d), (self.d, 1), False,
                                                 collections.OrderedDict())


_STORAGE = _StoragePlaceholder()


def tensor_pickle(n: int, d: int) -> bytes:
    """The `data.pkl` record torch.save writes for a contiguous N x D float16 CPU tensor."""

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is _STORAGE:
                return "storage", torch.HalfStorage, "0", "cpu", n * d
            return None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(_TensorRecord(n, d))
    return buf.getvalue()


def _padding(offset: int, name: str, zip64: bool) -> bytes:
    """The extra field that puts the data of a record whose local header starts at `offset` on ALIGN."""
    head = offset + 30 + len(name.encode()) + 4 + (_ZIP64_LOCAL_EXTRA if zip64 else 0)
    pad = -head % ALIGN
    return struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad


class StoreWriter:
    """Rows appended to an open store file (see `open_store`): `write(rows)` takes k x D rows (torch or
    numpy, cast to float16); `rows` counts those written."""

    def __init__(self, fp, dim: int):
        self.dim, self.rows = int(dim), 0
        self._zip = zipfile.ZipFile(fp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._put("byteorder", b"little")
        self._put(".format_version", b"1")
        self._put(".storage_alignment", str(ALIGN).encode())
        info = self._info("data/0", zip64=True)
        self._data = self._zip.open(info, "w", force_zip64=True)

    def _info(self, record: str, zip64: bool) -> zipfile.ZipInfo:
        name = f"{ARCHIVE}/{record}"
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.extra = _padding(self._zip.fp.tell(), name, zip64)
        return info

    def _put(self, record: str, data: bytes) -> None:
        self._zip.writestr(self._info(record, zip64=False), data)

    def write(self, rows) -> None:
        """Append k x D rows (cast to little-endian float16)."""
        arr = rows.detach().to("cpu", torch.float16).numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise GlaclipError(f"store rows must be k x {self.dim}, got shape {tuple(arr.shape)}")
        self._data.write(np.ascontiguousarray(arr, dtype="<f2").tobytes())
        self.rows += arr.shape[0]

    def finish(self) -> None:
        """Close the rows' record and write the pickle and version records and the zip's directory."""
        self._data.close()
        self._put("data.pkl", tensor_pickle(self.rows, self.dim))
        self._put("version", b"3\n")
        self._zip.close()

    def abort(self) -> None:
        """Drop the zip without finishing it (its temporary file is removed by `open_store`)."""
        try:
            self._data.close()
            self._zip.close()
        except Exception:  # the file goes anyway
            pass


@contextmanager
def open_store(path: str | Path, dim: int) -> Iterator[StoreWriter]:
    """A store written at `path` (temporary name, renamed into place when the block ends without an
    error; removed on error): yields a StoreWriter for k x `dim` row chunks."""
    if sys.byteorder != "little":  # the rows are written little-endian and torch reads them natively
        raise GlaclipError("writing memory bank stores needs a little-endian machine")
    path = Path(path)
    try:
        with atomic_paths([path]) as (tmp,):
            with open(tmp, "wb") as fp:
                writer = StoreWriter(fp, dim)
                try:
                    yield writer
                except BaseException:
                    writer.abort()
                    raise
                writer.finish()
    except OSError as exc:
        raise GlaclipError(f"cannot write memory bank store {path}: {one_line(exc)}") from None


def write_store(path: str | Path, chunks: Iterable, dim: int) -> int:
    """Write a store from row chunks (each k x `dim`), atomically; returns the number of rows."""
    with open_store(path, dim) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return writer.rows


def store_chunks(path: str | Path, start: int = 0, stop: int | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[torch.Tensor]:
    """The rows start..stop of a store file, k x D float16 at a time (k <= chunk_rows), read from the
    file by their offset: no more than one chunk is in memory."""
    store = read_store(Path(path))
    stop = store.shape[0] if stop is None else min(int(stop), store.shape[0])
    for a in range(int(start), stop, chunk_rows):
        yield store.span(a, min(a + chunk_rows, stop))


def append_store(path: str | Path, chunks: Iterable, dim: int | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> tuple[int, int]:
    """Rows added at the end of a store: a new file from the old one's rows (streamed in chunks) and
    `chunks`, renamed over `path`. Without a file at `path` it is written from `chunks` alone (dim
    needed). Returns (rows before, rows after). The old rows keep their ids (row numbers)."""
    path = Path(path)
    if not path.exists():
        if dim is None:
            raise GlaclipError(f"memory bank store {path} does not exist and no row width was given")
        return 0, write_store(path, chunks, dim)
    old = read_store(path)
    if dim is not None and old.shape[1] != dim:
        raise GlaclipError(f"memory bank store {path} has width {old.shape[1]}, the new rows {dim}")
    with open_store(path, old.shape[1]) as writer:
        for rows in store_chunks(path, chunk_rows=chunk_rows):
            writer.write(rows)
        for rows in chunks:
            writer.write(rows)
    return old.shape[0], writer.rows
