"""What benchmarks/corrclip2_release.py puts around CorrCLIPv2's release beyond release_common.py: the
modules its folder shadows, RADIO's checkpoint arguments for a randomly initialised C-RADIOv3-L, and
the run-time patches that take the release off CUDA and fp16 without touching its files:

- `create_model` of the segmentor module: the main CLIP (`ViT-B-16-quickgelu` + `metaclip_fullcc`, or
  `ViT-L-14-quickgelu` for the large scale) and
  the DMCE auxiliary CLIP (`hf-hub:apple/DFN2B-CLIP-ViT-B-16`, whose architecture the release reads from
  the hub) are built by the vendored open_clip as `ViT-B-16-quickgelu` with pretrained=None and fp32,
  then our state dict, then the run's dtype (the release asks for precision='fp16');
  `open_clip.get_tokenizer` maps the hub name to the same architecture's tokenizer (SimpleTokenizer, 77).
- `MB_ROOT` (the release's fixed relative `memory_bank`) = our bank folder.
- `faiss` of the segmentor module: `StandardGpuResources` gives nothing, `index_cpu_to_gpu` a CPU clone of
  the inner index (faiss-cpu; a copy, as the GPU one is: the release lets the IDMap2 wrapper that owns the
  inner index go when its __init__ returns). The release sets nprobe on it and searches it.
- `torch` of the segmentor module: `torch.cuda.current_device()` answers 0 (the release passes it to
  index_cpu_to_gpu); `torch.cuda.empty_cache()` does nothing.
- `PTTensorDataset` (the in-RAM stores): a subclass whose rows' `.to('cuda', non_blocking=True)` gives
  the rows on the CPU in the run's dtype (the release averages fp16 rows on the GPU).
- `torch` of vfms/factory.py: `torch.autocast('cuda', fp16)` does nothing; `torch.float32` (the RADIO
  input's dtype) is the run's dtype, so an fp64 run feeds RADIO fp64 from the start;
  `torch.hub.load('NVlabs/RADIO', 'radio_model', version=...)` loads RADIO's hubconf from a local
  checkout (source='local') with our checkpoint file as the version (RADIO's hubconf reads a file path
  given as version). After the segmentor is built, RADIO and its input conditioner are put in the run's
  dtype (the conditioner casts its output to `conditioner.dtype`, set by hubconf from the checkpoint).
- Tensor.half / Module.half cast to the run's dtype during predict (release_common.half_as).
"""

from __future__ import annotations

import argparse
import contextlib
import types
from pathlib import Path

import torch
from release_common import ModuleProxy, framework_stubs, imported_release

SHADOWED = ("open_clip", "prompts", "mask_generators", "vfms", "corrclip_segmentor", "myutils", "custom_datasets",
            "mmseg", "mmengine", "openpyxl", "radio", "hubconf", "factory", "dinov3", "pe", "sam2", "eomt",
            "CropFormer")

MAIN_ARCH = "ViT-B-16-quickgelu"
AUX_HUB_NAME = "hf-hub:apple/DFN2B-CLIP-ViT-B-16"
AUX_ARCH = "ViT-B-16-quickgelu"  # DFN2B-CLIP-ViT-B-16: QuickGELU ViT-B/16, 512-d (open_clip's table)


def radio_args() -> argparse.Namespace:
    """Checkpoint arguments of a C-RADIOv3-L-shaped model as RADIO's hubconf builds it
    (create_model_from_args): timm ViT-L/16, CPE up to 2048 px (128 x 128 position grid), one summary
    token per teacher (C-RADIOv3's teachers: clip, siglip2-g, dino_v2, sam; sam without summary),
    registers up to a multiple of 8, no final norm. Not read from the real checkpoint (not downloadable
    here): the shape of the model, not its exact training arguments."""
    teachers = [{"name": "clip", "type": "open_clip"}, {"name": "siglip2-g", "type": "siglip2"},
                {"name": "dino_v2", "type": "dino_v2"}, {"name": "sam", "type": "sam", "use_summary": False}]
    return argparse.Namespace(
        model="vit_large_patch16_224", pretrained=False, in_chans=None, input_size=None, num_classes=0,
        drop=0.0, drop_path=None, drop_block=None, gp=None, bn_momentum=None, bn_eps=None, torchscript=False,
        initial_checkpoint=None, model_kwargs={}, model_norm=False, cpe_max_size=2048, teachers=teachers,
        cls_token_per_teacher=True, register_multiple=8, spectral_reparam=False, spectral_heads=False, damp=None)


@contextlib.contextmanager
def radio_code(radio_repo: str | Path):
    """RADIO's package importable from its checkout; sys.path and the radio modules restored after."""
    import sys

    saved_path = list(sys.path)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "radio" or k.startswith("radio.")}
    sys.path.insert(0, str(Path(radio_repo).resolve()))
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "radio" or k.startswith("radio.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = saved_path


def write_radio_checkpoint(radio_repo: str | Path, path: Path, seed: int = 0) -> None:
    """A randomly initialised C-RADIOv3-L checkpoint in the layout hubconf.radio_model loads:
    {"args": Namespace, "state_dict": {"base_model.*", "input_conditioner.*"}} (fp32)."""
    with radio_code(radio_repo):
        from radio.input_conditioner import get_default_conditioner
        from radio.radio_model import create_model_from_args

        torch.manual_seed(seed)
        model = create_model_from_args(radio_args())
        state = {f"base_model.{k}": v for k, v in model.state_dict().items()}
        state.update({f"input_conditioner.{k}": v for k, v in get_default_conditioner().state_dict().items()})
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"args": radio_args(), "state_dict": state}, tmp)
    tmp.replace(path)


@contextlib.contextmanager
def release_imports(release_dir: str | Path):
    """Import corrclip_segmentor from release_dir (CorrCLIPv2/) with the framework stubs; yields the
    module. Restores sys.path, sys.modules and os.environ on exit."""
    with imported_release(release_dir, None, "corrclip_segmentor", SHADOWED, framework_stubs()) as (seg, _):
        yield seg


class _RowsOnCpu:
    """Store rows as the release gets them (fp16), moved 'to the GPU' = kept on the CPU, in dtype."""

    def __init__(self, rows: torch.Tensor, dtype: torch.dtype):
        self.rows, self.dtype = rows, dtype

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self.rows.to(self.dtype)


@contextlib.contextmanager
def cpu_release(seg_mod, *, dtype: torch.dtype, clip_files: dict[str, Path], bank_dir: str | Path | None,
                radio_repo: str | Path, radio_ckpt: str | Path, main_arch: str = MAIN_ARCH):
    """The patches listed in this module's docstring, on the release's modules, for the block (build the
    segmentor inside it). clip_files: {'main': ..., 'aux': ...} open_clip state dicts; main_arch: the main
    CLIP's architecture (ViT-B-16-quickgelu, or ViT-L-14-quickgelu for the release's large scale)."""
    import faiss

    vendored_open_clip = seg_mod.open_clip
    factory = __import__("vfms.factory", fromlist=["VFMExtractor"])

    def create_model(model_type, pretrained=None, precision="fp32", **kwargs):
        if model_type == AUX_HUB_NAME:
            arch, file = AUX_ARCH, clip_files["aux"]
        elif model_type == main_arch:
            arch, file = main_arch, clip_files["main"]
        else:
            raise ValueError(f"harness: no weights for {model_type}")
        model = vendored_open_clip.create_model(arch, pretrained=None, precision="fp32")
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True), strict=True)
        return model.to(dtype)

    def get_tokenizer(name, *args, **kwargs):
        return tokenizer_fn(AUX_ARCH if name == AUX_HUB_NAME else name, *args, **kwargs)

    def hub_load(repo, entry, *args, version="", **kwargs):
        if repo != "NVlabs/RADIO" or entry != "radio_model" or version != "c-radio_v3-l":
            raise ValueError(f"harness: only NVlabs/RADIO c-radio_v3-l is provided, not {repo} {entry} {version}")
        return torch.hub.load(str(Path(radio_repo).resolve()), "radio_model", source="local",
                              version=str(Path(radio_ckpt).resolve()), progress=False)

    class CpuStore(seg_mod.PTTensorDataset):
        def __getitem__(self, idx):
            return _RowsOnCpu(super().__getitem__(idx), dtype)

    no_cuda = types.SimpleNamespace(current_device=lambda: 0, empty_cache=lambda: None,
                                    is_available=lambda: False)
    fake_gpu = ModuleProxy(faiss, StandardGpuResources=lambda: None,
                      index_cpu_to_gpu=lambda res, dev, index: faiss.clone_index(index))
    saved = {name: getattr(seg_mod, name) for name in ("create_model", "MB_ROOT", "faiss", "torch",
                                                       "PTTensorDataset")}
    tokenizer_fn, saved_factory_torch = vendored_open_clip.get_tokenizer, factory.torch
    seg_mod.create_model, seg_mod.faiss, seg_mod.PTTensorDataset = create_model, fake_gpu, CpuStore
    seg_mod.MB_ROOT = str(bank_dir) if bank_dir is not None else "memory_bank"
    seg_mod.torch = ModuleProxy(torch, cuda=no_cuda)
    vendored_open_clip.get_tokenizer = get_tokenizer
    factory.torch = ModuleProxy(torch, cuda=no_cuda, float32=dtype, autocast=lambda *a, **k: contextlib.nullcontext(),
                           hub=types.SimpleNamespace(load=hub_load))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(seg_mod, name, value)
        vendored_open_clip.get_tokenizer, factory.torch = tokenizer_fn, saved_factory_torch


def radio_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """RADIO (a RADIOModel) and its input conditioner's output in dtype."""
    model.to(dtype)
    model.input_conditioner.dtype = dtype
