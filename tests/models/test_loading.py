"""Fast loading (meta build + assigned tensors) against a plain build with the weights copied in."""

import logging

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from glaclip.models import loading as models
from glaclip.models.checkpoints import build
from glaclip.models.loading import clip_checkpoint, load_clip, load_vfm


def _tensors(module):
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}  # non-persistent buffers too


def _identical(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].device.type == "cpu" and ta[k].dtype == tb[k].dtype, k
        assert ta[k].is_contiguous() == tb[k].is_contiguous(), k
        assert torch.equal(ta[k], tb[k]), k
    assert {k for k, _ in a.named_parameters()} == {k for k, _ in b.named_parameters()}


def _plain_clip(arch, sd):
    model = open_clip.create_model(arch, load_weights=False, pretrained_text=False)
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False)  # as the loader freezes it (MHA takes its fast path then)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_clip_file_equals_plain_build(tiny_files, tmp_path, dtype):
    sd = {k: v.to(dtype) for k, v in torch.load(tiny_files["clip_weights"]).items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "clip.safetensors")
    torch.save(sd, tmp_path / "clip.pt")
    arch = models._resolve_clip_name(tiny_files["clip"])
    plain = _plain_clip(arch, sd)  # copies fp16 weights into fp32 parameters
    for f in ("clip.safetensors", "clip.pt"):
        tower = load_clip(tiny_files["clip"], str(tmp_path / f), device="cpu", dtype="fp32")
        _identical(tower.model, plain)
        x, text = torch.randn(2, 3, 224, 224), torch.randint(0, 49408, (3, 77))
        assert torch.equal(tower.model.encode_image(x), plain.encode_image(x))
        assert torch.equal(tower.encode_text(text), plain.encode_text(text))  # the causal mask is real
    half = load_clip(tiny_files["clip"], str(tmp_path / "clip.pt"), device="cpu", dtype="bf16")
    _identical(half.model, plain.to(torch.bfloat16))


def test_vfm_file_equals_plain_build(tiny_files):
    sd = torch.load(tiny_files["vfm_weights"])
    arch, kwargs = models._resolve_vfm_name(tiny_files["vfm"])
    assert kwargs["dynamic_img_size"] is True and kwargs["num_classes"] == 0
    plain = timm.create_model(arch, pretrained=False, **kwargs)
    plain.eval().requires_grad_(False)
    plain.load_state_dict(sd)
    tower = load_vfm(tiny_files["vfm"], tiny_files["vfm_weights"], device="cpu", dtype="fp32")
    _identical(tower.model, plain)
    x = torch.randn(1, 3, 112, 168)
    assert torch.equal(tower.model.forward_features(x), plain.forward_features(x))


def test_files_load_without_random_init_or_misleading_logs(tiny_files, caplog, monkeypatch):
    devices = []

    def recording_build(make, empty):
        return build(lambda dev: devices.append(dev) or make(dev), empty)

    from glaclip.models import builder

    monkeypatch.setattr(builder, "build", recording_build)
    with caplog.at_level(logging.INFO):
        clip = load_clip(tiny_files["clip"], tiny_files["clip_weights"], device="cpu")
        vfm = load_vfm(tiny_files["vfm"], tiny_files["vfm_weights"], device="cpu")
    assert devices == ["meta", "meta"]  # built with meta parameters, no fallback to a random initialisation
    assert not any(t.is_meta for m in (clip.model, vfm.model) for t in _tensors(m).values())
    assert "initialized randomly" not in caplog.text and "No pretrained weights" not in caplog.text
    torch.manual_seed(5)
    a = load_clip(tiny_files["clip"], "random", device="cpu").model.state_dict()
    torch.manual_seed(5)
    b = open_clip.create_model(models._resolve_clip_name(tiny_files["clip"]), load_weights=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not any(v.is_meta for v in a.values())  # random is real


def test_open_clip_checkpoint_loader_assigns(tiny_files):
    """The tag path: open_clip's own loader, taking the tensors instead of copying them."""
    arch = models._resolve_clip_name(tiny_files["clip"])
    ref = open_clip.create_model(arch, load_weights=False)
    open_clip.load_checkpoint(ref, tiny_files["clip_weights"])
    model = build(lambda dev: open_clip.create_model(arch, load_weights=False, device=dev), empty=True)
    assert all(p.is_meta for p in model.parameters())
    clip_checkpoint(model, tiny_files["clip_weights"], lambda: open_clip.create_model(arch, load_weights=False))
    assert "load_state_dict" not in vars(model)  # the instance is left as it was
    _identical(model, ref)


def test_hub_weights_from_the_local_cache(tiny_files, tmp_path, monkeypatch):
    """A hub checkpoint already in the cache loads with the hub off, and equals the file it came from."""
    from huggingface_hub import constants

    repo = timm.models.get_pretrained_cfg("vit_base_patch8_224").hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    sd = torch.load(tiny_files["vfm_weights"])
    save_file({**sd, "head.weight": torch.zeros(1000, 48), "head.bias": torch.zeros(1000)},
              snapshot / "model.safetensors")  # a hub checkpoint with its classifier
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("GLACLIP_VFM_WEIGHTS", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda: pytest.fail("asked the hub for a cached file"))
    tower = load_vfm(tiny_files["vfm"], None, device="cpu", dtype="fp32")
    assert tower.weights == "hub"
    _identical(tower.model, load_vfm(tiny_files["vfm"], tiny_files["vfm_weights"], device="cpu", dtype="fp32").model)
