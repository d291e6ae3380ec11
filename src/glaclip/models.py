"""Loading the frozen CLIP (open_clip) and VFM (timm) and exposing the few pieces GLA-CLIP uses.

Weights come from a pretrained tag / hub id (downloaded once into the usual caches), a local
file (`.pt`/`.pth`/`.bin` state dict, `.safetensors`, or for CLIP OpenAI's TorchScript archive),
or ``"random"`` (random initialisation, for trying things out and for tests). An architecture may
also be given as a JSON file: an open_clip model config for CLIP, ``{"model": NAME, "kwargs": {...}}``
for the VFM.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GlaclipError

DEFAULT_CLIP = "ViT-B-16-quickgelu"
DEFAULT_CLIP_TAG = "openai"
DEFAULT_VFM = "vit_base_patch8_224.dino"
CLIP_WEIGHTS_ENV = "GLACLIP_CLIP_WEIGHTS"
VFM_WEIGHTS_ENV = "GLACLIP_VFM_WEIGHTS"
RANDOM = "random"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


# Backbones the paper's tables use, as (name, tag) for open_clip and tagged names for timm.
CLIP_BACKBONES = {
    "OpenAI ViT-B/16": ("ViT-B-16-quickgelu", "openai"),
    "OpenAI ViT-L/14": ("ViT-L-14-quickgelu", "openai"),
    "OpenCLIP LAION-2B ViT-B/16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "OpenCLIP LAION-2B ViT-H/14": ("ViT-H-14", "laion2b_s32b_b79k"),
    "MetaCLIP 2.5B ViT-B/16": ("ViT-B-16-quickgelu", "metaclip_fullcc"),
}
VFM_BACKBONES = {
    "DINO ViT-B/8": "vit_base_patch8_224.dino",
    "DINO ViT-B/16": "vit_base_patch16_224.dino",
    "DINOv2 ViT-S/14 + registers": "vit_small_patch14_reg4_dinov2.lvd142m",
    "DINOv2 ViT-B/14 + registers": "vit_base_patch14_reg4_dinov2.lvd142m",
}


class MissingWeights(GlaclipError):
    """Weights neither in the local cache nor downloadable; str() is one short line naming the file."""

    def __init__(self, part: str):
        self.part = part
        super().__init__(f"weights not in the local cache and not downloadable: {part}")

    @classmethod
    def combine(cls, errors: list["MissingWeights"]) -> "MissingWeights":
        return cls("; ".join(e.part for e in errors))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GlaclipError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GlaclipError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA (as the release runs) and fp32 elsewhere; fp64 is for verification."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp64": torch.float64, "float64": torch.float64}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise GlaclipError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    if table[dtype] == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 on the CPU is several times slower than fp32 (few CPUs compute in fp16); use bf16 "
                      "for a faster half-precision run or fp32", RuntimeWarning, stacklevel=2)
    return table[dtype]


def resize_positions(grid: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """1 x D x n0h x n0w patch position embeddings -> 1 x D x gh x gw, as the official CLIP-based
    segmenters and DINO resize them: bicubic, align_corners False, with the scale factors
    ((gh + 0.1) / n0h, (gw + 0.1) / n0w) (not the target size), which sets both the output size
    (floor -> gh x gw) and the sampling positions (source = (out + 0.5) / scale - 0.5)."""
    n0h, n0w = grid.shape[-2:]
    work = grid.to(torch.promote_types(grid.dtype, torch.float32))
    out = F.interpolate(work, scale_factor=((gh + 0.1) / n0h, (gw + 0.1) / n0w), mode="bicubic",
                        align_corners=False)
    if tuple(out.shape[-2:]) != (gh, gw):  # cannot happen for gh, gw >= 1; kept as a guard
        raise RuntimeError(f"position grid {tuple(out.shape[-2:])} != {(gh, gw)}")
    return out.to(grid.dtype)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(_WEIGHT_SUFFIXES) or Path(value).exists()


@contextmanager
def _offline_unless_hub_resolves(host: str = "huggingface.co"):
    """Without a name server answer for the hub, use the local cache at once instead of retrying
    connections for a minute (the same as HF_HUB_OFFLINE=1 for this call)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield
        return
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    old, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _freeze(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------- CLIP


@dataclass
class ClipTower:
    """An open_clip CLIP model; gives the value path of the last block and the text encoder."""

    model: nn.Module
    name: str
    weights: str

    def __post_init__(self):
        visual = self.model.visual
        last = getattr(getattr(visual, "transformer", None), "resblocks", [None])[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention) or getattr(visual, "attn_pool", None):
            raise GlaclipError(f"CLIP model {self.name!r} is not a plain open_clip ViT; GLA-CLIP needs one")
        self.visual = visual

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        nh, nw = self.visual.grid_size
        if (gh, gw) == (nh, nw):
            return pos
        patch_pos = pos[1:].reshape(1, nh, nw, -1).permute(0, 3, 1, 2)
        patch_pos = resize_positions(patch_pos, gh, gw).permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([pos[:1], patch_pos])

    @property
    def last_block(self) -> nn.Module:
        return self.visual.transformer.resblocks[-1]

    @property
    def heads(self) -> int:
        return self.last_block.attn.num_heads

    def last_block_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Bx3xHxW (CLIP-normalised) -> (B x (1+L) x D tokens entering the last block, CLS first; grid).

        All blocks but the last run unchanged; the positional embedding is interpolated only when the
        grid differs from the model's own (METHOD.md step 4)."""
        v = self.visual
        x = v.conv1(x.to(self.dtype))
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self._positional(gh, gw).to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x, (gh, gw)

    def qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B x T x D tokens -> q, k, v of the last block from ln_1(tokens), each B x T x D (heads side by side)."""
        attn = self.last_block.attn
        return F.linear(self.last_block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def value_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW (CLIP-normalised) -> BxDxghxgw values of the last block's patch tokens (step 4)."""
        tokens, (gh, gw) = self.last_block_input(x)
        attn, d = self.last_block.attn, tokens.shape[-1]
        values = F.linear(self.last_block.ln_1(tokens[:, 1:]), attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
        return values.transpose(1, 2).reshape(tokens.shape[0], d, gh, gw)

    def out_proj(self, attended: torch.Tensor) -> torch.Tensor:
        return self.last_block.attn.out_proj(attended)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """...xD final tokens -> ...xE embeddings: ln_post, visual projection."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def project(self, attended: torch.Tensor) -> torch.Tensor:
        """...xD attention outputs (heads side by side) -> ...xE: out_proj, ln_post, visual projection."""
        return self.head(self.out_proj(attended))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def text_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every parameter and buffer outside the image tower (what text embeddings depend on)."""
        return [(k, v) for k, v in self.model.state_dict().items() if not k.startswith("visual.")]


def _resolve_clip_name(name: str) -> str:
    import open_clip

    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise GlaclipError(f"CLIP architecture file not found: {path}")
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GlaclipError(f"CLIP architecture file {path} is not valid JSON: {_one_line(exc)}") from None
        open_clip.add_model_config(path)
        return path.stem
    if name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models():
        return name
    close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
    raise GlaclipError(f"unknown CLIP model {name!r}{hint}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_state_dict(path: Path, what: str) -> tuple[dict[str, torch.Tensor], bool]:
    """State dict from .safetensors, a torch pickle (optionally under 'state_dict'/'model'), or a
    TorchScript archive. Returns (state_dict, was_torchscript)."""
    if not path.is_file():
        raise GlaclipError(f"{what} weights file not found: {path}")
    scripted = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            scripted = True
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # every reader raises its own types (and advice) for garbled files
        raise GlaclipError(f"{path} is not a {what} weights file (not readable as safetensors, a PyTorch "
                           "state dict or a TorchScript archive)") from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GlaclipError(f"{what} weights {path} hold no state dict of tensors")
    prefixes = ("module.", "backbone.")
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd), scripted


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        raise GlaclipError(f"{what} weights {path} do not fit the architecture: " + ", ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_clip(name: str = DEFAULT_CLIP, weights: str | None = None, device: str | torch.device = "auto",
              dtype: str | torch.dtype = "auto") -> ClipTower:
    """Build an open_clip model and load its weights (tag, file, or "random").

    ``weights=None`` takes $GLACLIP_CLIP_WEIGHTS, else the 'openai' tag (or the model's first tag).
    OpenAI weights always get QuickGELU, whatever the architecture name says.
    """
    import open_clip

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    arch = _resolve_clip_name(name)
    weights = weights or os.environ.get(CLIP_WEIGHTS_ENV) or None
    schema = arch.startswith(("hf-hub:", "local-dir:"))
    if weights is None and not schema:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise GlaclipError(f"CLIP model {arch!r} has no pretrained tag; pass --clip-weights FILE or 'random'")
        weights = DEFAULT_CLIP_TAG if DEFAULT_CLIP_TAG in tags else tags[0]

    if schema:
        model = _create_clip(arch, None, name=arch, weights=arch)
    elif weights == RANDOM:
        model = _create_clip(arch, None, load_weights=False)
    elif _looks_like_path(weights):
        path = Path(weights).expanduser()
        sd, scripted = read_state_dict(path, "CLIP")
        for extra in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(extra, None)
        quick = scripted or "quickgelu" in path.name.lower()
        model = _create_clip(arch, None, load_weights=False, force_quick_gelu=quick)
        if "attn_mask" in sd and "attn_mask" not in model.state_dict():
            sd.pop("attn_mask")
        if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        _load_into(model, sd, path, "CLIP")
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if weights not in tags:
            raise GlaclipError(f"CLIP model {arch!r} has no pretrained tag {weights!r}; tags: "
                               f"{', '.join(tags) or 'none'}"
                               " (or pass a weights file)")
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        model = _create_clip(arch, weights, name=arch, weights=weights, source=cfg,
                             force_quick_gelu=bool(cfg.get("quick_gelu")))
    return ClipTower(_freeze(model, dev, dt), name=arch, weights=str(weights))


def _create_clip(arch: str, pretrained: str | None, name: str = "", weights: str = "", source: dict | None = None,
                 **kwargs) -> nn.Module:
    import open_clip

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.CRITICAL)  # open_clip logs to the root logger; failures are reported below
        with warnings.catch_warnings(), _offline_unless_hub_resolves():
            warnings.simplefilter("ignore")
            return open_clip.create_model(arch, pretrained=pretrained, pretrained_text=False, **kwargs)
    except GlaclipError:
        raise
    except Exception as exc:
        if pretrained is None and not arch.startswith(("hf-hub:", "local-dir:")):
            raise GlaclipError(f"cannot build CLIP model {arch!r}: {_one_line(exc)}") from None
        if source and source.get("hf_hub"):
            where = f"open_clip_model.safetensors from hub repo {source['hf_hub'].rstrip('/')}"
        elif source and source.get("url"):
            where = source["url"]
        else:
            where = "its checkpoint"
        raise MissingWeights(f"CLIP {name}:{weights} (get {where}; --clip-weights FILE or {CLIP_WEIGHTS_ENV})") \
            from None
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------------------------------ VFM


@dataclass
class VfmTower:
    """A timm ViT used as the VFM: the final-norm patch tokens of the last block."""

    model: nn.Module
    name: str
    weights: str

    def __post_init__(self):
        if not hasattr(self.model, "patch_embed") or not hasattr(self.model, "forward_features"):
            raise GlaclipError(f"VFM {self.name!r} is not a timm vision transformer")

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.patch_embed.proj.weight.dtype

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW (ImageNet-normalised) -> BxCxghxgw (METHOD.md step 3).

        timm's forward with one change: at a grid other than the model's own, the position
        embeddings are resized as the official DINO release resizes them (`resize_positions`)."""
        m = self.model
        b = x.shape[0]
        x = m.patch_embed(x.to(self.dtype))  # B x gh x gw x C (dynamic_img_size)
        gh, gw = x.shape[1:3]
        x = x.reshape(b, gh * gw, -1)
        prefix = [t.expand(b, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        pos = self._positional(gh, gw)
        if m.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        x = m.norm_pre(m.patch_drop(m.pos_drop(x)))
        x = m.norm(m.blocks(x))[:, m.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(b, -1, gh, gw)

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        m = self.model
        pos = m.pos_embed
        n0h, n0w = m.patch_embed.grid_size
        if (gh, gw) == (n0h, n0w):
            return pos
        k = 0 if m.no_embed_class else m.num_prefix_tokens
        grid = pos[:, k:].reshape(1, n0h, n0w, -1).permute(0, 3, 1, 2)
        grid = resize_positions(grid, gh, gw).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:, :k], grid], dim=1)


def _resolve_vfm_name(name: str) -> tuple[str, dict]:
    import timm

    kwargs: dict = {}
    if name.endswith(".json"):
        path = Path(name)
        try:
            spec = json.loads(path.read_text())
            name, kwargs = spec["model"], dict(spec.get("kwargs", {}))
        except FileNotFoundError:
            raise GlaclipError(f"VFM architecture file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GlaclipError(f"VFM architecture file {path} needs JSON {{\"model\": NAME, \"kwargs\": {{...}}}}: "
                               f"{_one_line(exc)}") from None
    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(pretrained=True), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GlaclipError(f"unknown VFM {name!r}{hint}")
    return name, kwargs


def load_vfm(name: str = DEFAULT_VFM, weights: str | None = None, device: str | torch.device = "auto",
             dtype: str | torch.dtype = "auto") -> VfmTower:
    """Build a timm ViT (any image size) and load its weights (hub tag, file, or "random").

    ``weights=None`` takes $GLACLIP_VFM_WEIGHTS, else the hub weights of the tagged name.
    Files may be timm's own checkpoints or the original DINO release (same key names).
    """
    import timm

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    arch, kwargs = _resolve_vfm_name(name)
    weights = weights or os.environ.get(VFM_WEIGHTS_ENV) or None
    kwargs.update(dynamic_img_size=True, num_classes=0)
    try:
        if weights == RANDOM:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        elif weights is not None:
            path = Path(weights).expanduser()
            sd, _ = read_state_dict(path, "VFM")
            model = timm.create_model(arch, pretrained=False, **kwargs)
            sd = _timm_filter(model, sd)
            _load_into(model, sd, path, "VFM")
        else:
            with _offline_unless_hub_resolves():
                model = timm.create_model(arch, pretrained=True, **kwargs)
    except GlaclipError:
        raise
    except Exception as exc:
        if weights is not None:
            raise GlaclipError(f"cannot build VFM {arch!r}: {_one_line(exc)}") from None
        cfg = timm.models.get_pretrained_cfg(arch)
        if getattr(cfg, "hf_hub_id", None):
            where = f"model.safetensors from hub repo {cfg.hf_hub_id}"
        else:
            where = getattr(cfg, "url", None) or "its checkpoint"
        raise MissingWeights(f"VFM {arch} (get {where}; --vfm-weights FILE or {VFM_WEIGHTS_ENV})") from None
    return VfmTower(_freeze(model, dev, dt), name=arch, weights=str(weights or "hub"))


def _timm_filter(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Let timm's own converter map foreign key names (e.g. the original DINO checkpoint), and drop
    classifier heads the feature extractor does not have."""
    import importlib

    try:
        module = importlib.import_module(type(model).__module__)
        filt = getattr(module, "checkpoint_filter_fn", None)
        if filt is not None:
            sd = filt(sd, model)
    except Exception:
        pass
    own = model.state_dict()
    return {k: v for k, v in sd.items() if k in own or not k.startswith(("head.", "fc."))}
