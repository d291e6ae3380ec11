"""Which file of a mask folder holds an image's region masks.

An image is looked up by its output name (`collection.Item.rel`: unique in a run, `x_png` for x.png
beside x.jpg) and by its stem, in tiers; the first tier holding a file wins:

1. DIR/sub/NAME.npz, .png or .masks.npz (NAME: the output name; .masks.npz is what --save-masks
   writes, so an output folder is a mask folder), 2. DIR/sub/STEM.npz or .png (mirrored),
3. DIR/NAME.*, 4. DIR/STEM.* (flat: the release's region_masks folders, named by image stem).

Two files in the winning tier, a file that another image of the run finds in its own winning tier,
or a file that is an input image: one line naming the image and the files; no masks are read.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

from ..errors import GlaclipError
from ..io.files import ENCODING_SUFFIX
from ..io.masks import MASK_SUFFIXES, SAVED_SUFFIX


def _posix(path: str | os.PathLike) -> PurePosixPath:
    return PurePosixPath(Path(path).as_posix())


def tiers(relative: str | os.PathLike, output: str | None = None) -> list[list[str]]:
    """The places looked at, tier by tier, for the image at `relative` (relative to the input root)
    whose outputs are named `output` (default: its path without suffix), relative to the mask folder."""
    rel = _posix(relative)
    if rel.is_absolute() or ".." in rel.parts:
        rel, output = PurePosixPath(rel.name), None  # never look outside the mask folder
    stem = rel.name[: -len(ENCODING_SUFFIX)] if rel.name.endswith(ENCODING_SUFFIX) else rel.stem
    out = PurePosixPath(output) if output else rel.parent / stem
    every = (*MASK_SUFFIXES, SAVED_SUFFIX)
    wanted = ([out.parent / (out.name + s) for s in every], [rel.parent / (stem + s) for s in MASK_SUFFIXES],
              [PurePosixPath(out.name + s) for s in every], [PurePosixPath(stem + s) for s in MASK_SUFFIXES])
    seen: set[str] = set()
    result = []
    for tier in wanted:
        names = [p.as_posix() for p in tier if p.as_posix() not in seen]
        seen.update(names)
        if names:
            result.append(names)
    return result


def _winning(mask_dir: Path, places: list[list[str]]) -> list[str]:
    """The files of the first tier that holds any."""
    for tier in places:
        found = [p for p in tier if (mask_dir / p).is_file()]
        if found:
            return found
    return []


class MaskIndex:
    """The lookups of every image of a run, to tell when two images would read one mask file and
    which files are input images. items: `collection.Item`s."""

    def __init__(self, items):
        self.outputs = {_posix(it.name).as_posix(): it.rel for it in items}
        self.seekers: dict[str, list[str]] = defaultdict(list)
        for name, rel in self.outputs.items():
            for tier in tiers(name, rel):
                for place in tier:
                    self.seekers[place].append(name)
        self.inputs = {os.path.realpath(it.path): it.name for it in items}


def mask_file_for(mask_dir: str | Path, relative: str | os.PathLike, index: MaskIndex | None = None,
                  image: str | os.PathLike | None = None) -> Path:
    """The mask file of the input image at `relative` (relative to the input root; `image`: its file),
    by the tiers above; index: the run's images (their output names, the files two of them would
    find, and their files)."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise GlaclipError(f"mask folder not found: {mask_dir}")
    name = _posix(relative).as_posix()
    output = index.outputs.get(name) if index is not None else None
    places = tiers(relative, output)
    found = _winning(mask_dir, places)
    if not found:
        looked = ", ".join(p for tier in places for p in tier)
        raise GlaclipError(f"no mask file for {name} in {mask_dir} (looked for {looked})")
    if len(found) > 1:
        raise GlaclipError(f"two mask files for {name}: {mask_dir / found[0]} and {mask_dir / found[1]}; keep one")
    path = mask_dir / found[0]
    refuse_input_image(path, image, index.inputs if index is not None else None)
    if index is not None:
        for other in index.seekers.get(found[0], ()):
            theirs = tiers(other, index.outputs[other]) if other != name else None
            if theirs and found[0] in _winning(mask_dir, theirs):
                mine, theirs = places[0][0], theirs[0][0]
                raise GlaclipError(f"{path} fits two images, {name} and {other}: name each image's file after its "
                                   f"outputs ({mine} and {theirs} in {mask_dir})")
    return path


def refuse_input_image(path: Path, image: str | os.PathLike | None, inputs: dict[str, str] | None) -> None:
    """A mask file must be neither `image` nor one of the `inputs` (real path -> name): a grayscale
    image would pass for an id map."""
    real = os.path.realpath(path)
    inputs = inputs or {}
    if real in inputs or (image is not None and real == os.path.realpath(image)):
        raise GlaclipError(f"{path} is an input image ({inputs.get(real) or Path(image).name}), not a mask file: "
                           "give --masks the folder of mask files, not the images")
