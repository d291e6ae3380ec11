"""Adapters from glaclip's public API to the tools people label and inspect data with.

Each module is a thin layer over `Segmenter.from_pretrained` / `predict` behind an optional extra:
`supervision` (`glaclip[supervision]`), `pipeline` (the Hugging Face image-segmentation shape, no
extra), `cvat` (`glaclip[cvat]`), `fiftyone` (`glaclip[fiftyone]`), `labelstudio` (an ML backend server,
`glaclip[labelstudio]`). Importing this package imports none of those tools.
"""

from ..errors import require

__all__ = ["require"]
