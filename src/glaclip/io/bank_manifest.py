"""A memory bank's manifest: which image region every row of its stores (and id of its index) is, in
CorrCLIPv2's files (its builder's mb/manifest.py), byte for byte:

    BANK_DIR/manifests/{name}.manifest.txt   line i (0-based) = bank id i: '{stem}#{idx}\\n'
    BANK_DIR/manifests/{name}.images.tsv     one line per image, in arrival order: '{stem}\\t{start}\\t{count}\\n'

No header. Append-only: an image's regions get the contiguous ids start .. start + count - 1, the idx-th
being its idx-th region (for an id map: the idx-th nonzero id, ascending; for a boolean N x H x W stack:
slice idx); a batch of new images is appended sorted by stem; images with no region are skipped; ids
never change. Every append writes both files under temporary names and renames them into place,
`{name}.manifest.txt` first: `{name}.images.tsv` is the record of what is in the bank, and a manifest
longer than it (an append cut between the two renames) is put right by the next append.

Mask files, as the builder reads them: `.npz` with `instance_mask` (an H x W integer id map, 0 = no
region, or an N x H x W boolean stack, one region per slice) and, beside them, glaclip's 16-bit `.png`
id maps (`io.masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import GlaclipError, one_line
from .files import atomic_paths
from .masks import MASK_KEY, check_masks, load_masks

MANIFESTS = "manifests"  # the manifests' folder in a bank folder (beside clip_embeddings/, vfm_embeddings/)


@dataclass(frozen=True)
class ImageRow:
    """One image of a manifest: its stem, its first bank id and its number of regions."""

    stem: str
    start: int
    count: int

    @property
    def ids(self) -> range:
        """The image's bank ids."""
        return range(self.start, self.start + self.count)


@dataclass
class Manifest:
    """A bank's manifest as read: its images in arrival order. `stale_lines`: lines of
    `{name}.manifest.txt` past the last image (an interrupted append), dropped by the next append."""

    root: Path
    name: str
    images: list[ImageRow] = field(default_factory=list)
    stale_lines: int = 0

    @property
    def next_id(self) -> int:
        """The bank id the next region gets (= the number of regions, = the stores' rows)."""
        return self.images[-1].start + self.images[-1].count if self.images else 0

    @property
    def stems(self) -> set[str]:
        """The stems of the images already in the bank."""
        return {row.stem for row in self.images}

    def row(self, stem: str) -> ImageRow | None:
        """The image `stem`'s row, or None."""
        return next((r for r in self.images if r.stem == stem), None)


def manifest_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """(`{name}.manifest.txt`, `{name}.images.tsv`) under root/manifests/."""
    base = Path(root).expanduser() / MANIFESTS
    return base / f"{name}.manifest.txt", base / f"{name}.images.tsv"


def _key_lines(rows: Iterable[ImageRow]) -> Iterable[str]:
    for r in rows:
        for idx in range(r.count):
            yield f"{r.stem}#{idx}\n"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GlaclipError(f"cannot read manifest file {path}: {one_line(exc)}") from None


def read_manifest(root: str | Path, name: str) -> Manifest:
    """The manifest of bank `name` under `root` (empty when it has none yet), checked: images.tsv rows
    of stem, start and count, starts contiguous from 0, stems unique, and manifest.txt = the
    '{stem}#{idx}' lines they imply (plus possibly the tail of an interrupted append). A file that
    breaks these is one GlaclipError line naming it and the line."""
    txt, tsv = manifest_paths(root, name)
    out = Manifest(Path(root).expanduser(), name)
    if not tsv.exists():
        if txt.exists() and txt.stat().st_size:
            out.stale_lines = len(_read_text(txt).splitlines())
        return out
    text = _read_text(tsv)
    if text and not text.endswith("\n"):
        raise GlaclipError(f"manifest file {tsv} ends in the middle of a line (a write was cut?)")
    seen, expect = set(), 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line:
            continue  # the release skips empty lines
        parts = line.split("\t")
        try:
            stem, start, count = parts[0], int(parts[1]), int(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise GlaclipError(f"manifest file {tsv} line {n} is not 'stem<TAB>start<TAB>count': {line[:80]!r}") \
                from None
        if start != expect or count <= 0:
            raise GlaclipError(f"manifest file {tsv} line {n}: image {stem} starts at id {start} with {count} "
                               f"regions; ids run on contiguously from {expect}, one or more regions per image")
        if stem in seen:
            raise GlaclipError(f"manifest file {tsv} line {n}: image {stem} is listed twice")
        seen.add(stem)
        out.images.append(ImageRow(stem, start, count))
        expect = start + count
    keys = _read_text(txt).splitlines() if txt.exists() else []
    if len(keys) < expect:
        raise GlaclipError(f"manifest file {txt} has {len(keys)} ids, {tsv.name} lists {expect}")
    for i, want in enumerate(_key_lines(out.images)):
        if keys[i] != want[:-1]:
            raise GlaclipError(f"manifest file {txt} line {i + 1} is {keys[i][:80]!r}, {tsv.name} makes it "
                               f"{want[:-1]!r}")
    out.stale_lines = len(keys) - expect
    return out


def _check_stem(stem: str) -> None:
    if not stem or any(c in stem for c in "\t\n\r"):
        raise GlaclipError(f"image stem {stem!r} cannot go into a manifest (empty, or a tab or line break in it)")


def append_images(root: str | Path, name: str, counts: Iterable[tuple[str, int]]) -> list[ImageRow]:
    """Add a batch of images, (stem, number of regions) each, to bank `name`'s manifest (made if none):
    stems already in it and images with no region are skipped, the rest appended sorted by stem with
    contiguous ids from the manifest's next id. Both files are rewritten under temporary names and
    renamed into place (manifest.txt first). Returns the rows appended (none: the files are untouched)."""
    manifest = read_manifest(root, name)
    known, batch = manifest.stems, {}
    for stem, count in counts:
        _check_stem(stem)
        if int(count) < 0:
            raise GlaclipError(f"image {stem}: a negative number of regions ({count})")
        if stem in batch and batch[stem] != int(count):
            raise GlaclipError(f"image stem {stem} comes twice in the batch (with {batch[stem]} and {count} "
                               "regions); stems name images in a bank and must be unique")
        batch[stem] = int(count)
    new, next_id = [], manifest.next_id
    for stem in sorted(batch):
        if stem in known or batch[stem] == 0:
            continue
        new.append(ImageRow(stem, next_id, batch[stem]))
        next_id += batch[stem]
    if not new and not manifest.stale_lines:
        return []
    rows = manifest.images + new
    txt, tsv = manifest_paths(root, name)
    try:
        with atomic_paths([txt]) as (tmp,):
            _write_lines(tmp, _key_lines(rows))
        with atomic_paths([tsv]) as (tmp,):
            _write_lines(tmp, (f"{r.stem}\t{r.start}\t{r.count}\n" for r in rows))
    except OSError as exc:
        raise GlaclipError(f"cannot write the manifest of bank {name} under {txt.parent}: {one_line(exc)}") from None
    return new


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        batch = []
        for line in lines:
            batch.append(line)
            if len(batch) >= 65536:
                f.write("".join(batch))
                batch.clear()
        f.write("".join(batch))


# ------------------------------------------------------------------------------------ region masks


def read_region_masks(path: str | Path) -> np.ndarray:
    """A mask file as the bank builder takes it: an H x W int32 id map (`.npz` `instance_mask` of any
    integer dtype, or boolean: one region, or a 8/16-bit `.png`; `io.masks.load_masks`) or an N x H x W boolean stack
    (`.npz` `instance_mask`, one region per slice; every slice must cover a pixel, the release's mean
    of an empty slice being NaN)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                stack = data[MASK_KEY] if MASK_KEY in data.files else None
                if stack is not None and stack.ndim == 2 and stack.dtype == np.bool_:
                    stack = stack.astype(np.int32)  # one region (id 1), as the release's astype(int) reads it
                if stack is not None and stack.ndim != 3:
                    return check_masks(stack, None, what=f"{path}: mask map")
                if stack is not None:
                    if stack.dtype != np.bool_:
                        raise GlaclipError(f"{path}: a 3-D '{MASK_KEY}' must be an N x H x W boolean stack, "
                                           f"not {stack.dtype}")
                    empty = np.flatnonzero(~stack.reshape(stack.shape[0], -1).any(axis=1))
                    if empty.size:
                        raise GlaclipError(f"{path}: slice {int(empty[0])} of the boolean stack covers no pixel "
                                           "(a region needs at least one)")
                    return stack
        except GlaclipError:
            raise
        except Exception as exc:
            raise GlaclipError(f"{path}: not a readable .npz mask file ({one_line(exc, 160)})") from None
    return load_masks(path)


def region_values(masks: np.ndarray) -> np.ndarray:
    """The regions of a mask array in manifest order: an id map's nonzero ids ascending; a boolean
    stack's slice numbers 0..N-1."""
    if masks.ndim == 3:
        return np.arange(masks.shape[0], dtype=np.int64)
    values = np.unique(masks)
    return values[values != 0].astype(np.int64)


def count_regions(masks: np.ndarray) -> int:
    """How many regions (bank rows) a mask array gives (the release's num_regions)."""
    return int(region_values(masks).size)


def bank_ids(masks: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(region values in manifest order, their bank ids start + idx) of an image whose first id is
    `start` (`ImageRow.start`)."""
    values = region_values(masks)
    return values, np.arange(start, start + values.size, dtype=np.int64)


def pixel_bank_ids(id_map: np.ndarray, start: int) -> np.ndarray:
    """An H x W id map's pixels as bank ids (int64; -1 where the id is 0, no region)."""
    values, ids = bank_ids(id_map, start)
    out = np.full(id_map.shape, -1, dtype=np.int64)
    if values.size:
        pos = np.searchsorted(values, id_map)
        hit = id_map != 0
        out[hit] = ids[pos[hit]]
    return out
