"""Naive restatements of Trident's formulas as its release computes them (whole tensors, the release's
loop structure and shapes), to test `glaclip.methods.trident` and `glaclip.methods.trident_refine` against."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F


def clip_input(image, stride=16, crop=336):
    h, w = image.shape[2:]
    longer = max(h, w)
    if h % stride == 0 and w % stride == 0:
        return image
    dst = (longer // stride + 1) * stride if longer % stride else longer
    nh, nw = int(h * dst / longer), int(w * dst / longer)
    if nh % stride:
        nh = (nh // stride + 1) * stride
    if nw % stride:
        nw = (nw // stride + 1) * stride
    return F.interpolate(image, (max(nh, crop), max(nw, crop)), mode="bilinear", align_corners=False)


def windows(img, stride, crop, patch=16):
    """(crops, patch-unit coords (y1, x1, y2, x2), (rows, cols))."""
    _, _, h, w = img.shape
    hg = max(h - crop + stride - 1, 0) // stride + 1
    wg = max(w - crop + stride - 1, 0) // stride + 1
    crops, locs = [], []
    for i in range(hg):
        for j in range(wg):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crops.append(img[:, :, y1:y2, x1:x2])
            locs.append(torch.tensor([y1 // patch, x1 // patch, y2 // patch, x2 // patch]))
    return torch.cat(crops), locs, (hg, wg)


def custom_attn(v_tokens, ex_feats, token_size, beta=1.2, gamma=3.0):
    """v_tokens: B x L x D CLIP values (heads side by side); ex_feats B x C x H x W -> B x HW x D (before out_proj)."""
    b, _, d = v_tokens.shape
    _, _, hh, ww = ex_feats.shape
    qk = F.normalize(ex_feats.flatten(2, 3), dim=1)
    sim = torch.einsum("bcm,bcn->bmn", qk, qk)
    sim = (sim - torch.mean(sim) * beta) * gamma
    sim[sim < 0.0] = float("-inf")
    weights = F.softmax(sim, dim=-1)
    v = v_tokens.transpose(1, 2).reshape(b, d, *token_size)
    v = F.interpolate(v, size=(hh, ww), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    return torch.bmm(weights, v)


def splice(x, coords, win, dst_vh, dst_vw, vfm_size, token_size):
    """x: B x L x D window tokens on the VFM grid -> 1 x D x Hc x Wc canvas, as guidance_attn."""
    b, _, d = x.shape
    v_img = x.transpose(1, 2).reshape(b, d, *vfm_size)
    if v_img.shape[-1] % token_size[1] != 0:
        ratio = int(round(vfm_size[0] / token_size[0]))
        v_img = F.interpolate(v_img, size=(token_size[0] * ratio, token_size[1] * ratio), mode="bilinear",
                              align_corners=False)
    else:
        ratio = v_img.shape[-1] // token_size[1]
    dst = x.new_zeros(1, d, dst_vh * ratio, dst_vw * ratio)
    count = x.new_zeros(1, 1, dst_vh * ratio, dst_vw * ratio)
    for i in range(win[0]):
        for j in range(win[1]):
            c = coords[i * win[1] + j]
            dst[0, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += v_img[i * win[1] + j]
            count[:, :, c[0] * ratio : c[2] * ratio, c[1] * ratio : c[3] * ratio] += 1
    return dst / count


def sam_attention(attn_module, x):
    """The vendored SAM Attention's kept tensors: x (1 x H x W x C, the block's normed input) ->
    (softmax attention 1 x heads x HW x HW, v 1 x heads x H x W x hd), all heads at once."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    b, h, w, _ = x.shape
    heads = attn_module.num_heads
    qkv = attn_module.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    attn = (q * attn_module.scale) @ k.transpose(-2, -1)
    if attn_module.use_rel_pos:
        attn = add_decomposed_rel_pos(attn, q, attn_module.rel_pos_h, attn_module.rel_pos_w, (h, w), (h, w))
    attn = attn.softmax(dim=-1)
    return attn.view(b, heads, h * w, h * w), v.view(b, heads, h, w, -1)


def sam_feat(attn, v, grid, valid):
    """Crop as get_sam_feat: attention 1 x heads x Nv x Nv, v 1 x heads x hv x wv x hd."""
    hv, wv = valid
    heads = attn.shape[1]
    a = attn.view(1, heads, grid, grid, grid, grid)[:, :, :hv, :wv, :hv, :wv].flatten(2, 3).flatten(3, 4)
    return a, v[:, :, :hv, :wv, :]


def get_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos=True):
    sam_v = F.normalize(sam_v.flatten(2, 3), dim=-1)
    sim = torch.einsum("bhmc,bhnc->bhmn", sam_v, sam_v)
    thr = cos_fac * sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        thr = torch.where(thr < 0.0, 0.6, thr)
    thr = torch.where(thr > 0.9, 0.9, thr)
    kept = torch.where(sim > thr, sam_attn, torch.zeros_like(sam_attn)).mean(dim=1)
    return (kept / kept.sum(dim=-1, keepdim=True)).unsqueeze(0).repeat(1, heads, 1, 1)


def guidance(canvas, sam_attn, sam_v, cos_fac, heads, refine_neg_cos=True):
    """1 x D x Hc x Wc canvas -> Nv x D aggregated tokens."""
    d = canvas.shape[1]
    dst = F.interpolate(canvas, size=(sam_v.shape[2], sam_v.shape[3]), mode="bilinear", align_corners=False)
    w = get_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos)
    dst = dst.view(1, heads, d // heads, -1).permute(0, 1, 3, 2)
    return torch.matmul(w, dst).permute(2, 0, 1, 3).flatten(1)


# ------------------------------------------------------------------------------------ refinement


def label8(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labelling by breadth-first search in raster order (skimage.measure.label's order)."""
    out = np.zeros(mask.shape, dtype=np.int64)
    n = 0
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not out[y, x]:
                n += 1
                out[y, x] = n
                todo = deque([(y, x)])
                while todo:
                    a, b = todo.popleft()
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            yy, xx = a + dy, b + dx
                            if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not out[yy, xx]:
                                out[yy, xx] = n
                                todo.append((yy, xx))
    return out, n


def split_connected_regions(segmentation, seg_logits, split_last=False, minimal_area=0, coarse_thresh=0.0):
    from torchvision.ops import masks_to_boxes

    c_all = segmentation.shape[0]
    regions, boxes, points = {}, {}, {}
    for c in range(c_all):
        if not split_last and c == c_all - 1:
            continue
        regions[c], points[c], boxes[c] = [], [], []
        logit = seg_logits[c]
        if logit.max() < coarse_thresh:
            continue
        lab, n = label8(segmentation[c] > 0)
        for r in range(1, n + 1):
            m = (lab == r).astype(np.uint8)
            if m.sum() < minimal_area:
                continue
            pos = torch.argmax(logit * torch.tensor(m))
            points[c].append(torch.tensor([pos % logit.size(1), pos // logit.size(1)]))
            regions[c].append(m)
        if len(regions[c]):
            regions[c] = torch.from_numpy(np.stack(regions[c]))
        boxes[c] = regions[c] if isinstance(regions[c], list) else masks_to_boxes(regions[c])
    return regions, boxes, points


def sam_refinement(seg_pred, seg_logits, num_classes, predictor, img_shape, coarse_thresh, minimal_area, coff, iou):
    """seg_pred 1 x H x W long, seg_logits C x H x W -> (labels 1 x H x W, scores or None), as the release."""
    dt = predictor.features.dtype
    dh, dw = seg_logits.shape[-2] // 2, seg_logits.shape[-1] // 2
    seg_d = F.interpolate(seg_pred.unsqueeze(0).double(), [dh, dw], mode="nearest").squeeze(0).long()
    log_d = F.interpolate(seg_logits.unsqueeze(0), [dh, dw], mode="bilinear", align_corners=False).squeeze(0)
    if coarse_thresh > 0:
        seg_d[log_d.max(0, keepdim=True)[0] < coarse_thresh] = num_classes
        pred = F.one_hot(seg_d.squeeze(0), num_classes=num_classes + 1).permute(2, 0, 1).float()
        split_last = False
    else:
        pred = F.one_hot(seg_d.squeeze(0), num_classes=num_classes).permute(2, 0, 1).float()
        split_last = True
    regions, boxes, points = split_connected_regions(pred.numpy(), log_d, split_last, minimal_area, coarse_thresh)
    masks_l, logits_l, failed = [], [], []
    for i in range(num_classes):
        r, b, p = regions.get(i, []), boxes.get(i, []), points.get(i, [])
        if isinstance(r, list):
            continue
        nh, nw = predictor.transform.get_preprocess_shape(img_shape[0], img_shape[1], 256)
        m = F.interpolate(log_d[i][None, None], [nh, nw], mode="bilinear", align_corners=False).squeeze(0)
        m = F.pad(m, (0, 256 - nw, 0, 256 - nh), mode="constant", value=0)
        m = torch.where(m > coarse_thresh, coff * m, torch.tensor(0.0).type_as(seg_pred)).to(dt)
        bb = predictor.transform.apply_boxes_torch(b.type_as(seg_pred), [dh, dw]).to(dt)
        pp = predictor.transform.apply_coords_torch(torch.stack(p).type_as(seg_pred), [dh, dw]).unsqueeze(1).to(dt)
        mk, sc, lg = predictor.predict_torch(point_coords=pp, point_labels=torch.ones(pp.shape[0], 1, dtype=dt),
                                             boxes=bb, mask_input=m, multimask_output=False)
        valid = (sc > iou).squeeze(-1)
        if valid.sum() != r.shape[0]:
            failed.append(r[~valid])
        if valid.sum() == 0:
            boxes[i] = []
            continue
        masks_l.append(mk[valid])
        logits_l.append(lg[valid])
        boxes[i] = boxes[i][valid]
    if not masks_l:
        return seg_pred, None
    logits = predictor.model.postprocess_masks(torch.cat(logits_l), predictor.input_size, predictor.original_size)
    masks = torch.cat(masks_l)
    if logits.shape[-2:] != tuple(img_shape):
        logits = F.interpolate(logits, img_shape, mode="bilinear", align_corners=False)
        masks = logits > predictor.model.mask_threshold
    soft = logits.sigmoid()
    whole = torch.zeros(len(boxes), *img_shape, dtype=seg_logits.dtype)
    at = 0
    for i in range(len(boxes)):
        if isinstance(boxes[i], list):
            continue
        n = boxes[i].shape[0]
        whole[i] = (soft[at : at + n, 0] * seg_logits[i]).max(dim=0).values * masks[at : at + n, 0].sum(0).bool()
        at += n
    refined = whole.argmax(0, keepdim=True)
    refined = torch.where(whole.sum(dim=0, keepdim=True) == 0, seg_pred, refined)
    if failed:
        fr = F.interpolate(torch.cat(failed).unsqueeze(0).float(), img_shape, mode="nearest").squeeze(0).long()
        area = fr.sum(dim=0, keepdim=True) != 0
        fl = area * seg_logits
        whole = torch.where(fl > whole, fl, whole)
        refined = torch.where(fl.max(0, keepdim=True)[0] > whole.max(0, keepdim=True)[0], seg_pred, refined)
    return refined, whole
