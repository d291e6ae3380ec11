"""Writing a memory bank's FAISS index (`vfm_embeddings/{name}_{vfm}.faiss`) from its VFM store, with
the CorrCLIPv2 builder's recipe (mb/generate_vfm_embeddings.py, CORRCLIP2.md section 7):

- vectors: the store's rows as float32, each divided by (its L2 norm + 1e-12);
- `IndexIVFPQ(IndexFlatIP(d), d, nlist, 32, 8)` with nlist = max(1, int(8 sqrt(N))) and the IVFPQ's
  default metric (L2; the coarse assignment by the inner-product quantizer), wrapped in an IndexIDMap2,
  vectors added with their ids (= store rows) in ascending order;
- fewer than 256 vectors cannot be built (8-bit PQ trains 256 centroids per sub-vector);
- an existing index gets only the ids it lacks (no retraining), as the release's re-run does.

Beyond the release: the vectors are read from the store CHUNK_ROWS at a time (the release loads the
whole store), and above `train_size` vectors the index trains on a seeded random sample (sorted ids;
at least 39 per coarse list, FAISS's own minimum) instead of on all of them; the sample's size is
reported. At or below train_size (default 2^18) training sees every vector in id order, as the
release's. The file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GlaclipError, one_line, require
from .bank import read_store
from .bank_store import CHUNK_ROWS
from .files import atomic_paths

PQ_M = 32  # sub-quantizers
PQ_NBITS = 8  # bits per sub-quantizer code
NLIST_FACTOR = 8  # nlist = max(1, int(8 sqrt(N)))
MIN_VECTORS = 1 << PQ_NBITS  # PQ training needs this many points
TRAIN_SIZE = 1 << 18  # above this many vectors, train on a sample
MIN_PER_LIST = 39  # FAISS's min_points_per_centroid: a sample keeps at least this many per coarse list
EPS = 1e-12


@dataclass(frozen=True)
class IndexReport:
    """What `build_index` / `update_index` did: vectors in the index, vectors added, nlist, and the
    number of vectors trained on (0 for an update, which does not train)."""

    total: int
    added: int
    nlist: int
    trained_on: int


def nlist_for(n: int) -> int:
    """The release's number of coarse lists for n vectors: max(1, int(8 sqrt(n)))."""
    return max(1, int(NLIST_FACTOR * np.sqrt(n)))


def unit_rows(rows) -> np.ndarray:
    """Store rows (k x d float16) as the index takes them: float32, divided by (L2 norm + 1e-12)."""
    x = np.asarray(rows.numpy() if hasattr(rows, "numpy") else rows).astype(np.float32)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss():
    return require("faiss", "bank", "building a memory bank index")


def training_ids(n: int, train_size: int = TRAIN_SIZE, seed: int = 0, min_per_list: int = MIN_PER_LIST) -> np.ndarray:
    """The store rows an index over n vectors trains on: all of them when n <= train_size, else a
    seeded sample of max(train_size, min_per_list x nlist) rows (all when that is n), sorted."""
    k = n if n <= train_size else min(n, max(int(train_size), min_per_list * nlist_for(n)))
    if k == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def _gather(store, ids: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Unit float32 vectors of the store rows `ids` (sorted), read chunk by chunk."""
    out = np.empty((ids.size, store.shape[1]), dtype=np.float32)
    for a in range(0, ids.size, chunk_rows):
        part = ids[a : a + chunk_rows]
        if part.size and part[-1] - part[0] + 1 == part.size:  # consecutive: one read
            rows = store.span(int(part[0]), int(part[-1]) + 1)
        else:
            rows = store.rows(part)
        out[a : a + part.size] = unit_rows(rows)
    return out


def _add(index, store, ids: np.ndarray, chunk_rows: int) -> None:
    """add_with_ids of the store rows `ids` (ascending), chunk by chunk."""
    for a in range(0, ids.size, chunk_rows):
        part = ids[a : a + chunk_rows]
        index.add_with_ids(_gather(store, part, chunk_rows), np.ascontiguousarray(part, dtype=np.int64))


def _write(index, path: Path) -> None:
    faiss = _faiss()
    try:
        with atomic_paths([path]) as (tmp,):
            faiss.write_index(index, str(tmp))
    except Exception as exc:
        raise GlaclipError(f"cannot write memory bank index {path}: {one_line(exc)}") from None


def build_index(store_path: str | Path, index_path: str | Path, train_size: int = TRAIN_SIZE, seed: int = 0,
                chunk_rows: int = CHUNK_ROWS, on_message: Callable[[str], None] | None = None) -> IndexReport:
    """A new index over every row of a VFM store (see the module's recipe), written to index_path
    (replacing any). Fewer than 256 rows, or a width that 32 sub-quantizers do not divide: GlaclipError."""
    faiss = _faiss()
    store = read_store(Path(store_path))
    n, d = store.shape
    if n < MIN_VECTORS:
        raise GlaclipError(f"memory bank index: {store_path} has {n} regions; the index needs at least "
                           f"{MIN_VECTORS} (its {PQ_NBITS}-bit product quantizer trains {MIN_VECTORS} centroids)")
    if d % PQ_M:
        raise GlaclipError(f"memory bank index: width {d} of {store_path} is not a multiple of {PQ_M} sub-quantizers")
    nlist = nlist_for(n)
    train = training_ids(n, train_size, seed, MIN_PER_LIST)
    if on_message is not None:
        what = "all" if train.size == n else f"a sample (seed {seed}) of {train.size} of the"
        on_message(f"training IVFPQ (nlist {nlist}, m {PQ_M}, {PQ_NBITS} bits) on {what} {n} vectors")
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, PQ_M, PQ_NBITS)
    ivf.train(_gather(store, train, chunk_rows))
    index = faiss.IndexIDMap2(ivf)
    _add(index, store, np.arange(n, dtype=np.int64), chunk_rows)
    _write(index, Path(index_path))
    return IndexReport(int(index.ntotal), n, nlist, int(train.size))


def update_index(store_path: str | Path, index_path: str | Path, train_size: int = TRAIN_SIZE, seed: int = 0,
                 chunk_rows: int = CHUNK_ROWS, on_message: Callable[[str], None] | None = None) -> IndexReport:
    """The index brought up to the store: built when index_path does not exist, else the store rows
    whose ids it lacks added (ascending) to the trained index, as the release's re-run does; the file
    is rewritten only when something was added."""
    index_path = Path(index_path)
    if not index_path.exists():
        return build_index(store_path, index_path, train_size, seed, chunk_rows, on_message)
    faiss = _faiss()
    store = read_store(Path(store_path))
    n, d = store.shape
    try:
        owner = faiss.read_index(str(index_path))
    except Exception as exc:
        raise GlaclipError(f"memory bank index {index_path} does not load with FAISS: {one_line(exc)}") from None
    index = faiss.downcast_index(owner)  # a view: `owner` keeps the C++ object alive
    if not isinstance(index, faiss.IndexIDMap2):
        raise GlaclipError(f"memory bank index {index_path} is a {type(index).__name__}; an update adds to the "
                           "builder's IndexIDMap2")
    if index.d != d:
        raise GlaclipError(f"memory bank index {index_path} has width {index.d}, the store {store_path} {d}")
    have = faiss.vector_to_array(index.id_map).astype(np.int64)
    if have.size and (have.min() < 0 or have.max() >= n):
        raise GlaclipError(f"memory bank index {index_path} holds ids {int(have.min())}..{int(have.max())}; the "
                           f"store {store_path} has {n} rows (a store only grows)")
    missing = np.ones(n, dtype=bool)
    missing[have] = False
    new = np.flatnonzero(missing).astype(np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    if new.size:
        if on_message is not None:
            on_message(f"adding {new.size} new vectors to {index_path.name} ({have.size} in it)")
        _add(index, store, new, chunk_rows)
        _write(owner, index_path)
    return IndexReport(int(index.ntotal), int(new.size), nlist, 0)

