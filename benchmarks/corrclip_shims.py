"""What benchmarks/corrclip_release.py puts around CorrCLIP's release beyond release_common.py (mmseg's
input pipeline, the mmseg / mmengine / openpyxl stand-ins, the fp16 patch): a transformers stub and
the modules the release's folder shadows. See corrclip_release.py's docstring for the whole list.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from release_common import framework_stubs, imported_release

SHADOWED = ("open_clip", "sam2", "eomt", "CropFormer", "prompts", "myutils", "corrclip_segmentor", "utils",
            "vision_transformer", "mmseg", "mmengine", "transformers", "openpyxl")


class _Unavailable:
    """transformers' Mask2Former classes (its optional EntitySeg path): refuse to be built."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("stub: not available in this harness")

    from_pretrained = classmethod(lambda cls, *a, **k: cls())


@contextlib.contextmanager
def release_imports(release_dir: str | Path, dino_repo: str | Path):
    """Import corrclip_segmentor from release_dir with the framework stubs (and transformers'), DINO's
    vision_transformer from dino_repo; yields (corrclip_segmentor, vision_transformer). Restores
    sys.path, sys.modules and os.environ on exit."""
    stubs = framework_stubs({"transformers": {"AutoImageProcessor": _Unavailable,
                                              "Mask2FormerForUniversalSegmentation": _Unavailable}})
    with imported_release(release_dir, dino_repo, "corrclip_segmentor", SHADOWED, stubs) as (seg, vit):
        yield seg, vit
