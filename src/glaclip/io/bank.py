"""Memory banks in CorrCLIPv2's on-disk layout (CORRCLIP2.md sections 3 and 7), read as published.

    BANK_DIR/clip_embeddings/{name}_{encoder}.pt     torch-saved N x D float16 tensor; row = region id
    BANK_DIR/vfm_embeddings/{name}_{vfm}.faiss       FAISS index (IndexIDMap2, usually over IVFPQ) of the
                                                     regions' mean VFM features, ids = store rows

encoder: `metaclip_b` / `metaclip_l` for the main CLIP, `dfnclip_b` for the auxiliary one (DMCE);
vfm: `radiov3` (C-RADIOv3-L). A store's rows are read one by one where they lie in its file (os.pread):
only the rows a search returns are read, never the whole file, and nothing else stays in memory. FAISS
comes from the `faiss-cpu` package (the `bank` extra); it lives here, with the files it reads (it is no
network library). An IVF index probes min(256, nlist) lists, as the release sets it.

`MemoryBank.open` checks everything before any image: each store is 2-D float16 with the CLIP's output
width, its rows cover every id of the index, the index's width is the VFM's. A missing or mismatching
file is one GlaclipError line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import GlaclipError, one_line, require

NPROBE = 256  # lists an IVF index probes at most (the release: min(256, nlist))
_SAMPLED_ROWS = 1024  # store rows hashed into a bank's fingerprint (with shape, dtype and file size)


@dataclass(frozen=True)
class BankFiles:
    """Where a bank's files are: the stores by role ('main', 'aux') and the FAISS index."""

    root: Path
    name: str
    stores: Mapping[str, Path]
    index: Path


def bank_files(root: str | Path, name: str, encoders: Mapping[str, str], vfm_key: str) -> BankFiles:
    """The files of bank `name` under `root` for the given store encoders ({role: encoder key}) and VFM
    key, each checked to exist (one line naming the first missing file)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GlaclipError(f"memory bank folder not found: {root} (the folder holding clip_embeddings/ and "
                           "vfm_embeddings/)")
    stores = {role: root / "clip_embeddings" / f"{name}_{enc}.pt" for role, enc in encoders.items()}
    index = root / "vfm_embeddings" / f"{name}_{vfm_key}.faiss"
    for path in [*stores.values(), index]:
        if not path.is_file():
            raise GlaclipError(f"memory bank file not found: {path}")
    return BankFiles(root, name, dict(stores), index)


def _faiss():
    return require("faiss", "bank", "a memory bank")


class Store:
    """A store on disk: N x D float16 rows. `rows` reads just the rows asked for, each with one os.pread at
    its byte offset in the file: nothing is mapped or held, so the process's memory grows by those rows
    only (a memory map would grow by the kernel's readahead and fault-around, 64 KiB or more per row)."""

    def __init__(self, path: Path, shape: tuple[int, int], offset: int | None, mapped: torch.Tensor | None):
        self.path, self.shape, self.dtype = path, shape, torch.float16
        self._offset, self._mapped = offset, mapped  # offset None: read through the memory map instead

    def rows(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The rows `ids` (any order, repeats allowed) as a k x D float16 tensor."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._offset is None:
            return self._mapped.index_select(0, torch.from_numpy(ids))
        size = self.shape[1] * 2
        buf = bytearray(ids.size * size)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j, i in enumerate(ids.tolist()):
                chunk = os.pread(fd, size, self._offset + i * size)
                if len(chunk) != size:
                    raise GlaclipError(f"memory bank store {self.path} ends before row {i}: was it changed?")
                buf[j * size : (j + 1) * size] = chunk
        finally:
            os.close(fd)
        return torch.frombuffer(buf, dtype=torch.float16).view(ids.size, self.shape[1]) if ids.size else \
            torch.empty(0, self.shape[1], dtype=torch.float16)

    def span(self, start: int, stop: int) -> torch.Tensor:
        """The consecutive rows start..stop-1 as a k x D float16 tensor, read with one os.pread
        (the bank writers stream stores through this)."""
        start, stop = max(0, int(start)), min(int(stop), self.shape[0])
        if self._offset is None or stop <= start:
            return self.rows(np.arange(start, max(start, stop)))
        size = self.shape[1] * 2
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf = bytearray(os.pread(fd, (stop - start) * size, self._offset + start * size))
        finally:
            os.close(fd)
        if len(buf) != (stop - start) * size:
            raise GlaclipError(f"memory bank store {self.path} ends before row {stop - 1}: was it changed?")
        return torch.frombuffer(buf, dtype=torch.float16).view(stop - start, self.shape[1])


def _data_offset(path: Path, t: torch.Tensor) -> int | None:
    """The byte offset in `path` (torch's zip format) of the first element of t, loaded from it; None when
    the layout is not the plain one (one stored, uncompressed data record holding t contiguously)."""
    try:
        with zipfile.ZipFile(path) as z:
            records = [i for i in z.infolist() if re.fullmatch(r"[^/]+/data/\d+", i.filename)]
        if len(records) != 1 or records[0].compress_type != zipfile.ZIP_STORED or not t.is_contiguous():
            return None
        info = records[0]
        if info.file_size != t.untyped_storage().nbytes():
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        return info.header_offset + 30 + name_len + extra_len + t.storage_offset() * t.element_size()
    except (OSError, zipfile.BadZipFile, struct.error):
        return None


def read_store(path: Path) -> Store:
    """A store opened: shape and dtype checked from the file, no row read."""
    try:
        t = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise GlaclipError(f"memory bank store {path} does not load as a torch-saved tensor: {one_line(exc)}") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.dtype != torch.float16:
        what = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise GlaclipError(f"memory bank store {path} must hold a 2-D float16 tensor (N x D), not {what}")
    offset = _data_offset(path, t) if hasattr(os, "pread") else None
    return Store(path, (int(t.shape[0]), int(t.shape[1])), offset, t if offset is None else None)


def read_index(path: Path):
    """(the index as read, which owns the others; inner index; id map) of a FAISS file: an IndexIDMap or
    IndexIDMap2's inner index and its ids, or a plain index whose ids are its positions; an IVF index
    probes min(NPROBE, nlist) lists."""
    faiss = _faiss()
    try:
        owner = faiss.read_index(str(path))
    except Exception as exc:
        raise GlaclipError(f"memory bank index {path} does not load with FAISS: {one_line(exc)}") from None
    index = faiss.downcast_index(owner)  # a view: `owner` holds the C++ object (and the inner index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
    else:
        inner, id_map = index, np.arange(index.ntotal, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.nprobe = min(NPROBE, ivf.nlist)
    return owner, inner, id_map


@dataclass
class MemoryBank:
    """An opened bank: its stores by role (`Store`), the FAISS index and its id map."""

    files: BankFiles
    stores: dict[str, Store]
    index: object
    id_map: np.ndarray
    owner: object = field(default=None, repr=False)  # the FAISS object that owns `index`
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def open(cls, files: BankFiles, dims: Mapping[str, int], vfm_dim: int) -> "MemoryBank":
        """Read and check a bank: dims = the output width of each role's CLIP, vfm_dim = the VFM's width."""
        stores = {role: read_store(path) for role, path in files.stores.items()}
        owner, index, id_map = read_index(files.index)
        if index.d != vfm_dim:
            raise GlaclipError(f"memory bank index {files.index} has width {index.d}, the VFM's features {vfm_dim}")
        if id_map.size != index.ntotal:
            raise GlaclipError(f"memory bank index {files.index}: {id_map.size} ids for {index.ntotal} vectors")
        low, high = (int(id_map.min()), int(id_map.max())) if id_map.size else (0, -1)
        for role, t in stores.items():
            path = files.stores[role]
            if role in dims and t.shape[1] != dims[role]:
                raise GlaclipError(f"memory bank store {path} has width {t.shape[1]}, the {role} CLIP's output "
                                   f"{dims[role]}")
            if low < 0 or high >= t.shape[0]:
                raise GlaclipError(f"memory bank store {path} has {t.shape[0]} rows; the index {files.index.name} "
                                   f"holds ids {low}..{high}")
        return cls(files, stores, index, id_map, owner)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """R x C float32 queries -> R x k bank ids (-1 where the index returns no neighbour), nearest first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, pos = self.index.search(q, k)
        return np.where(pos >= 0, self.id_map[np.clip(pos, 0, None)], -1)

    def rows(self, role: str, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The rows `ids` of a store (k x D float16), read from its file."""
        return self.stores[role].rows(ids)

    def fingerprint(self) -> str:
        """The bank by content, cheaply: the index file's bytes, and per store its shape, dtype, file
        size and _SAMPLED_ROWS rows evenly spaced over it (first and last included); computed once."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=20)
            with open(self.files.index, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
            for role in sorted(self.stores):
                t = self.stores[role]
                n = t.shape[0]
                h.update(f"{role}:{tuple(t.shape)}:{t.dtype}:{self.files.stores[role].stat().st_size};".encode())
                if n:
                    picks = np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_ROWS)).astype(np.int64))
                    h.update(t.rows(picks).contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def open_bank(root: str | Path, name: str, encoders: Mapping[str, str], vfm_key: str, dims: Mapping[str, int],
              vfm_dim: int) -> MemoryBank:
    """`bank_files` then `MemoryBank.open`."""
    return MemoryBank.open(bank_files(root, name, encoders, vfm_key), dims, vfm_dim)
