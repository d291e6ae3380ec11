"""A tiny memory bank written in CorrCLIPv2's release layout by the tests themselves (its builder's
recipe: IVFPQ over an inner-product quantizer, nlist = max(1, int(8 sqrt(N))), 8-bit codes, wrapped in
an IndexIDMap2 with ids = store rows; or a Flat IndexIDMap2)."""

from pathlib import Path

import numpy as np
import torch


def write_bank(root: Path, name: str, vfm: np.ndarray, stores: dict[str, np.ndarray], kind: str = "ivfpq",
               vfm_key: str = "radiov3", m: int | None = None) -> Path:
    """vfm: N x C region VFM features (normalised as the builder does); stores: {encoder: N x D}."""
    import faiss

    (root / "clip_embeddings").mkdir(parents=True, exist_ok=True)
    (root / "vfm_embeddings").mkdir(parents=True, exist_ok=True)
    for enc, rows in stores.items():
        torch.save(torch.from_numpy(rows).to(torch.float16), root / "clip_embeddings" / f"{name}_{enc}.pt")
    x = vfm.astype(np.float32)
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    n, d = x.shape
    if kind == "ivfpq":
        inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, max(1, int(8 * np.sqrt(n))), m or min(32, d), 8)
        inner.train(x)
    else:
        inner = faiss.IndexFlatL2(d)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    path = root / "vfm_embeddings" / f"{name}_{vfm_key}.faiss"
    faiss.write_index(index, str(path))
    return path


def random_bank(root: Path, n: int = 300, c: int = 32, dims: dict[str, int] | None = None, kind: str = "ivfpq",
                seed: int = 0, name: str = "coco") -> dict:
    """A bank of n random regions; returns the arrays written ({'vfm': ..., encoder: ...})."""
    rng = np.random.default_rng(seed)
    dims = dims or {"metaclip_b": 16, "dfnclip_b": 16}
    arrays = {"vfm": rng.standard_normal((n, c)).astype(np.float32)}
    arrays.update({enc: rng.standard_normal((n, d)).astype(np.float32) for enc, d in dims.items()})
    write_bank(root, name, arrays["vfm"], {enc: arrays[enc] for enc in dims}, kind)
    return arrays


def write_tiny_radio(path: Path, seed: int = 5) -> Path:
    """A checkpoint of the stand-in RADIO (tests/models/radio_standin, 32-d features) in the layout RADIO's
    hub entry reads ({"args", "state_dict"}), seeded."""
    g = torch.Generator().manual_seed(seed)
    sd = {"base_model.embed.weight": torch.randn(32, 3, 16, 16, generator=g) * 0.05,
          "base_model.embed.bias": torch.randn(32, generator=g),
          "base_model.mix.weight": torch.randn(32, 32, generator=g),
          "base_model.mix.bias": torch.randn(32, generator=g),
          "input_conditioner.norm_mean": torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1),
          "input_conditioner.norm_std": torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)}
    torch.save({"args": {"dim": 32}, "state_dict": sd}, path)
    return path


def regions(h, w):
    """An h x w region-id map: three rectangles (ids 3, 7, 9) on the unsegmented id 0."""
    m = np.zeros((h, w), np.int32)
    m[h // 8 : h // 2, w // 10 : w // 2] = 3
    m[h // 2 : h - 4, w // 4 : w - 4] = 7
    m[2 : h // 6, 2 * w // 3 : w - 2] = 9
    return m
