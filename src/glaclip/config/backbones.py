"""The frozen networks glaclip knows by name, and the defaults: CLIP and VFM backbones, SAM (Trident)
and SAM 2 (region-mask generation). Names and files only; building and loading is `models/`."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import GlaclipError

DEFAULT_CLIP = "ViT-B-16-quickgelu"
DEFAULT_CLIP_TAG = "openai"
DEFAULT_VFM = "vit_base_patch8_224.dino"

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

# Trident's SAM: segment-anything's registry kind and the release's checkpoint file
SAM_MODELS = {"sam-vit-b": ("vit_b", "sam_vit_b_01ec64.pth"), "sam-vit-l": ("vit_l", "sam_vit_l_0b3195.pth"),
              "sam-vit-h": ("vit_h", "sam_vit_h_4b8939.pth")}
DEFAULT_SAM = "sam-vit-b"


class Sam2Model(NamedTuple):
    """A SAM 2 checkpoint: the sam2 package's config name, its Hugging Face repository and file."""

    config: str
    hub_id: str
    filename: str


SAM2_MODELS = {  # as sam2 1.1.0's build_sam.HF_MODEL_ID_TO_FILENAMES (the SAM 2.0 checkpoints the release used)
    "sam2-hiera-tiny": Sam2Model("configs/sam2/sam2_hiera_t.yaml", "facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt"),
    "sam2-hiera-small": Sam2Model("configs/sam2/sam2_hiera_s.yaml", "facebook/sam2-hiera-small",
                                  "sam2_hiera_small.pt"),
    "sam2-hiera-base-plus": Sam2Model("configs/sam2/sam2_hiera_b+.yaml", "facebook/sam2-hiera-base-plus",
                                      "sam2_hiera_base_plus.pt"),
    "sam2-hiera-large": Sam2Model("configs/sam2/sam2_hiera_l.yaml", "facebook/sam2-hiera-large",
                                  "sam2_hiera_large.pt"),
}
DEFAULT_SAM2 = "sam2-hiera-large"  # the CorrCLIP release's mask generator; what --sam-weights alone implies


class RadioModel(NamedTuple):
    """A RADIO model of NVlabs/RADIO's resource table: its checkpoint URL (torch.hub caches it under
    `<hub dir>/checkpoints/<file name>`), the name CorrCLIPv2's memory banks give its index
    (`vfm_embeddings/{bank}_{key}.faiss`) and its feature width."""

    url: str
    bank_key: str
    dim: int


RADIO_MODELS = {  # NVlabs/RADIO radio/common.py RESOURCE_MAP; CorrCLIPv2 vfms/factory.py (radiov3 = c-radio_v3-l)
    "c-radio_v3-l": RadioModel("https://huggingface.co/nvidia/C-RADIOv3-L/resolve/main/c-radio-v3_l_half.pth.tar",
                               "radiov3", 1024),
}
DEFAULT_RADIO = "c-radio_v3-l"
RADIO_HUB_REPO = "NVlabs/RADIO"

# CorrCLIPv2's memory-bank stores are named for the CLIP that embedded the regions
# (`clip_embeddings/{bank}_{key}.pt`): the main CLIP (MetaCLIP) and the auxiliary one (DFN, DMCE).
BANK_MAIN_KEYS = {"ViT-B-16-quickgelu": "metaclip_b", "ViT-L-14-quickgelu": "metaclip_l"}
BANK_AUX_KEYS = {"ViT-B-16-quickgelu": "dfnclip_b", "ViT-B-16": "dfnclip_b", "hf-hub:apple/DFN2B-CLIP-ViT-B-16":
                 "dfnclip_b", "ViT-L-14-quickgelu": "dfnclip_l", "ViT-L-14": "dfnclip_l",
                 "hf-hub:apple/DFN2B-CLIP-ViT-L-14": "dfnclip_l"}
DEFAULT_AUX_CLIP = ("hf-hub:apple/DFN2B-CLIP-ViT-B-16", None)  # the release's DMCE CLIP (QuickGELU ViT-B/16)
DEFAULT_BANK_NAME = "coco"
# Bank support for a method other than CorrCLIPv2: the text-only CLIP whose text answers the main store (the
# published stores hold MetaCLIP 2.5B ViT-B/16 image embeddings); its architecture picks the store's key.
DEFAULT_BANK_CLIP = ("ViT-B-16-quickgelu", "metaclip_fullcc")
# `glaclip bank build`'s models when none are named are the release builder's (`--clip meta_b dfn_b`, `--vfm
# radiov3`, DINO ViT-B/8 for the CLIP stores' correlations): DEFAULT_BANK_CLIP, DEFAULT_AUX_CLIP,
# DEFAULT_RADIO and DEFAULT_VFM.


def bank_keys(clip: str, aux_clip: str | None, radio: str, given: dict | None = None) -> dict:
    """The keys in a bank's file names ({'main', 'aux', 'vfm'}; no 'aux' without an auxiliary CLIP): those
    `given`, else the release's names for these architectures (`BANK_MAIN_KEYS`, `BANK_AUX_KEYS`, RADIO's
    `bank_key`). A model with no release name and no given key is a GlaclipError naming the option."""
    given = {k: v for k, v in (given or {}).items() if v}
    known = {"main": BANK_MAIN_KEYS.get(clip), "vfm": RADIO_MODELS[radio].bank_key if radio in RADIO_MODELS else None}
    if aux_clip is not None:
        known["aux"] = BANK_AUX_KEYS.get(aux_clip)
    keys = {role: given.get(role) or key for role, key in known.items()}
    for role, option, model in (("main", "--clip-key", clip), ("aux", "--aux-clip-key", aux_clip),
                                ("vfm", "--vfm-key", radio)):
        if role in keys and not keys[role]:
            raise GlaclipError(f"the release names no store for {model!r}; name it with {option} KEY")
        if role in keys and not all(c.isalnum() or c in "._-" for c in keys[role]):
            raise GlaclipError(f"{option} {keys[role]!r}: a key goes into file names (letters, digits, '.', '_', '-')")
    return keys
