"""Tiny randomly initialised models of the real architectures, built and saved by the tests."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the tests
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker (and for the processes it starts)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
os.environ["GLACLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="glaclip-test-cache-")  # never the user's cache

# The longest files, longest first (seconds on one worker of `pytest -n 2`): with `--dist loadfile` a worker
# runs a whole file, and xdist hands the files out in collection order (pyproject: --no-loadscope-reorder,
# else it orders them by their number of tests), so a long file started last would finish alone.
LONG_FILES = ("test_bank_command.py", "test_bench.py", "test_labelstudio.py", "test_trident.py", "test_segmenter.py",
              "test_demo.py", "test_batch.py", "test_evaluate.py", "test_bands.py", "test_regions.py",
              "test_masks_cli.py", "test_integrations.py", "test_attention.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_VFM = {"model": "vit_base_patch8_224", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}


@pytest.fixture(scope="session")
def arch_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("arch")
    (d / "glaclip-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    (d / "glaclip-tiny-vfm.json").write_text(json.dumps(TINY_VFM))
    return d


@pytest.fixture(scope="session")
def tiny_files(arch_dir):
    """Paths of the tiny architectures and of their (seeded, random) weights as saved files."""
    from glaclip.models.loading import load_clip, load_vfm

    torch.manual_seed(0)
    clip = load_clip(str(arch_dir / "glaclip-tiny-clip.json"), "random", device="cpu", dtype="fp32")
    vfm = load_vfm(str(arch_dir / "glaclip-tiny-vfm.json"), "random", device="cpu", dtype="fp32")
    # Random init leaves some parameters at trivial values (e.g. zero biases); perturb all of them.
    with torch.no_grad():
        for p in list(clip.model.parameters()) + list(vfm.model.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    clip_pt, vfm_pt = arch_dir / "clip.pt", arch_dir / "vfm.pth"
    torch.save(clip.model.state_dict(), clip_pt)
    torch.save(vfm.model.state_dict(), vfm_pt)
    return {
        "clip": str(arch_dir / "glaclip-tiny-clip.json"),
        "vfm": str(arch_dir / "glaclip-tiny-vfm.json"),
        "clip_weights": str(clip_pt),
        "vfm_weights": str(vfm_pt),
    }


@pytest.fixture(scope="session")
def files6(tmp_path_factory, tiny_files):
    """`tiny_files` with a 6-block tiny CLIP: CorrCLIP's spatial branch needs at least 5 blocks (it
    averages blocks L-2-NS .. L-3, NS = L - 4: blocks 2..3 here)."""
    from glaclip.models.loading import load_clip

    d = tmp_path_factory.mktemp("clip6")
    cfg = json.loads(json.dumps(TINY_CLIP))
    cfg["vision_cfg"]["layers"] = 6
    (d / "glaclip-tiny-clip6.json").write_text(json.dumps(cfg))
    torch.manual_seed(1)
    clip = load_clip(str(d / "glaclip-tiny-clip6.json"), "random", device="cpu", dtype="fp32")
    with torch.no_grad():
        for p in clip.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(clip.model.state_dict(), d / "clip6.pt")
    return dict(tiny_files, clip=str(d / "glaclip-tiny-clip6.json"), clip_weights=str(d / "clip6.pt"))


@pytest.fixture(scope="session")
def segmenter(tiny_files):
    from glaclip import Segmenter

    return Segmenter.from_pretrained(device="cpu", dtype="fp32", **tiny_files)


@pytest.fixture(scope="session")
def segmenter64(tiny_files):
    """The same weights in float64: comparisons free of float32 rounding at the thresholds."""
    from glaclip import Segmenter

    return Segmenter.from_pretrained(device="cpu", dtype="fp64", **tiny_files)


def structured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB image with regions and edges (random models still see structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx // 37 + yy // 29) % 2) * 220], -1)
    img = img + rng.integers(-20, 21, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def image_300x400():
    return structured_image(300, 400)


# ------------------------------------------------------------------ the command line, in this process

_FRESH_TORCH_SEED = 67280421310721  # torch.initial_seed() of a fresh interpreter


class _LastResort(logging.Handler):
    """What a fresh interpreter does with a warning logged while no handler is configured: its message,
    one line on stderr (pytest's own handlers are set aside during the run)."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        sys.stderr.write(self.format(record) + "\n")


def run_cli(*args, cwd=None, env=None):
    """`python -m glaclip ARGS` in this process (no interpreter and torch import per call): the same entry
    point (glaclip.cli.main), its exit code, and everything written to stdout and stderr, at the Python
    and the file-descriptor level. Returns a CompletedProcess, like subprocess.run(capture_output=True).

    As in a fresh process: sys.argv, the working folder `cwd`, the environment `env` (None: this one), the
    warning filters and registry, torch's default seed, and no logging handlers; all restored after. Runs
    that need a process of their own (SIGKILL, torchrun's --processes, locks held by another process,
    variables read at import) keep using subprocess."""
    from glaclip import cli

    argv = ["glaclip", *map(str, args)]
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams, saved_show = (sys.stdout, sys.stderr), warnings.showwarning
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    rng = torch.get_rng_state()
    code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe, warnings.catch_warnings():
        fds = os.dup(1), os.dup(2)
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
        try:
            if env is not None:
                os.environ.clear()
                os.environ.update({str(k): str(v) for k, v in env.items()})
            if cwd is not None:
                os.chdir(cwd)
            sys.argv = argv
            warnings.resetwarnings()  # a fresh interpreter's filters (the registry is reset by catch_warnings)
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            root.handlers = [_LastResort()]
            root.setLevel(logging.WARNING)
            torch.manual_seed(_FRESH_TORCH_SEED)
            try:
                cli.main()
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:  # sys.exit("message"): the message on stderr, exit 1
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:  # what escapes main (GLACLIP_DEBUG): a traceback and exit 1, as python does
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout.close()
            sys.stderr.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            os.close(fds[0])
            os.close(fds[1])
            sys.stdout, sys.stderr = saved_streams
            sys.argv = saved_argv
            warnings.showwarning = saved_show
            root.handlers, root.level = saved_handlers, saved_level
            torch.set_rng_state(rng)
            os.chdir(saved_cwd)
            if os.environ != saved_env:
                os.environ.clear()
                os.environ.update(saved_env)
        fo.seek(0)
        fe.seek(0)
        out, err = (f.read().decode("utf-8", "backslashreplace") for f in (fo, fe))
    return subprocess.CompletedProcess(argv, code, out, err)


def tiny_sam(seed=0, dtype=torch.float64):
    """A tiny segment-anything SAM (ViT image encoder, 2 blocks, global attention in the last) with seeded,
    perturbed random weights, as the `SamTower` Trident loads."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from glaclip.models.sam import SamTower

    torch.manual_seed(seed)
    enc = ImageEncoderViT(depth=2, embed_dim=32, img_size=1024, mlp_ratio=2,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
                          qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=14, out_chans=32)
    model = Sam(image_encoder=enc, prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(64, 64),
                                                                input_image_size=(1024, 1024), mask_in_chans=4),
                mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                    depth=1, embedding_dim=32, mlp_dim=64, num_heads=2), transformer_dim=32, iou_head_depth=2,
                    iou_head_hidden_dim=32), pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return SamTower(model.eval().to(dtype), "tiny-sam", "random")


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmarks(*names: str) -> tuple:
    """Modules of the benchmarks/ scripts, imported with benchmarks/ on sys.path for the import only."""
    import importlib

    sys.path.insert(0, str(BENCHMARKS))
    try:
        return tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(BENCHMARKS))
