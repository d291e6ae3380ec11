"""Trident's SAM prompt refinement (official code: seg_utils/utils.py sam_refinement), on the labels
and class probabilities of the decision.

  1. labels and probabilities at half resolution (nearest / bilinear); with coarse_thresh > 0 the
     pixels whose top probability is below it leave every class;
  2. per class whose top probability reaches coarse_thresh: its 8-connected components of at least
     `minimal_area` pixels (`components`), each giving a box, its peak point and, per class, one
     mask prompt (the class's probabilities at SAM's 256 mask resolution, times `sam_mask_coff`
     where above coarse_thresh, else 0) (`class_prompts`);
  3. SAM's decoder on the prompts (single mask); masks whose predicted IoU exceeds
     `sam_iou_thresh` are kept, the others' components noted as failed;
  4. per class, the max over its kept masks of sigmoid(mask logit) x the class probability inside
     the union of its masks; labels = argmax of these, the decision's label where all are 0; the
     failed components take the class probabilities where those are higher (`merge`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..models.sam import sam_size

DOWN = 2  # the release splits components at half resolution


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of an H x W bool mask, in raster order of their first pixel."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [labelled == i for i in range(1, n + 1)]


def coarse_regions(labels: torch.Tensor, probs: torch.Tensor, coarse_thresh: float, minimal_area: int
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Half-resolution labels (h x w) and probabilities (C x h x w) -> {class: (regions R x h x w uint8,
    boxes R x 4 (x1, y1, x2, y2), peak points R x 2 (x, y))} for the classes with components."""
    from torchvision.ops import masks_to_boxes

    c = probs.shape[0]
    labels = labels.clone()
    if coarse_thresh > 0:
        labels[probs.max(dim=0)[0] < coarse_thresh] = c  # an extra class, never split
    out = {}
    for k in range(c):
        logit = probs[k]
        if logit.max() < coarse_thresh:
            continue
        regions, points = [], []
        for region in components((labels == k).cpu().numpy()):
            if region.sum() < minimal_area:
                continue
            peak = torch.argmax(logit * torch.from_numpy(region).to(logit.device, logit.dtype))
            points.append(torch.stack([peak % logit.shape[1], peak // logit.shape[1]]))
            regions.append(region.astype(np.uint8))
        if regions:
            stacked = torch.from_numpy(np.stack(regions))
            out[k] = (stacked, masks_to_boxes(stacked), torch.stack(points))
    return out


def mask_prompt(prob: torch.Tensor, size: tuple[int, int], transform, coarse_thresh: float, coff: float
                ) -> torch.Tensor:
    """One class's half-resolution probabilities -> its 1 x 256 x 256 mask prompt: resized bilinearly
    to the original image's size at long side 256, zero-padded, coff x value where above coarse_thresh."""
    nh, nw = transform.get_preprocess_shape(size[0], size[1], 256)
    r = F.interpolate(prob[None, None], [nh, nw], mode="bilinear", align_corners=False)[0]
    r = F.pad(r, (0, 256 - nw, 0, 256 - nh), mode="constant", value=0)
    return torch.where(r > coarse_thresh, coff * r, torch.zeros_like(r))


def sam_refinement(labels: torch.Tensor, probs: torch.Tensor, predictor, coarse_thresh: float, minimal_area: int,
                   coff: float, iou_thresh: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """labels H x W (int64) and class probabilities C x H x W of the decision, a SamPredictor with the
    image set -> (refined labels H x W, the refined per-class scores C x H x W, or None when no
    prompt passed the IoU threshold and nothing changed)."""
    c, h, w = probs.shape
    dh, dw = h // DOWN, w // DOWN
    if min(dh, dw) == 0:  # an image of 1 pixel's height or width: nothing to split (the release fails)
        return labels, None
    dev, dt = predictor.device, predictor.features.dtype
    labels_d = F.interpolate(labels[None, None].float(), [dh, dw], mode="nearest")[0, 0].long()
    probs_d = F.interpolate(probs[None], [dh, dw], mode="bilinear", align_corners=False)[0]
    regions = coarse_regions(labels_d, probs_d, coarse_thresh, minimal_area)
    kept, failed = [], []
    for k, (reg, boxes, points) in regions.items():
        prompt = mask_prompt(probs_d[k], (h, w), predictor.transform, coarse_thresh, coff).to(dev, dt)
        b = predictor.transform.apply_boxes_torch(boxes.long(), [dh, dw]).to(dev, dt)
        p = predictor.transform.apply_coords_torch(points.long(), [dh, dw]).unsqueeze(1).to(dev, dt)
        masks, scores, logits = predictor.predict_torch(point_coords=p, point_labels=torch.ones(
            p.shape[0], 1, device=dev, dtype=dt), boxes=b, mask_input=prompt, multimask_output=False)
        valid = (scores > iou_thresh).squeeze(-1).cpu()
        if not bool(valid.all()):
            failed.append(reg[~valid])
        if valid.any():
            kept.append((k, logits[valid.to(logits.device)]))
    if not kept:
        return labels, None
    low = torch.cat([lg for _, lg in kept])
    up = predictor.model.postprocess_masks(low, predictor.input_size, predictor.original_size)
    if tuple(up.shape[-2:]) != (h, w):
        up = F.interpolate(up, (h, w), mode="bilinear", align_corners=False)
    masks = up > predictor.model.mask_threshold
    soft = up.sigmoid()
    probs = probs.to(dev)
    scores = torch.zeros(c, h, w, dtype=probs.dtype, device=dev)
    at = 0
    for k, lg in kept:
        n = lg.shape[0]
        union = masks[at : at + n, 0].sum(dim=0).bool()
        best = (soft[at : at + n, 0] * probs[k]).max(dim=0).values
        scores[k] = best * union
        at += n
    labels = labels.to(dev)
    refined = scores.argmax(dim=0)
    refined = torch.where(scores.sum(dim=0) == 0, labels, refined)
    if failed:
        area = F.interpolate(torch.cat(failed).to(dev)[None].float(), (h, w), mode="nearest")[0].sum(dim=0) != 0
        fallback = area * probs
        scores = torch.where(fallback > scores, fallback, scores)
        refined = torch.where(fallback.max(dim=0)[0] > scores.max(dim=0)[0], labels, refined)
    return refined, scores


def refine_segmentation(seg, enc, sam, decision):
    """A Segmentation of a Trident encoding -> the same with refined labels (`sam_refinement`, with the
    encoding's SAM image embedding); `probs` stay the decision's, the refined scores go to
    `seg.extras["sam_scores"]` (absent when nothing changed)."""
    predictor = sam.predictor()
    features = enc.extras["sam_features"]
    predictor.features = features.to(sam.decoder_dtype)
    th, tw = sam_size(*enc.size)
    predictor.original_size = (th, tw)
    predictor.input_size = predictor.transform.get_preprocess_shape(th, tw, predictor.transform.target_length)
    predictor.is_image_set = True
    probs = torch.from_numpy(np.ascontiguousarray(seg.probs))
    acc = torch.float64 if sam.decoder_dtype == torch.float64 else torch.float32
    labels, scores = sam_refinement(torch.from_numpy(seg.labels), probs.to(acc), predictor, decision.coarse_thresh,
                                    decision.minimal_area, decision.sam_mask_coff, decision.sam_iou_thresh)
    seg.labels = labels.cpu().numpy().astype(np.int64)
    if scores is not None:
        seg.extras["sam_scores"] = scores.cpu().numpy()
    return seg
