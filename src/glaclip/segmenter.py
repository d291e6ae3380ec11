"""The segmenter: image + class names -> per-pixel labels and class probabilities (METHOD.md 1-8).

`Segmenter` orchestrates: resize and windows (`images.py`, `windows.py`), the backbones' window
forwards and the method's family (`families.py`: per-window features -> final patch tokens), the
projection into an `ImageEncoding`, the text product with the class queries (`text.py`), stitching,
and the decision (`decision.py`: full resolution, post-processing, probabilities, labels).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any, Iterable, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config.backbones import DEFAULT_BANK_CLIP, DEFAULT_RADIO
from .config.classes import ClassQueries, ClassSpec, parse_classes
from .config.presets import Preset, bank_only_settings
from .config.protocols import effective, resolve
from .config.registry import DEFAULT_METHOD, METHODS, Method
from .errors import GlaclipError
from .io.images import ImageInput, load_image, preprocess
from .io.masks import as_masks
from .io.masks import fingerprint as region_fingerprint
from .methods.attention import accumulation_dtype
from .methods.families import Backbones, family_for
from .models.devices import dtype_name
from .models.loading import CLIP_WEIGHTS_ENV, load_towers, same_weights
from .models.radio import radio_map
from .models.towers import ClipTower, VfmTower
from .steps.decision import Segmentation, decide
from .steps.encoding import ImageEncoding
from .steps.support import bank_for, fuse, open_bank_for, support_extras, support_map
from .steps.text import text_encoder
from .steps.windows import WindowGrid, crop_masks, crop_windows, stitch, window_grid


class Segmenter:
    """GLA-CLIP, its hosts and baselines (`methods.METHODS`, run by their `families.py` strategy) over a
    frozen CLIP and, for methods with VFM attention, a frozen VFM."""

    def __init__(self, clip: ClipTower, vfm: VfmTower | None, preset: Preset | None = None, window_batch: int = 16,
                 compile: bool = False, text_cache: bool = True, progress: bool = True, sam=None, radio=None,
                 aux_clip: ClipTower | None = None, bank=None, bank_clip: ClipTower | None = None):
        """window_batch: windows per backbone forward (memory vs speed; results do not change).
        compile: run the backbones' window forwards through torch.compile (first call compiles).
        text_cache: keep query embeddings on disk across runs (`text_cache.cache_root()`); never for
        random weights. progress: a progress bar when text encoding takes more than 2 s.
        sam: `trident.SamTower` for the SAM-aggregated methods (Trident). radio: `models.radio.RadioTower`
        (CorrCLIPv2's VFM, or the bank's queries for any other method); aux_clip: the auxiliary CLIP (DMCE, text
        tower only); bank: an opened `io.bank.MemoryBank` (support fused with the logits; None: none);
        bank_clip: the CLIP whose text answers the bank's main store (text tower only; None: `clip`'s text,
        as CorrCLIPv2; it may be `clip` itself)."""
        self.clip = clip
        self.vfm = vfm
        self.sam = sam
        self.radio, self.aux_clip, self.bank, self.bank_clip = radio, aux_clip, bank, bank_clip
        if bank is not None and radio is None:
            raise GlaclipError("a memory bank needs RADIO, whose features are the bank's queries")
        self.preset = preset or resolve(DEFAULT_METHOD)
        self.preset.validate()
        self.window_batch = window_batch
        self._instance = uuid.uuid4().hex  # names this segmenter's random weights in encodings
        # The backbone forwards are the only fixed-shape, repeated work; everything else is cheap or global.
        wrap = torch.compile if compile else (lambda f: f)
        self.backbones = Backbones(clip, vfm, wrap(vfm.features) if vfm is not None else None,
                                   wrap(clip.value_tokens), wrap(clip.last_block_input), sam, radio)
        self.device = clip.visual.conv1.weight.device
        self.text = text_encoder(clip, cache=text_cache, progress=progress)
        self.aux_text = text_encoder(aux_clip, cache=text_cache, progress=progress) if aux_clip is not None else None
        self.bank_text = (self.text if bank_clip is None or bank_clip is clip else
                          text_encoder(bank_clip, cache=text_cache, progress=progress))
        self._query_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._check_grids()

    @classmethod
    def from_pretrained(cls, clip: str | None = None, clip_weights: str | None = None, vfm: str | None = None,
                        vfm_weights: str | None = None, method: str | None = None, device: str = "auto",
                        dtype: str = "auto", window_batch: int = 16, compile: bool = False,
                        dataset: str | None = None, protocol: str | None = None, text_cache: bool = True,
                        progress: bool = True, preset: Preset | None = None, sam: str | None = None,
                        sam_weights: str | None = None, radio_repo: str | None = None, aux_clip: str | None = None,
                        aux_clip_weights: str | None = None, bank: str | None = None, bank_name: str | None = None,
                        bank_encoders: dict | None = None, radio: str | None = None, radio_weights: str | None = None,
                        bank_clip: str | None = None, bank_clip_weights: str | None = None,
                        **overrides: Any) -> "Segmenter":
        """Load both models and a preset.

        clip: open_clip model name (or 'hf-hub:...', or an open_clip JSON config file); None: the method's
            default (`methods.Method.clip`, e.g. MetaCLIP ViT-B/16 for CorrCLIP), else ViT-B-16-quickgelu.
        clip_weights: a pretrained tag ('openai'), a local file, or 'random'; None -> $GLACLIP_CLIP_WEIGHTS,
            else the method's default tag when clip is None, else 'openai'.
        vfm: timm model name with tag (None: the method's, e.g. DINO ViT-B/16 for Trident, else DEFAULT_VFM);
            vfm_weights: a local file, 'random', or None -> $GLACLIP_VFM_WEIGHTS or the hub.
        sam, sam_weights: for Trident, the SAM model ('sam-vit-b', the default) and its checkpoint file
            (`segment_anything.sam_model_registry` state dict) or 'random'.
        method: a method or named preset (`glaclip presets`; None: `methods.DEFAULT_METHOD`); methods
            without VFM attention load no VFM.
        dataset, protocol: take the settings of that data set's row of the protocol table
            (`protocols.effective`; protocol None: the method's own, 'host', 'gla' or a host's name).
        vfm, vfm_weights, radio_repo: for CorrCLIPv2, RADIO's model ('c-radio_v3-l'), its checkpoint file
            and the RADIO checkout whose hub entry builds it (None: $GLACLIP_RADIO_REPO or torch.hub's cache).
        aux_clip, aux_clip_weights: CorrCLIPv2's auxiliary CLIP (DMCE; text only): None for both: no DMCE;
            weights alone: a QuickGELU ViT-B/16. bank, bank_name: a memory bank in the release's layout
            (the folder holding clip_embeddings/ and vfm_embeddings/; name default 'coco'); None: no support;
            bank_encoders: {'main': ..., 'aux': ..., 'vfm': ...} file keys for models the release never named.
        Bank support for any other method (our own, in no paper; README "Bank support for any method"): bank
            and bank_name as above; RADIO (the bank's queries) is an extra model: radio (default 'c-radio_v3-l'),
            radio_weights (its checkpoint file) and radio_repo; bank_clip, bank_clip_weights: the CLIP whose text
            answers the main store (text tower only; default MetaCLIP ViT-B-16-quickgelu / metaclip_fullcc, the
            stores' own; its architecture names the store file; the method's own CLIP is reused when both name
            the same model and weights); aux_clip as above. Region masks are then needed.
        overrides: any setting of the preset, e.g. rho=0.6, short_side=560, prob_thd=0.1.
        preset: a preset already resolved (`protocols.effective`), instead of method/dataset/protocol;
            overrides still apply on top.
        """
        bank_settings = bank_only_settings(preset.method if preset is not None else resolve(method or DEFAULT_METHOD)
                                           .method, overrides)
        if bank is None and bank_settings:
            raise GlaclipError(f"{', '.join(bank_settings)}: settings of bank support; they need a memory bank "
                               "(bank=DIR, --bank DIR)")
        if preset is None:
            preset, _ = effective(method or DEFAULT_METHOD, dataset, protocol, overrides)
        elif method is not None or dataset is not None or protocol is not None:
            raise GlaclipError("give either a preset or method/dataset/protocol, not both")
        else:
            preset = preset.with_overrides(**overrides)
            preset.validate()
        entry = METHODS[preset.method]
        if clip is None:
            clip = entry.model("clip")
            if clip_weights is None and entry.clip and not os.environ.get(CLIP_WEIGHTS_ENV):
                clip_weights = entry.clip[1]
        if not entry.needs_sam and (sam is not None or sam_weights is not None):
            raise GlaclipError(f"sam/sam_weights are models of Trident, not of method {preset.method}")
        given = {"clip": (clip, clip_weights), "vfm": (vfm, vfm_weights), "sam": (sam, sam_weights),
                 "radio": (vfm, vfm_weights)}
        wanted = {t: (given[t][0] or entry.model(t), given[t][1]) for t in entry.towers}
        files = None
        extra = {"radio": radio, "radio_weights": radio_weights, "bank_clip": bank_clip,
                 "bank_clip_weights": bank_clip_weights}
        if entry.needs_radio and any(v is not None for v in extra.values()):
            named = ", ".join(k for k, v in extra.items() if v is not None)
            raise GlaclipError(f"{named}: not for {preset.method}, whose RADIO is its VFM (vfm=, vfm_weights=) and "
                               "whose bank answers its own CLIP's text")
        if not entry.needs_radio and bank is None:
            more = dict(radio_repo=radio_repo, aux_clip=aux_clip, aux_clip_weights=aux_clip_weights,
                        bank_name=bank_name, bank_encoders=bank_encoders)
            named = [k for k, v in {**extra, **more}.items() if v is not None]
            if named:
                raise GlaclipError(f"{', '.join(named)}: options of bank support; they need a memory bank (bank=DIR)")
        reuse = False
        if bank is not None:
            if not entry.needs_radio:  # bank support of any method: RADIO and the bank's text CLIP as extra towers
                wanted["radio"] = (radio or DEFAULT_RADIO, radio_weights)
                pair = (bank_clip or DEFAULT_BANK_CLIP[0], bank_clip_weights or DEFAULT_BANK_CLIP[1])
                reuse = same_weights(pair, wanted["clip"])
                if not reuse:
                    wanted["bank_clip"] = pair
            if aux_clip is not None or aux_clip_weights is not None:
                wanted["aux_clip"] = (aux_clip or "ViT-B-16-quickgelu", aux_clip_weights)
            text_clip = wanted.get("bank_clip", wanted["clip"])[0]
            files = bank_for(bank, bank_name, text_clip, wanted["radio"][0],
                             wanted["aux_clip"][0] if "aux_clip" in wanted else None, bank_encoders)
        towers = load_towers(wanted, device, dtype, {"radio": {"radio_repo": radio_repo}})
        if reuse:
            towers["bank_clip"] = towers["clip"]
        opened = open_bank_for(files, towers) if files is not None else None
        return cls(towers["clip"], towers.get("vfm"), preset, window_batch=window_batch, compile=compile,
                   text_cache=text_cache, progress=progress, sam=towers.get("sam"), radio=towers.get("radio"),
                   aux_clip=towers.get("aux_clip"), bank=opened, bank_clip=towers.get("bank_clip"))

    def models(self) -> dict:
        """Which models (and weights) this segmenter runs; the VFM is None for CLIP-only methods."""
        vfm = {"model": self.vfm.name, "weights": self.vfm.weights} if self.vfm is not None else None
        out = {"clip": {"model": self.clip.name, "weights": self.clip.weights}, "vfm": vfm}
        for name in ("sam", "radio", "aux_clip", "bank_clip"):
            tower = getattr(self, name)
            if tower is not None:
                out[name] = {"model": tower.name, "weights": tower.weights}
        if self.bank is not None:
            out["bank"] = {"root": str(self.bank.files.root), "name": self.bank.files.name}
        return out

    def models_line(self) -> str:
        m = self.models()
        vfm = f"{m['vfm']['model']}:{m['vfm']['weights']}" if m["vfm"] else "none"
        sam = "".join(f" {k}={m[k]['model']}:{m[k]['weights']}" for k in ("sam", "radio", "aux_clip", "bank_clip")
                      if k in m)
        if "bank" in m:
            sam += f" bank={m['bank']['root']}:{m['bank']['name']}"
        return (f"clip={m['clip']['model']}:{m['clip']['weights']} vfm={vfm}{sam} device={self.device} "
                f"dtype={dtype_name(self.clip.dtype)}")

    @property
    def method(self) -> Method:
        return METHODS[self.preset.method]

    @property
    def token_patch(self) -> int:
        """Patch size of the backbone whose grid carries the tokens (the VFM's, else CLIP's)."""
        return self.vfm.patch_size if self.method.needs_vfm else self.clip.patch_size

    def grid_for(self, height: int, width: int) -> WindowGrid:
        """The windows of a (resized) image under this preset (crop 0: one window, the whole image)."""
        w = self.preset.window
        crop = w.crop or max(height, width)
        return window_grid(height, width, crop, w.stride, w.pad_multiple or self.token_patch)

    def _check_grids(self) -> None:
        if self.method.needs_vfm and self.vfm is None:
            raise GlaclipError(f"method {self.preset.method} needs a VFM; build the segmenter with one")
        self.family = family_for(self.method, self.backbones, self.preset.attention, self.window_batch)
        # Full windows must tile into patches; a padded small window that does not is floored by the
        # patch convolution (as in the released code) and its logits are resized to the padded size.
        w, p = self.preset.window, self.token_patch
        if w.crop % p:  # crop 0 (whole image) passes
            raise GlaclipError(f"crop {w.crop} must be a multiple of the patch size {p}")

    def with_preset(self, preset: Preset) -> "Segmenter":
        """A segmenter sharing these models (and text cache) with other settings."""
        other = object.__new__(Segmenter)
        other.__dict__.update(self.__dict__)
        other.preset = preset
        other.preset.validate()
        other._check_grids()
        return other

    def query_embeddings(self, queries: ClassQueries) -> torch.Tensor:
        key = queries.queries
        if key not in self._query_cache:
            self._query_cache[key] = self.text.embed(key)
        return self._query_cache[key]

    @torch.no_grad()
    def window_features(self, crops: torch.Tensor, masks: torch.Tensor | None = None, context: Any = None,
                        grid: WindowGrid | None = None) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Per-window tensors of B windows (B x 3 x h x w, CLIP-normalised; masks: their B x h x w region
        ids for mask-guided methods), `window_batch` at a time (all at once for a family that batches
        itself), and the token grid; what the tensors are is the method family's own (`families.py`)."""
        if self.family.per_image:
            if self.family.uses_context:
                return self.family.features(crops, masks, context=context, grid=grid)
            return self.family.features(crops, masks)
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, crops.shape[0], self.window_batch):
            stop = start + self.window_batch
            feats, grid_hw = self.family.features(crops[start:stop], None if masks is None else masks[start:stop])
            for name, t in feats.items():
                parts.setdefault(name, []).append(t)
        return {name: torch.cat(ts) for name, ts in parts.items()}, grid_hw

    def final_tokens(self, feats: dict[str, torch.Tensor], grid: WindowGrid, grid_hw: tuple[int, int],
                     context: Any = None) -> torch.Tensor:
        """One image's window features -> its N x D final patch tokens (the attention of step 5);
        context: what the family's `prepare` gave for the image (Trident: its SAM state)."""
        if context is None:
            return self.family.final_tokens(feats, grid, grid_hw)
        return self.family.final_tokens(feats, grid, grid_hw, context)

    def encoding_identity(self) -> dict:
        """What an image encoding depends on: models (weights), precision, method, window and
        attention settings (the decision settings apply after the text product and may differ)."""
        towers = (self.clip, self.vfm, self.sam, self.radio, self.aux_clip, self.bank_clip)
        models = ImageEncoding.model_identity(*towers)  # by content
        if "random" in (t.weights for t in towers if t is not None):
            models["random_weights_of"] = self._instance  # random weights: this segmenter's own only
        if self.bank is not None:
            models["bank"] = {"name": self.bank.files.name, "content": self.bank.fingerprint()}
        p = self.preset
        return json.loads(json.dumps({"models": models, "dtype": dtype_name(self.clip.dtype),
                                      "method": p.method, "window": dataclasses.asdict(p.window),
                                      "attention": {k: v for k, v in dataclasses.asdict(p.attention).items()
                                                    if k not in ("block_rows", "memory_mb")}}))

    @torch.no_grad()
    def encode_image(self, image: ImageInput, masks: MaskInput | None = None) -> ImageEncoding:
        """Everything before the text product (steps 1-5 and the projection), to be answered with
        `predict(encoding, classes)` for any number of class lists. masks: the image's H x W region-id
        map (0: covered by no mask), needed by mask-guided methods and by map correction."""
        path = str(image) if isinstance(image, (str, os.PathLike)) else None
        enc = self._encode_one(image, masks)
        enc.image_path = path
        return enc

    def _encode_one(self, image: ImageInput, masks: MaskInput | None) -> ImageEncoding:
        """`encode_images` for one image; a mask map of another size says how it stands to the image's
        EXIF rotation."""
        from .io.masks import MaskSizeError

        rgb = load_image(image)
        try:
            return self.encode_images([rgb], masks=[masks])[0]
        except MaskSizeError as exc:
            from .io.masks import exif_note

            raise GlaclipError(f"{exc}{exif_note(image, exc.shape, rgb.shape[:2])}") from None

    @property
    def needs_masks(self) -> bool:
        """Whether this segmenter reads region masks: its method (CorrCLIP), its decision (mask_vote) or its
        memory bank's support (the bank's queries are regions)."""
        return self.preset.reads_masks or self.bank is not None

    def describe(self) -> str:
        """The preset's line (`Preset.describe`), with bank support's settings when a bank is fused."""
        return self.preset.describe(bank=self.bank is not None)

    @torch.no_grad()
    def encode_images(self, rgbs: list[np.ndarray], max_windows: int | None = None,
                      masks: list[MaskInput | None] | None = None) -> list[ImageEncoding]:
        """`encode_image` of several images, the windows of consecutive images of one window size
        sharing backbone forwards (up to max_windows, default 4 x window_batch, at a time); the
        attention stays per image. masks: one region-id map (or None) per image."""
        w = self.preset.window
        acc = accumulation_dtype(self.clip.dtype)
        masks = list(masks) if masks is not None else [None] * len(rgbs)
        if len(masks) != len(rgbs):
            raise GlaclipError(f"got {len(masks)} mask maps for {len(rgbs)} images")
        prepared = []
        for rgb, m in zip(rgbs, masks):
            m = None if m is None else as_masks(m, rgb.shape[:2])
            if m is None and self.method.needs_masks:
                raise GlaclipError(f"method {self.preset.method} needs region masks: give masks=... (an H x W id "
                                   "map), --masks DIR or --sam NAME")
            if m is None and self.bank is not None:
                raise GlaclipError("bank support needs region masks (the bank's queries are regions): give masks=... "
                                   "(an H x W id map), --masks DIR or --sam NAME")
            x = preprocess(rgb, w.short_side, w.max_long_side, acc, self.method.pixel_norm)
            x, context = self.family.prepare(rgb, x, w)
            support = None
            if self.bank is not None:
                # the bank's queries: CorrCLIPv2's own RADIO map, else RADIO's map of the image at the resized size
                feats = self.family.support_features(context)
                if feats is None:
                    feats = radio_map(self.radio, rgb, tuple(x.shape[-2:]), self.clip.dtype)
                support = support_extras(self.bank, feats, resize_masks(m, (x.shape[2], x.shape[3]))[0],
                                         self.preset.attention.num_support)
            prepared.append((rgb.shape[:2], x, self.grid_for(x.shape[2], x.shape[3]), m, context, support))
        limit = max_windows or 4 * self.window_batch
        identity = self.encoding_identity()
        out = []
        i = 0
        while i < len(prepared):
            j, total = i + 1, prepared[i][2].count
            while (not self.family.per_image and j < len(prepared) and
                   prepared[j][2].padded_size == prepared[i][2].padded_size and total + prepared[j][2].count <= limit):
                total += prepared[j][2].count
                j += 1
            crops = torch.cat([crop_windows(x.to(self.device), grid) for _, x, grid, _, _, _ in prepared[i:j]])
            window_masks = None
            if self.method.needs_masks:
                window_masks = torch.cat([crop_masks(resize_masks(m, (x.shape[2], x.shape[3])), grid,
                                                     self.family.mask_pad_id)
                                          for _, x, grid, m, _, _ in prepared[i:j]]).to(self.device)
            feats, (gh, gw) = (self.window_features(crops, window_masks, prepared[i][4], prepared[i][2])
                               if self.family.uses_context else self.window_features(crops, window_masks))
            offset = 0
            for size, x, grid, m, context, support in prepared[i:j]:
                mine = {k: v[offset : offset + grid.count] for k, v in feats.items()}
                offset += grid.count
                final = self.final_tokens(mine, grid, (gh, gw), context)
                enc_grid, shape = self.family.layout(grid, (gh, gw), context)
                emb = F.normalize(self.family.embed(final).to(acc), dim=-1).view(*shape, -1)
                ident = (dict(identity, masks=region_fingerprint(m)) if self.method.needs_masks or self.bank is not None
                         else identity)
                extras = self.family.extras(context)
                if support is not None:
                    extras = {**(extras or {}), **support}
                out.append(ImageEncoding(emb, enc_grid, tuple(size), x, ident, masks=m, extras=extras))
            i = j
        return out

    def check_encoding(self, enc: ImageEncoding, masks: MaskInput | None = None) -> None:
        """Refuse an encoding made with other models, method or settings (or, for mask-guided methods,
        other region masks than `masks` when given)."""
        mine = self.encoding_identity()
        theirs = {k: v for k, v in enc.identity.items() if k != "masks"}
        if theirs != mine:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise GlaclipError(f"this image encoding differs from this segmenter in: {', '.join(differ)}; encode the "
                               "image again with this segmenter")
        enc.with_masks(masks)

    def _text_of(self, role: str, encoder, queries: ClassQueries, like: torch.Tensor) -> torch.Tensor:
        """Query embeddings of another CLIP's text tower (auxiliary, bank), cached beside the main ones."""
        key = (f"\0{role}",) + queries.queries
        if key not in self._query_cache:
            self._query_cache[key] = encoder.embed(queries.queries)
        return self._query_cache[key].to(like.device, like.dtype)

    def canvas(self, enc: ImageEncoding, queries: ClassQueries) -> torch.Tensor:
        """The text product of an encoding: logits Q x h x w stitched on the resized image (or on the
        token grid for whole-image inference), before the final resize; with a memory bank, the bank's
        support fused in (at the resized size; for other methods than CorrCLIPv2 on one token map, on
        that map: README "Bank support for any method")."""
        text = self.query_embeddings(queries).to(enc.embeddings.device, enc.embeddings.dtype)
        logits = (enc.embeddings @ text.T).permute(0, 3, 1, 2)
        support = self.bank is not None and bool(enc.extras) and "support_ids" in enc.extras
        one_map = self.family.single_map or (self.preset.window.crop == 0 and not any(enc.grid.pad))
        if one_map and (self.bank is None or not self.method.needs_radio):
            # one token map (whole image, or Trident's SAM grid): straight to the original (CorrCLIPv2 with a
            # bank stitches it on the resized image first, as its release)
            canvas = logits[0]
        else:
            canvas = stitch(logits, enc.grid)
        if support:
            # the main store answers the bank CLIP's text (CorrCLIPv2, or the method's own CLIP reused: `text`)
            texts = {"main": text if self.bank_text is self.text else self._text_of("bank", self.bank_text, queries,
                                                                                      text)}
            if self.aux_text is not None and self.preset.decision.use_aux:
                texts["aux"] = self._text_of("aux", self.aux_text, queries, text)
            ids = resize_masks(enc.masks, (enc.grid.height, enc.grid.width))[0]  # the map the queries came from
            if tuple(ids.shape) != tuple(canvas.shape[-2:]):  # one token map: each cell its region, nearest
                ids = resize_masks(ids, tuple(canvas.shape[-2:]))[0]
            support = support_map(self.bank, enc.extras["support_regions"], enc.extras["support_ids"], ids, texts)
            canvas = fuse(canvas, support, self.preset.decision.bank_alpha)
        return canvas

    def predict(self, image: ImageInput, classes: Iterable[ClassSpec] | str | ClassQueries,
                prob_thd: float | None = None, masks: MaskInput | None = None) -> Segmentation:
        """Segment one image into the given classes.

        image: path, PIL image, HxWx3 uint8 array, tensor (floats in [0, 1]), or an ImageEncoding
        from `encode_image` (then only the text product and the decision run). classes: names,
        synonym lists, or one string in the class syntax ("sky, car; vehicle, road": commas or
        newlines separate classes, ';' synonyms). prob_thd (default: the preset's): pixels whose top
        class probability is below it get index 0, so put a background class first when using it.
        masks: the image's H x W integer region-id map at its original size (0: covered by no mask),
        needed by mask-guided methods (CorrCLIP) and by map correction (`mask_vote`).
        """
        queries = classes if isinstance(classes, ClassQueries) else parse_classes(classes)
        preset = self.preset if prob_thd is None else self.preset.with_overrides(prob_thd=prob_thd)
        if isinstance(image, ImageEncoding):
            self.check_encoding(image)
            enc = image.with_masks(masks)
        else:
            enc = self._encode_one(image, masks)
        return self._decide(enc, queries, preset)

    def predict_many(self, images: list[ImageInput], classes: Iterable[ClassSpec] | str | ClassQueries,
                     prob_thd: float | None = None, max_windows: int | None = None,
                     masks: list[MaskInput | None] | None = None) -> list[Segmentation]:
        """`predict` for several images, their windows sharing backbone forwards (same results);
        masks: one region-id map (or None) per image."""
        queries = classes if isinstance(classes, ClassQueries) else parse_classes(classes)
        preset = self.preset if prob_thd is None else self.preset.with_overrides(prob_thd=prob_thd)
        encs = self.encode_images([load_image(im) for im in images], max_windows, masks)
        return [self._decide(enc, queries, preset) for enc in encs]

    def _decide(self, enc: ImageEncoding, queries: ClassQueries, preset: Preset) -> Segmentation:
        if preset.decision.mask_vote and enc.masks is None:
            raise GlaclipError(f"mask_vote (map correction, on for {preset.method}) needs region masks: give "
                               "masks=..., --masks DIR or --sam NAME, or set mask_vote=false")
        seg = decide(self.canvas(enc, queries), enc.resized, enc.size, queries, preset, enc.masks)
        return self.family.refine(seg, enc, preset)


MaskInput = Union[np.ndarray, torch.Tensor]


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """H x W ids -> 1 x h x w: nearest neighbour on the resized image (as the release: F.interpolate of floats)."""
    return F.interpolate(masks[None, None].float(), size=size, mode="nearest")[0].to(torch.int32)
