"""glaclip's SAM 2 region maps against the CorrCLIP release's own copy of sam2: same weights, same image, CPU.

    python benchmarks/masks_release.py --release-src PATH/CorrCLIP/CorrCLIPv1 [--sam-weights FILE] [--size 96x128]

The release side runs in a fresh process with CorrCLIPv1/ first on sys.path (its vendored `sam2`), builds
the model from the same config, loads the same state dict, runs sam2's automatic mask generator with the
release's settings (corrclip_segmentor.py set_mask_generator) and paints the masks by ascending area (its
generate_mask). Default weights: sam2-hiera-tiny, random (seed 0), with the output hypernetworks' last layers
shifted and scaled as in tests/test_regions.py, so that some masks pass the thresholds (unchanged random
weights give none, and two empty maps prove nothing). Prints the ids of both maps and the differing pixels.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import parse_size


def release_side(src: str, config: str, weights: str, image: str, out: str) -> None:
    """Runs in the child: the release's sam2, its settings, its painting order."""
    sys.path.insert(0, src)
    import warnings

    import torch

    warnings.simplefilter("ignore")
    import sam2

    if not sam2.__file__.startswith(src):
        raise SystemExit(f"sam2 came from {sam2.__file__}, not from {src}")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    model = build_sam2(config, None, device="cpu", apply_postprocessing=False)
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(sd.get("model", sd))
    gen = SAM2AutomaticMaskGenerator(model=model, points_per_side=8, pred_iou_thresh=0.4,
                                     stability_score_thresh=0.4, multimask_output=False)
    img = np.load(image)
    with torch.inference_mode():
        anns = gen.generate(img)
    painted = np.zeros(img.shape[:2], dtype=np.int64)
    for k, ann in enumerate(sorted(anns, key=lambda a: a["area"]), start=1):
        painted[ann["segmentation"]] = k
    np.save(out, painted)


def test_image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (40, 90, 160)
    img[h // 8 : h * 5 // 8, w // 10 : w // 2] = (220, 30, 30)
    img[h // 2 : h * 15 // 16, w * 2 // 5 : w * 9 // 10] = (30, 200, 60)
    img[h // 12 : h // 3, w * 3 // 5 : w * 7 // 8] = 250
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release-src", required=True, help="the release's CorrCLIPv1 folder (holds its sam2/)")
    ap.add_argument("--sam", default="sam2-hiera-tiny")
    ap.add_argument("--sam-weights", help="a checkpoint file (default: nudged random weights, see above)")
    ap.add_argument("--size", default="96x128", help="HxW of the synthetic test image")
    a = ap.parse_args()
    import torch

    from glaclip.config.backbones import SAM2_MODELS
    from glaclip.models.sam2 import load_sam2

    tmp = Path(tempfile.mkdtemp(prefix="glaclip-masks-release-"))
    if a.sam_weights:
        sam, weights = load_sam2(a.sam, a.sam_weights, device="cpu"), a.sam_weights
    else:
        torch.manual_seed(0)
        sam = load_sam2(a.sam, "random", device="cpu")
        with torch.no_grad():
            for mlp in sam.model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].bias.sub_(0.09)
                mlp.layers[-1].weight.mul_(100)
                mlp.layers[-1].bias.mul_(100)
        weights = str(tmp / "weights.pt")
        torch.save({"model": sam.model.state_dict()}, weights)
    img = test_image(*parse_size(a.size))
    np.save(tmp / "image.npy", img)
    ours = sam.generate(img)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from masks_release import release_side; "
            f"release_side({str(Path(a.release_src).resolve())!r}, {SAM2_MODELS[a.sam].config!r}, {weights!r}, "
            f"{str(tmp / 'image.npy')!r}, {str(tmp / 'release.npy')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp)
    theirs = np.load(tmp / "release.npy")
    print(f"glaclip ids {np.unique(ours).tolist()}, release ids {np.unique(theirs).tolist()}, "
          f"differing pixels {int((ours != theirs).sum())} of {ours.size}")


if __name__ == "__main__":
    main()
