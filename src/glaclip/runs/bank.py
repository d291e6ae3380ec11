"""`glaclip bank build`: a memory bank from a folder of images and their region masks, in CorrCLIPv2's
files (its builder's mb/build.py steps, CORRCLIP2.md section 7), resumable, incremental and sharded.

Steps, each over the images that still lack it:
  1. manifest: images under the folders (recursive; the builder's suffixes) that have a mask file
     `MASKS/{stem}.npz` (or glaclip's `{stem}.png`) and are not in the manifest yet, sorted by stem;
     each image is decoded and its masks read first: an unreadable image or mask, or a mask of another
     size than the image, is listed and skipped (never a hole in the ids); `io.bank_manifest.append_images`;
  2. one CLIP store per CLIP (`clip_embeddings/{name}_{key}.pt`; `methods.region_clip.region_features`);
  3. the VFM store (`vfm_embeddings/{name}_{key}.pt`; `runs.bank_build.vfm_region_vectors`);
  4. the index (`vfm_embeddings/{name}_{key}.faiss`; `io.bank_index.update_index`: built over the whole
     store, or the new ids added to the trained index as the release's re-run does).
A store step fills the store's slots (`io.bank_slots`): rows persist as each image finishes, so a
kill -9 loses at most the images in flight, and a rerun continues; the store file is then rewritten
once, streamed. With several processes (torchrun ranks, `--processes`), each takes every world-th
unfinished image of a step; rank 0 writes the manifest, the stores and the index between barriers.
An image's rows do not depend on which process computes them, so the files equal a one-process build.

What built a bank (every model by content, every setting that changes a row) is kept in
`{name}.glaclip-bank.json` beside the release's folders; a build with other models or settings is
refused with one line (`overwrite` removes the bank's files and starts over).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config.backbones import DEFAULT_AUX_CLIP, DEFAULT_BANK_CLIP, DEFAULT_RADIO, DEFAULT_VFM
from ..errors import GlaclipError, one_line
from ..io.bank_manifest import ImageRow, append_images, count_regions, manifest_paths, read_manifest, read_region_masks
from ..io.files import remove_stale_temporaries, write_atomic
from .collection import Shard, barrier, check_random_weights, is_hidden, same_on_all_ranks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tiff")  # what the release's builder scans (any case)
MASK_SUFFIXES = (".npz", ".png")  # {stem}.npz as the release; glaclip's 16-bit id maps too
IDENTITY = "{name}.glaclip-bank.json"
FORMAT = "glaclip-bank/1"


@dataclass(frozen=True)
class BankModels:
    """The models of a build: (name, weights) of the main CLIP, the auxiliary CLIP (None: no auxiliary
    store), DINO ViT-B/8 (the CLIP stores' correlations) and RADIO; the store and index keys in file
    names ({'main', 'aux', 'vfm'} -> key); RADIO's checkout; SAM 2 when it generates the masks."""

    clip: tuple[str, str | None]
    aux_clip: tuple[str, str | None] | None
    dino: tuple[str, str | None]
    radio: tuple[str, str | None]
    keys: dict
    radio_repo: str | None = None
    sam: tuple[str, str | None] | None = None  # SAM 2 generating the masks (None: mask files are given)


@dataclass
class StepReport:
    """One step of a build: its name, the items it handled now, its time (from `started`, a perf_counter
    reading) and what the items are."""

    name: str
    images: int = 0
    seconds: float = 0.0
    unit: str = "images"
    started: float = 0.0


@dataclass
class BankReport:
    """What a build did: the bank's images and regions, the ones added now, the images skipped (path,
    reason), the files with their sizes, the index report and each step's images and time."""

    root: Path
    name: str
    images: int = 0
    regions: int = 0
    new_images: int = 0
    new_regions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    without_masks: int = 0
    files: dict[str, int] = field(default_factory=dict)
    index: object = None
    steps: list[StepReport] = field(default_factory=list)


def store_paths(root: Path, name: str, keys: dict) -> dict[str, Path]:
    """{role: path} of a bank's stores and index ('main', 'aux', 'vfm', 'index')."""
    out = {role: root / "clip_embeddings" / f"{name}_{keys[role]}.pt" for role in ("main", "aux") if role in keys}
    out["vfm"] = root / "vfm_embeddings" / f"{name}_{keys['vfm']}.pt"
    out["index"] = root / "vfm_embeddings" / f"{name}_{keys['vfm']}.faiss"
    return out


def check_name(name: str) -> str:
    """A bank name goes into file names: no path separator, no leading dot, not empty."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or any(c in name for c in "\t\n\r\0"):
        raise GlaclipError(f"--name {name!r}: a bank name goes into file names (no '/', no leading '.', not empty)")
    return name


# ---------------------------------------------------------------------------------------- the images


def scan(folders: list[str | Path]) -> dict[str, Path]:
    """stem -> image for the images under `folders` (recursive, hidden files skipped, the builder's
    suffixes). Two images with one stem are refused: a bank names an image by its stem, and so do the
    mask files."""
    from .collection import walk_files

    images: dict[str, Path] = {}
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise GlaclipError(f"{folder}: not a folder of images")
        for path in walk_files(folder, IMAGE_SUFFIXES):
            stem = path.stem
            if stem in images and os.path.realpath(images[stem]) != os.path.realpath(path):
                raise GlaclipError(f"images {images[stem]} and {path} share the stem {stem!r}; a bank names images "
                                   "(and their mask files) by stem: rename one or build from other folders")
            images.setdefault(stem, path)
    return images


def mask_files(images: dict[str, Path], masks: str | Path) -> dict[str, Path]:
    """stem -> mask file in the folder `masks` ({stem}.npz, else {stem}.png), for the images that have one."""
    mask_dir = Path(masks).expanduser()
    if not mask_dir.is_dir():
        raise GlaclipError(f"--masks {masks}: not a folder (it holds {{stem}}.npz region masks, as the release's "
                           "mask step writes them)")
    found = {}
    names = {p.name for p in mask_dir.iterdir() if not is_hidden(p.name)} if images else set()
    for stem, image in images.items():
        hit = next((mask_dir / f"{stem}{s}" for s in MASK_SUFFIXES if f"{stem}{s}" in names), None)
        if hit is not None and os.path.realpath(hit) != os.path.realpath(image):  # never an image as its own mask
            found[stem] = hit
    return found


def generate_masks(sam, images: dict[str, Path], have: dict[str, Path], mask_dir: Path, shard: Shard,
                   progress: bool) -> tuple[int, list[tuple[str, str]]]:
    """The release builder's mask step with SAM 2 (its settings: `models.sam2.BUILDER_AMG_SETTINGS`): every
    image without a mask file gets `mask_dir/{stem}.npz` (key instance_mask, an H x W id map by ascending
    area, at the image's EXIF-corrected size), written atomically; each process takes every world-th.
    Returns (masks written by this process, [(image, reason)] it could not read)."""
    from tqdm import tqdm

    from ..io.images import load_image
    from ..io.masks import save_masks

    todo = sorted(s for s in images if s not in have)[shard.rank :: shard.world]
    failed, done = [], 0
    for stem in tqdm(todo, desc="masks (SAM 2)", unit="img", disable=not progress or shard.rank != 0 or not todo):
        try:
            rgb = load_image(images[stem])
        except GlaclipError as exc:
            failed.append((str(images[stem]), str(exc)))
            continue
        save_masks(mask_dir / f"{stem}.npz", sam.generate(rgb))
        done += 1
    return done, failed


def _check_image(stem: str, image: Path, mask: Path) -> tuple[str, int | str]:
    """(stem, number of regions) of an image fit for the bank, or (stem, why not)."""
    from ..io.images import load_image

    try:
        arr = read_region_masks(mask)
        rgb = load_image(image)
    except GlaclipError as exc:
        return stem, str(exc)
    except Exception as exc:  # a decoder's own error
        return stem, f"{image}: {one_line(exc, 160)}"
    if tuple(arr.shape[-2:]) != tuple(rgb.shape[:2]):
        return stem, (f"mask {mask} is {arr.shape[-1]}x{arr.shape[-2]}, the image {rgb.shape[1]}x{rgb.shape[0]} "
                      "(after its EXIF orientation); the CLIP stores pool at the image's size")
    return stem, count_regions(arr)


def add_images(root: Path, name: str, images: dict[str, Path], masks: dict[str, Path], workers: int = 2,
               progress: bool = True) -> tuple[list[ImageRow], list[tuple[str, str]]]:
    """Step 1: the new images checked (decoded, masks read, sizes compared) in `workers` threads and
    appended to the manifest. Returns (rows appended, [(image, reason) skipped])."""
    from tqdm import tqdm

    known = read_manifest(root, name).stems
    new = sorted(s for s in images if s not in known)
    counts, skipped = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(lambda s: _check_image(s, images[s], masks[s]), new)
        for stem, result in tqdm(jobs, total=len(new), desc="manifest: checking new images", unit="img",
                                 disable=not progress or not new):
            if isinstance(result, str):
                skipped.append((str(images[stem]), result))
            else:
                counts.append((stem, result))
    return append_images(root, name, counts), skipped


# ------------------------------------------------------------------------------------------ identity


def identity_path(root: Path, name: str) -> Path:
    return root / IDENTITY.format(name=name)


def settings_identity(models: BankModels, dtype: str, train_size: int, seed: int, short_side: int, crop: int) -> dict:
    """The settings that change a bank's rows or index (compared with a bank's record before any model loads)."""
    from ..io.bank_index import NLIST_FACTOR, PQ_M, PQ_NBITS
    from ..methods.region_clip import MAX_LONG_SIDE, PAD_MULTIPLE, STRIDE
    from ..models.sam2 import BUILDER_AMG_SETTINGS

    return {"format": FORMAT, "keys": dict(models.keys), "dtype": dtype,
            "architectures": {"main": models.clip[0], "aux": models.aux_clip[0] if models.aux_clip else None,
                              "dino": models.dino[0], "radio": models.radio[0]},
            "masks": ({"source": "sam2", "model": models.sam[0], "settings": dict(BUILDER_AMG_SETTINGS)}
                      if models.sam is not None else {"source": "files"}),
            "clip_windows": {"short_side": int(short_side), "max_long_side": MAX_LONG_SIDE, "crop": int(crop),
                             "stride": STRIDE, "pad_multiple": PAD_MULTIPLE},
            "index": {"type": "IDMap2(IVFPQ(FlatIP))", "nlist": f"max(1, int({NLIST_FACTOR} sqrt(N)))", "m": PQ_M,
                      "nbits": PQ_NBITS, "train_size": int(train_size), "seed": int(seed)}}


def read_identity(root: Path, name: str) -> dict | None:
    path = identity_path(root, name)
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GlaclipError(f"{path} cannot be read ({one_line(exc, 100)}); remove it, or start over with "
                           "--overwrite") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise GlaclipError(f"{path} is not a glaclip bank record; remove it, or start over with --overwrite")
    return old


def refuse_other(old: dict, new: dict, what: str, keys: tuple[str, ...]) -> None:
    """One line naming what differs between a bank's record and this build, over `keys`."""
    changed = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{k}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        elif a != b:
            changed.append(k)
    if changed:
        raise GlaclipError(f"{what} was built with other {'models' if keys == ('models',) else 'settings'} "
                           f"({', '.join(changed)} differ{'s' if len(changed) == 1 else ''}); use another --name or "
                           "--out, or start over with --overwrite")


def bank_files_of(root: Path, name: str, keys: list[dict]) -> list[Path]:
    """The files of bank `name` under root that a build with any of these keys writes: stores, their work
    files, the index, the manifests and glaclip's record (never another bank's, whose name may start so)."""
    out = []
    for k in keys:
        for path in store_paths(root, name, k).values():
            out += [path, path.with_name(path.stem + ".slots.npy"), path.with_name(path.stem + ".done.npy")]
    out += [*manifest_paths(root, name), identity_path(root, name)]
    return sorted({p for p in out if p.is_file()})


# ------------------------------------------------------------------------------------------ the build


def build(images: list[str | Path] | str | Path, name: str, out: str | Path, masks: str | Path | None,
          models: BankModels,
          *, device: str = "auto", dtype: str = "auto", overwrite: bool = False, shard: Shard | None = None,
          train_size: int | None = None, seed: int = 0, short_side: int | None = None, crop: int | None = None,
          workers: int = 2, window_batch: int = 8, progress: bool = True,
          echo: Callable[[str], None] | None = None) -> BankReport:
    """Build or extend bank `name` in `out` from the images under `images` (folders) and their region
    masks in the folder `masks` (None: generated by `models.sam` into out/masks/{name}/; module
    docstring). short_side / crop: the CLIP stores' windows (the release's
    --slide_short 448 / --slide_crop 336); train_size, seed: the index's training sample. Returns the
    report (complete on rank 0)."""
    import torch

    from ..io.bank_index import MIN_VECTORS, TRAIN_SIZE, update_index
    from ..methods.region_clip import CROP, SHORT_SIDE, region_features
    from ..models.devices import dtype_name, resolve_device, resolve_dtype
    from .bank_build import vfm_region_vectors

    shard = shard or Shard()
    say = echo if (echo is not None and shard.rank == 0) else (lambda _m: None)
    root = Path(out).expanduser()
    check_name(name)
    folders = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    every = scan(folders)
    mask_dir = Path(masks).expanduser() if masks is not None else root / "masks" / name
    if masks is None and models.sam is None:
        raise GlaclipError("region masks: give a folder of mask files (--masks) or a SAM 2 to generate them (--sam)")
    masks_of = mask_files(every, mask_dir) if masks is not None else None  # checked before any model loads
    train_size = TRAIN_SIZE if train_size is None else int(train_size)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    short_side, crop = int(short_side or SHORT_SIDE), int(crop or CROP)
    settings = settings_identity(models, dtype_name(dt), train_size, seed, short_side, crop)
    report = BankReport(root, name)
    record = identity_path(root, name)
    if not same_on_all_ranks(json.dumps([settings, sorted(every)]), shard):
        raise GlaclipError("the processes found different images or settings (did files change as the build "
                           "started?); run it again")
    old = _admit(root, name, settings, models.keys, overwrite)

    towers = _load(models, dev, dt)
    ids = _model_identity(towers)
    resuming = old is not None and bool(read_manifest(root, name).images)
    check_random_weights(ids, shard, resuming, root, "--overwrite")
    if old is not None and old.get("models") is not None:
        refuse_other(old, {"models": ids}, f"bank {name} in {root}", ("models",))
    barrier(shard)
    if shard.rank == 0:
        _prepare(root, name, models.keys, overwrite, mask_dir if masks is None else None)
        write_atomic(record, json.dumps({**settings, "models": ids}, indent=2) + "\n")
    barrier(shard)
    if masks is None:
        t0 = time.perf_counter()
        made, unread = generate_masks(towers["sam"], every, mask_files(every, mask_dir), mask_dir, shard, progress)
        masks_of = mask_files(every, mask_dir)  # with the masks just written
        for image, reason in unread:
            if echo is not None:
                echo(f"glaclip: skipped {image}: {reason}")
        report.skipped += unread
        barrier(shard)
        report.steps.append(StepReport("masks (SAM 2)", made, time.perf_counter() - t0, started=t0))
    found = {s: every[s] for s in masks_of}
    report.without_masks = len(every) - len(found) - len(report.skipped)

    paths = store_paths(root, name, models.keys)
    t0 = time.perf_counter()
    if shard.rank == 0:
        rows, skipped = add_images(root, name, found, masks_of, workers, progress)
        report.skipped += skipped
        report.new_images, report.new_regions = len(rows), sum(r.count for r in rows)
        for image, reason in skipped:
            say(f"glaclip: skipped {image}: {reason}")
    barrier(shard)
    report.steps.append(StepReport("manifest", report.new_images, time.perf_counter() - t0, started=t0))
    manifest = read_manifest(root, name)
    report.images, report.regions = len(manifest.images), manifest.next_id
    if not manifest.images:
        raise GlaclipError(f"no image with regions to put in bank {name}: {len(found)} images have mask files in "
                           f"{mask_dir}" + (f", {len(report.skipped)} were skipped" if report.skipped else ""))
    if manifest.next_id < MIN_VECTORS:  # known now, not after every store is computed
        raise GlaclipError(f"bank {name} has {manifest.next_id} regions in {len(manifest.images)} images; its index "
                           f"needs at least {MIN_VECTORS} (the release's 8-bit product quantizer trains {MIN_VECTORS} "
                           "centroids): add images and run the build again")

    def clip_rows(clip):
        return lambda rgb, arr: region_features(clip, towers["vfm"], rgb, arr, torch.float16, short_side=short_side,
                                                crop=crop, window_batch=window_batch)[1]

    steps = [("main", f"main CLIP ({models.keys['main']})", clip_rows(towers["clip"]),
              towers["clip"].visual.output_dim)]
    if "aux_clip" in towers:
        steps.append(("aux", f"auxiliary CLIP ({models.keys['aux']})", clip_rows(towers["aux_clip"]),
                      towers["aux_clip"].visual.output_dim))
    steps.append(("vfm", f"VFM ({models.keys['vfm']})", lambda rgb, arr: vfm_region_vectors(towers["radio"], rgb, arr),
                  int(towers["radio"].dim)))
    for role, label, compute, dim in steps:
        report.steps.append(_store_step(paths[role], manifest.images, found, masks_of, compute, dim, label, shard,
                                        workers, progress))

    t0 = time.perf_counter()
    if shard.rank == 0:
        report.index = update_index(paths["vfm"], paths["index"], train_size, seed, on_message=say)
        report.files = {str(p.relative_to(root)): p.stat().st_size for p in paths.values()}
    report.steps.append(StepReport("index", report.index.added if report.index else 0, time.perf_counter() - t0,
                                   "vectors added", t0))
    barrier(shard)
    return report


def build_bank(images, name: str, out, masks, *, clip: str = DEFAULT_BANK_CLIP[0], clip_weights: str | None = None,
               aux_clip: str | None = DEFAULT_AUX_CLIP[0], aux_clip_weights: str | None = None,
               vfm: str = DEFAULT_RADIO, vfm_weights: str | None = None, radio_repo=None,
               dino: str = DEFAULT_VFM, dino_weights: str | None = None, clip_key: str | None = None,
               aux_clip_key: str | None = None, vfm_key: str | None = None, sam: str | None = None,
               sam_weights: str | None = None, **options) -> BankReport:
    """`glaclip bank build` from Python: a bank of the images under `images` (a folder or a list of them)
    and their region masks in `masks` ({stem}.npz), named `name`, written to the folder `out`.

    Models as the release's builder by default: MetaCLIP ViT-B/16 (`metaclip_fullcc`) for the main store,
    DFN2B-CLIP ViT-B/16 for the auxiliary one (`aux_clip=None`: none), DINO ViT-B/8 for the CLIP stores'
    correlations, C-RADIOv3-L for the VFM store and index (its code from `radio_repo`). Weights: a tag, a
    file, or None for the default. *_key: the keys in the file names for models the release has no name
    for. masks None: SAM 2 `sam` (a `SAM2_MODELS` name; None with a weights file: the model it fits) with
    `sam_weights` (a checkpoint file, None for the hub's) generates them into out/masks/{name}/ with the
    release builder's settings. options: `build`'s (device, dtype, overwrite, short_side, crop, train_size,
    seed, shard, workers, progress, echo). Then segment with
    `Segmenter.from_pretrained(method="corrclip2", bank=out, bank_name=name, ...)`."""
    from ..config.backbones import BANK_MAIN_KEYS, bank_keys

    keys = bank_keys(clip, aux_clip, vfm, {"main": clip_key, "aux": aux_clip_key, "vfm": vfm_key})
    models = BankModels(clip=(clip, clip_weights or (DEFAULT_BANK_CLIP[1] if clip in BANK_MAIN_KEYS else None)),
                        aux_clip=(aux_clip, aux_clip_weights) if aux_clip is not None else None,
                        dino=(dino, dino_weights), radio=(vfm, vfm_weights), keys=keys,
                        radio_repo=str(radio_repo) if radio_repo else None,
                        sam=check_masks_or_sam(masks, sam, sam_weights))
    return build(images, name, out, masks, models, **options)


def check_masks_or_sam(masks, sam: str | None, sam_weights: str | None) -> tuple[str | None, str | None] | None:
    """(SAM 2 name or None for the one the file fits, weights) when the masks are generated, else None."""
    if masks is not None:
        if sam is not None or sam_weights is not None:
            raise GlaclipError("give either a folder of masks (--masks) or SAM 2 (--sam / --sam-weights), not both")
        return None
    from .mask_source import sam_request

    request = sam_request(sam, sam_weights)
    if request is None:  # neither: the release's SAM 2 from the hub
        from ..config.backbones import DEFAULT_SAM2

        return DEFAULT_SAM2, None
    return (None if request.fit else request.sam), request.sam_weights


def _admit(root: Path, name: str, settings: dict, keys: dict, overwrite: bool) -> dict | None:
    """The record of the bank this build continues (None: a new bank, or --overwrite), after checking
    that its settings are this build's; files of the bank without a record are refused."""
    record = identity_path(root, name)
    recorded = read_identity(root, name) if record.exists() and not overwrite else None
    ours = [keys] + ([recorded["keys"]] if recorded and isinstance(recorded.get("keys"), dict) else [])
    existing = [p for p in bank_files_of(root, name, ours) if p != record]
    old = recorded if existing else None  # a record alone holds nothing
    if old is not None:
        refuse_other(old, settings, f"bank {name} in {root}", tuple(k for k in settings if k != "models"))
    elif existing and not overwrite:
        raise GlaclipError(f"{existing[0]} exists without glaclip's record {record.name} (a bank built elsewhere?): "
                           "glaclip does not know what built it; use another --name or --out, or start over with "
                           "--overwrite")
    return old


def _prepare(root: Path, name: str, keys: dict, overwrite: bool, mask_dir: Path | None) -> None:
    """The bank's folders made (rank 0, no writer running): with --overwrite its files removed (those of
    this build's keys and of the recorded ones), temporaries of killed writers removed."""
    root.mkdir(parents=True, exist_ok=True)
    if overwrite:
        try:
            earlier = read_identity(root, name)
        except GlaclipError:
            earlier = None
        more = [earlier["keys"]] if earlier and isinstance(earlier.get("keys"), dict) else []
        for p in bank_files_of(root, name, [keys, *more]):
            p.unlink()
    for folder in [root / "manifests", root / "clip_embeddings", root / "vfm_embeddings"] + \
            ([mask_dir] if mask_dir is not None else []):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)


def _load(models: BankModels, device, dtype) -> dict:
    """Every tower of the build, loaded at once (each missing weights file named together)."""
    from ..models.loading import load_towers

    wanted = {"clip": models.clip, "vfm": models.dino, "radio": models.radio}
    if models.aux_clip is not None:
        wanted["aux_clip"] = models.aux_clip
    towers = load_towers(wanted, device, dtype, {"radio": {"radio_repo": models.radio_repo}})
    if models.sam is not None:  # the release's builder runs SAM 2 in fp32, no autocast
        from ..models.sam2 import BUILDER_AMG_SETTINGS, load_sam2

        towers["sam"] = load_sam2(*models.sam, device=device, dtype="fp32").configure(BUILDER_AMG_SETTINGS)
    return towers


def _model_identity(towers: dict) -> dict:
    """The build's towers by content: the CLIPs by their image towers (the only part a store runs)."""
    from ..models.identity import clip_image_identity, tower_identity

    out = {"clip": clip_image_identity(towers["clip"]), "vfm": tower_identity(towers["vfm"]),
           "radio": tower_identity(towers["radio"])}
    if "aux_clip" in towers:
        out["aux_clip"] = clip_image_identity(towers["aux_clip"])
    if "sam" in towers:
        out["sam"] = towers["sam"].identity
    return out


def _store_step(store: Path, rows: list[ImageRow], images: dict[str, Path], masks: dict[str, Path], compute,
                dim: int, label: str, shard: Shard, workers: int, progress: bool) -> StepReport:
    """One store brought up to the manifest (module docstring): slots prepared by rank 0, this rank's
    share of the unfinished images computed and written, the store rewritten by rank 0."""
    from tqdm import tqdm

    from ..io.bank_slots import Slots, slot_paths, store_rows
    from ..io.images import load_image
    from .runner import decoded

    t0 = time.perf_counter()
    n = rows[-1].start + rows[-1].count
    if shard.rank == 0:
        Slots.prepare(store, n, dim)
    barrier(shard)
    if not slot_paths(store)[1].exists():  # the store has every row
        barrier(shard)
        return StepReport(label, 0, time.perf_counter() - t0, started=t0)
    slots = Slots(store, store_rows(store), n, dim).open()
    done, first = slots.done(), slots.first
    todo = [r for r in rows
            if r.start + r.count > first and not done[r.start - first : r.start - first + r.count].all()]
    mine = todo[shard.rank :: shard.world]
    lost = [r.stem for r in mine if r.stem not in images]
    if lost:
        raise GlaclipError(f"image {lost[0]} is in bank's manifest but not under the image folders (or has no "
                           f"mask file there){f' ({len(lost)} such images)' if len(lost) > 1 else ''}; the store "
                           f"{store.name} needs it")

    def load(r: ImageRow):
        return load_image(images[r.stem]), read_region_masks(masks[r.stem])

    bar = tqdm(total=len(mine), desc=label, unit="img", disable=not progress or shard.rank != 0 or not mine)
    for r, loaded in decoded(mine, load, workers):
        if isinstance(loaded, Exception):
            raise GlaclipError(f"{label}: {loaded}")
        vectors = compute(*loaded)
        if vectors.shape[0] != r.count:
            raise GlaclipError(f"{label}: image {r.stem} gives {vectors.shape[0]} regions, the manifest {r.count} "
                               "(were its masks changed after the manifest was written?)")
        slots.write(r.start, vectors)
        bar.update(1)
    bar.close()
    barrier(shard)
    if shard.rank == 0 and not slots.finish():
        raise GlaclipError(f"{store.name}: some regions have no vector after every process finished; run the "
                           "build again")
    barrier(shard)
    return StepReport(label, len(todo), time.perf_counter() - t0, started=t0)


def summary_lines(report: BankReport) -> list[str]:
    """The build's summary, a line each."""
    lines = [f"bank {report.name} in {report.root}: {report.images} images, {report.regions} regions "
             f"({report.new_images} images, {report.new_regions} regions added now)"]
    if report.skipped:
        lines.append(f"skipped {_count(len(report.skipped), 'image')} (listed above), not in the bank")
    if report.without_masks:
        lines.append(f"{_count(report.without_masks, 'image')} without a mask file, not in the bank")
    for rel, size in report.files.items():
        lines.append(f"  {rel}  {size / 2**20:.1f} MiB")
    if report.index is not None:
        idx = report.index
        lines.append(f"index: {idx.total} vectors, nlist {idx.nlist}, {idx.added} added now"
                     + (f", trained on {idx.trained_on}" if idx.trained_on else ""))
    for step in report.steps:
        rate = f", {step.images / step.seconds:.2f}/s" if step.images and step.seconds > 0 else ""
        lines.append(f"  {step.name}: {step.images} {step.unit} in {step.seconds:.1f} s{rate}")
    return lines


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
