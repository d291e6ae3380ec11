"""Tiny randomly initialised models of the real architectures, built and saved by the tests."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from the tests
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker (and for the processes it starts)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
os.environ["GLACLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="glaclip-test-cache-")  # never the user's cache

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
