"""Loading the two real-size towers from files: the previous way (random init, then copy) vs glaclip's.

    python benchmarks/loading.py [--repeat 3] [--no-torchscript] [--dir DIR] [--out loading-cpu.md]

Makes random checkpoints of OpenAI ViT-B/16 (ViT-B-16-quickgelu) and DINO ViT-B/8
(vit_base_patch8_224.dino) itself -- a .pt/.pth state dict, .safetensors, and for CLIP a TorchScript
archive like OpenAI's -- in a temporary folder, then times, per file, the median of --repeat loads
(fp32, CPU) after one warm-up:
- previous: build the model with its random initialisation, read the file (torch.load without mmap,
  safetensors, torch.jit.load), copy the state dict in (what glaclip did before);
- glaclip: `glaclip.models.load_clip` / `load_vfm`;
- glaclip + touch: the same, then reading one value per 4 KiB page of every weight (memory-mapped files
  are paged in lazily; the first forward pass pays this).
Each glaclip model is checked bit-identical (every parameter and buffer) to the previous way's.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

CLIP, VFM = "ViT-B-16-quickgelu", "vit_base_patch8_224.dino"


def previous_clip(path: Path) -> torch.nn.Module:
    import open_clip

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif path.name.endswith(".ts.pt"):
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        for extra in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(extra, None)
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    model = open_clip.create_model(CLIP, pretrained=None, load_weights=False, pretrained_text=False)
    if "attn_mask" not in model.state_dict():  # a TorchScript archive holds the text mask
        sd.pop("attn_mask", None)
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False)


def previous_vfm(path: Path) -> torch.nn.Module:
    import timm

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    model = timm.create_model(VFM, pretrained=False, dynamic_img_size=True, num_classes=0)
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False)


def touch(model: torch.nn.Module) -> float:
    """Read one value per 4 KiB page of every weight (pages a memory-mapped file in, computes little)."""
    return float(sum(t.reshape(-1)[:: 4096 // t.element_size()].float().sum() for t in model.state_dict().values()))


def identical(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ta = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    tb = {**dict(b.named_parameters()), **dict(b.named_buffers())}
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def timed(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (imports, page cache)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def make_files(folder: Path, torchscript: bool) -> dict[str, Path]:
    from safetensors.torch import save_file

    from glaclip.models.loading import load_clip, load_vfm

    torch.manual_seed(0)
    clip = load_clip(CLIP, "random", device="cpu", dtype="fp32").model
    vfm = load_vfm(VFM, "random", device="cpu", dtype="fp32").model
    files = {"CLIP .pt": folder / "clip.pt", "CLIP .safetensors": folder / "clip.safetensors",
             "VFM .pth": folder / "vfm.pth", "VFM .safetensors": folder / "vfm.safetensors"}
    torch.save(clip.state_dict(), files["CLIP .pt"])
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(files["CLIP .safetensors"]))
    torch.save(vfm.state_dict(), files["VFM .pth"])
    save_file({k: v.contiguous() for k, v in vfm.state_dict().items()}, str(files["VFM .safetensors"]))
    if torchscript:
        files["CLIP TorchScript"] = folder / "clip.ts.pt"
        torch.jit.script(clip).save(str(files["CLIP TorchScript"]))
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-torchscript", dest="torchscript", action="store_false")
    ap.add_argument("--dir", help="keep the checkpoints here (default: a temporary folder, removed after)")
    ap.add_argument("--out", help="also write the table to this markdown file")
    a = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")

    from glaclip.models.loading import load_clip, load_vfm

    with tempfile.TemporaryDirectory(prefix="glaclip-loading-") as tmp:
        folder = Path(a.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = make_files(folder, a.torchscript)
        rows, new_total, old_total = [], {}, {}
        for label, path in files.items():
            is_clip = label.startswith("CLIP")
            old_fn = (lambda p=path: previous_clip(p)) if is_clip else (lambda p=path: previous_vfm(p))
            new_fn = (lambda p=path: load_clip(CLIP, str(p), device="cpu", dtype="fp32").model) if is_clip else \
                (lambda p=path: load_vfm(VFM, str(p), device="cpu", dtype="fp32").model)
            old_s, old_model = timed(old_fn, a.repeat)
            new_s, new_model = timed(new_fn, a.repeat)
            touched_s, _ = timed(lambda f=new_fn: touch(f()), a.repeat)
            same = identical(new_model, old_model)
            rows.append((label, old_s, new_s, touched_s, same))
            fmt = label.split(" ", 1)[1].replace(".pth", ".pt")
            new_total[fmt] = new_total.get(fmt, 0.0) + new_s
            old_total[fmt] = old_total.get(fmt, 0.0) + old_s
        for fmt in (".pt", ".safetensors"):
            both = [r for r in rows if r[0].split(" ", 1)[1].replace(".pth", ".pt") == fmt]
            rows.append((f"both {fmt}", sum(r[1] for r in both), sum(r[2] for r in both),
                         sum(r[3] for r in both), all(r[4] for r in both)))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [f"Machine: {machine}; fp32, CPU; median of {a.repeat} loads after a warm-up.", "",
             "| file | previous s | glaclip s | glaclip + touch s | speed-up | bit-identical |",
             "|---|---|---|---|---|---|"]
    for label, old_s, new_s, touched_s, same in rows:
        lines.append(f"| {label} | {old_s:.2f} | {new_s:.2f} | {touched_s:.2f} | {old_s / new_s:.1f}x | "
                     f"{'yes' if same else 'NO'} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
