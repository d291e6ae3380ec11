"""The method registry: what each segmentation method is, in one place.

A method is one `Method` entry: its family (the strategy in `families.py` that turns per-window
features into final patch tokens), its attention recipe (which affinities attend, read by the family),
its default protocol and its host's protocol (rows of `protocols.py`), settings its formula fixes,
a one-line description and the paper it follows. Named presets that are a method with fixed
overrides (`Variant`) live here too. Presets, protocols, `glaclip methods`, the CLI's `--method`
help and the demo's method list all derive from `METHODS` and `VARIANTS`; `register` adds to them.

This module imports nothing heavy: the CLI reads it to write its help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import GlaclipError
from .backbones import DEFAULT_AUX_CLIP, DEFAULT_CLIP, DEFAULT_RADIO, DEFAULT_SAM, DEFAULT_VFM

# Families (families.FAMILIES): window-local from a VFM, window-local from CLIP's own q/k, global GLA,
# and the mask-guided ones (CorrCLIP: region masks per image; window-local, or global over all windows).
VFM_LOCAL, CLIP_LOCAL, GLOBAL = "vfm-local", "clip-local", "global"
MASK_LOCAL, MASK_GLOBAL = "mask-local", "mask-global"
SAM_GLOBAL = "sam-aggregated"  # Trident: window features spliced on the image, aggregated by SAM's attention
MASK_RADIO = "mask-radio"  # CorrCLIPv2: region masks, RADIO features of the whole image, no merging; bank support
MASK_RADIO_GLOBAL = "mask-radio-global"  # GLA on CorrCLIPv2: as mask-radio, scope and softmax over all windows
FAMILY_NAMES = (VFM_LOCAL, CLIP_LOCAL, GLOBAL, MASK_LOCAL, MASK_GLOBAL, SAM_GLOBAL, MASK_RADIO, MASK_RADIO_GLOBAL)
MASK_FAMILIES = (MASK_LOCAL, MASK_GLOBAL, MASK_RADIO, MASK_RADIO_GLOBAL)
RADIO_FAMILIES = (MASK_RADIO, MASK_RADIO_GLOBAL)  # the families that run attention 'radio'
GLOBAL_FAMILIES = (GLOBAL, MASK_GLOBAL, MASK_RADIO_GLOBAL)  # attention over all windows, `block_rows` at a time
# Attention recipes. 'vfm': affinities of the VFM's tokens over CLIP's values; 'block': CLIP's unmodified
# last block; 'value': the value path alone; otherwise '+'-joined CLIP affinities, each a softmax whose
# weights are summed: 'q.q' (q-q), 'k.k', 'q.k' (CLIP's own). A global family takes 'vfm' or symmetric ones.
# 'vfm-qk': cosine of the VFM's last-block q+k (CorrCLIP), restricted to region masks; 'radio': cosine of
# RADIO's spatial features of the whole image (CorrCLIPv2), restricted to region masks.
ATTENTIONS = ("vfm", "block", "value", "q.q", "k.k", "q.k", "q.q+k.k", "vfm-qk", "radio")


@dataclass(frozen=True)
class Method:
    """One segmentation method.

    family: a name in FAMILY_NAMES. attention: a recipe in ATTENTIONS. residual: keep the last block's
    residual and FFN after the attention (else neither). neighbourhood: add NACLIP's Gaussian
    (`AttentionConfig.gaussian_std`) to the attention logits. smoothed_init: GLA's proxy starts from
    each token's key averaged with its neighbours and twins (`hosts.smoothed_proxy`).
    protocol: the protocol it runs by default; host: the one `protocol="host"` selects.
    settings: attention settings its formula fixes whatever the protocol (e.g. token_norm=False).
    clip: the (open_clip model, pretrained tag) it runs by default (None: `models.DEFAULT_CLIP` with the
    'openai' tag), e.g. CorrCLIP's MetaCLIP. pixel_norm: the (mean, std) on 0..255 its release normalises
    the image with (None: CLIP's own constants). vfm: the VFM it runs by default (None: `models.DEFAULT_VFM`).
    """

    name: str
    family: str
    attention: str
    description: str
    paper: str
    protocol: str = "gla"
    host: str = "gla"
    residual: bool = False
    neighbourhood: bool = False
    smoothed_init: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    clip: tuple[str, str] | None = None
    pixel_norm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    vfm: str | None = None
    aux_clip: tuple[str, str | None] | None = None

    @property
    def needs_vfm(self) -> bool:
        return self.attention in ("vfm", "vfm-qk")

    @property
    def needs_masks(self) -> bool:
        """Region masks are an input of the method itself (not only of mask voting)."""
        return self.family in MASK_FAMILIES

    @property
    def needs_sam(self) -> bool:
        """SAM (segment-anything) is one of the method's models (Trident)."""
        return self.family == SAM_GLOBAL

    @property
    def needs_radio(self) -> bool:
        """RADIO (NVlabs/RADIO) is its VFM (CorrCLIPv2); `vfm`/`vfm_weights` then name RADIO's model and file."""
        return self.attention == "radio"

    @property
    def towers(self) -> tuple[str, ...]:
        """The frozen networks it loads ("clip", "vfm", "sam", "radio"), CLIP first (an auxiliary CLIP, when
        asked for, comes on top: `Segmenter.from_pretrained(aux_clip=...)`)."""
        return ("clip",) + ("vfm",) * self.needs_vfm + ("sam",) * self.needs_sam + ("radio",) * self.needs_radio

    def model(self, tower: str) -> str:
        """The network it runs as `tower` when none is named: its own backbone, else the package's default."""
        return {"clip": self.clip[0] if self.clip else DEFAULT_CLIP, "vfm": self.vfm or DEFAULT_VFM,
                "sam": DEFAULT_SAM, "radio": self.vfm or DEFAULT_RADIO,
                "aux_clip": self.aux_clip[0] if self.aux_clip else DEFAULT_CLIP}[tower]

    @property
    def recipe(self) -> str:
        """The one line `glaclip methods` prints."""
        return f"{self.paper}: {self.description}"

    def check(self) -> None:
        problems = []
        if self.family not in FAMILY_NAMES:
            problems.append(f"family must be one of {', '.join(FAMILY_NAMES)}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention must be one of {', '.join(ATTENTIONS)}")
        if (self.family in MASK_FAMILIES) != (self.attention in ("vfm-qk", "radio")) or \
                (self.family in RADIO_FAMILIES) != (self.attention == "radio"):
            problems.append("the mask-guided families run attention 'vfm-qk' (mask-radio and mask-radio-global: "
                            "'radio'), and only they")
        elif (self.family in (VFM_LOCAL, SAM_GLOBAL) and not self.needs_vfm or
              self.family == CLIP_LOCAL and self.needs_vfm):
            problems.append(f"the {self.family} family cannot run attention {self.attention!r}")
        if self.family == GLOBAL and self.attention in ("block", "value", "q.k"):
            problems.append(f"global attention needs symmetric affinities, not {self.attention!r}")
        if self.smoothed_init and (self.family != GLOBAL or self.needs_vfm):
            problems.append("smoothed_init applies to global attention on CLIP keys only")
        plain = self.attention in ("block", "value")
        if (self.residual or self.neighbourhood) and (self.family != CLIP_LOCAL or plain):
            problems.append("residual and neighbourhood apply to window-local CLIP affinities only")
        if problems:
            raise GlaclipError(f"method {self.name!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class Variant:
    """A named preset: a method with fixed overrides (e.g. a paper's stated value)."""

    name: str
    method: str
    overrides: Mapping[str, Any]
    description: str


DEFAULT_METHOD = "gla-proxyclip"
_METHODS: dict[str, Method] = {}
_VARIANTS: dict[str, Variant] = {}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)  # read-only views; `register` adds
VARIANTS: Mapping[str, Variant] = MappingProxyType(_VARIANTS)


def register(entry: Method | Variant) -> Method | Variant:
    """Add a method or a named preset; every listing (presets, protocols, CLI, demo) then has it."""
    if entry.name in _METHODS or entry.name in _VARIANTS:
        raise GlaclipError(f"method or preset {entry.name!r} is already registered")
    if isinstance(entry, Method):
        entry.check()
        _METHODS[entry.name] = entry
    else:
        if entry.method not in _METHODS:
            raise GlaclipError(f"preset {entry.name!r}: unknown method {entry.method!r}")
        _VARIANTS[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a method or named preset added with `register` (for tests and plug-ins)."""
    if any(v.method == name for v in _VARIANTS.values()):
        raise GlaclipError(f"method {name!r} still has named presets")
    _METHODS.pop(name, None)
    _VARIANTS.pop(name, None)


def preset_names() -> list[str]:
    """Every name `--method` takes: the methods, then the named presets."""
    return list(_METHODS) + list(_VARIANTS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise GlaclipError(f"unknown preset or method {name!r}; choose from {', '.join(preset_names())}")
    return _METHODS[name]


# CorrCLIP's data preprocessor (mmseg SegDataPreProcessor): CLIP's constants rounded, on 0..255.
CORRCLIP_NORM = ((122.771, 116.746, 104.094), (68.501, 66.632, 70.323))

for _entry in [
    Method(DEFAULT_METHOD, GLOBAL, "vfm", "VFM keys of all windows, proxy anchor, dynamic normalisation",
           "GLA-CLIP (CVPR 2026) on ProxyCLIP", host="proxyclip"),
    Method("proxyclip", VFM_LOCAL, "vfm", "VFM affinities as attention over CLIP values, per window",
           "ProxyCLIP (Lan et al., ECCV 2024)", protocol="proxyclip", host="proxyclip",
           settings={"token_norm": False}),  # official ProxyCLIP: one scalar mean per window
    Method("clip", CLIP_LOCAL, "block", "the unmodified last block, q-k attention with residual and FFN",
           "CLIP (Radford et al., ICML 2021)", host="sclip"),  # as SCLIP and NACLIP report it
    Method("clip-vanilla", CLIP_LOCAL, "q.k", "the last block's q-k attention only; no residual, no FFN",
           "Vanilla CLIP as ClearCLIP and the GLA release define it", host="clearclip"),
    Method("maskclip", CLIP_LOCAL, "value", "value path of the last block, out_proj only; no residual, no FFN",
           "MaskCLIP (Zhou et al., ECCV 2022)"),
    Method("sclip", CLIP_LOCAL, "q.q+k.k", "correlative self-attention softmax(qq^T)+softmax(kk^T); residual and "
           "FFN kept", "SCLIP (Wang et al., ECCV 2024)", protocol="sclip", host="sclip", residual=True),
    Method("clearclip", CLIP_LOCAL, "q.q", "q-q attention; no residual, no FFN", "ClearCLIP (Lan et al., ECCV 2024)",
           protocol="clearclip", host="clearclip"),
    Method("naclip", CLIP_LOCAL, "k.k", "k-k attention plus a Gaussian neighbourhood (std 5 patches) on the logits; "
           "no residual, no FFN", "NACLIP (Hajimiri et al., WACV 2025)", protocol="naclip", host="naclip",
           neighbourhood=True),
    Method("gla-clearclip", GLOBAL, "q.q", "CLIP q of all windows as keys; no residual, no FFN", "GLA on ClearCLIP",
           host="clearclip"),
    Method("gla-clearclip-release", GLOBAL, "q.q", "the proxy starts from each token's q averaged with its 8 "
           "neighbours and the tokens at the same image position in other windows; beta fixed at 1.2",
           "GLA on ClearCLIP as released", host="clearclip", smoothed_init=True,
           settings={"dynamic_beta": False}),  # the release's dynamic-beta path fails; beta 1.2
    Method("gla-sclip", GLOBAL, "q.q+k.k", "GLA weights from q plus GLA weights from k (all windows); no residual, "
           "no FFN", "GLA on SCLIP", host="sclip"),
    Method("gla-naclip", GLOBAL, "k.k", "CLIP k of all windows as keys; no residual, no FFN", "GLA on NACLIP",
           host="naclip"),
    Method("corrclip", MASK_LOCAL, "vfm-qk", "CLIP's last-layer correlations from DINO q+k restricted to merged "
           "region masks, spatial and semantic branches, map correction by region", "CorrCLIP (Zhang et al., ICCV "
           "2025) as released", protocol="corrclip", host="corrclip", clip=("ViT-B-16-quickgelu", "metaclip_fullcc"),
           pixel_norm=CORRCLIP_NORM),
    Method("gla-corrclip", MASK_GLOBAL, "vfm-qk", "CorrCLIP with GLA's keys of all windows: one merged region map "
           "per image, scope and softmax(4 x cos) over the tokens of every window", "GLA on CorrCLIP (glaclip's own "
           "combination, in no paper)", protocol="corrclip", host="corrclip",
           clip=("ViT-B-16-quickgelu", "metaclip_fullcc"), pixel_norm=CORRCLIP_NORM),
    Method("corrclip2", MASK_RADIO, "radio", "CorrCLIP without region merging, correlations from C-RADIOv3-L "
           "features of the whole image on 2x CLIP's patch grid; with a memory bank, support logits retrieved per "
           "region (main and DFN stores) fused 0.5/0.5; map correction by region", "CorrCLIPv2 (Zhang et al., "
           "journal extension of CorrCLIP) as released", protocol="corrclip2", host="corrclip2",
           clip=("ViT-B-16-quickgelu", "metaclip_fullcc"), pixel_norm=CORRCLIP_NORM, vfm=DEFAULT_RADIO,
           aux_clip=DEFAULT_AUX_CLIP),
    Method("gla-corrclip2", MASK_RADIO_GLOBAL, "radio", "CorrCLIPv2 with GLA's keys of all windows: the raw region "
           "ids of one map per image, scope and softmax(4 x cos) of RADIO features over the tokens of every window; "
           "bank support and map correction as corrclip2", "GLA on CorrCLIPv2 (glaclip's own combination, in no "
           "paper)", protocol="corrclip2", host="corrclip2", clip=("ViT-B-16-quickgelu", "metaclip_fullcc"),
           pixel_norm=CORRCLIP_NORM, vfm=DEFAULT_RADIO, aux_clip=DEFAULT_AUX_CLIP),
    Method("trident", SAM_GLOBAL, "vfm", "ProxyCLIP per window (DINO ViT-B/16 output tokens), windows spliced on the "
           "image and aggregated by SAM ViT-B's last-block attention filtered by SAM value similarity, SAM prompt "
           "refinement", "Trident (Shi et al., ICCV 2025) as released", protocol="trident", host="trident",
           pixel_norm=CORRCLIP_NORM, vfm="vit_base_patch16_224.dino"),
    Variant("gla-proxyclip-paper", DEFAULT_METHOD, {"rho": 0.6}, "rho as the paper's text states"),
]:
    register(_entry)
