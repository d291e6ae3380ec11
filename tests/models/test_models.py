import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from glaclip import GlaclipError
from glaclip.models import loading as models
from glaclip.models.devices import resolve_device, resolve_dtype
from glaclip.models.loading import load_clip, load_vfm
from glaclip.models.towers import ClipTower


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_clip_round_trips(tiny_files, tmp_path):
    ref = load_clip(tiny_files["clip"], tiny_files["clip_weights"], device="cpu", dtype="fp32")
    sd = ref.model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "clip.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    torch.jit.script(ref.model).save(str(tmp_path / "openai_style.pt"))  # a TorchScript archive, like OpenAI's
    for f in ("clip.safetensors", "wrapped.pth", "openai_style.pt"):
        tower = load_clip(tiny_files["clip"], str(tmp_path / f), device="cpu", dtype="fp32")
        assert _same(tower.model, ref.model), f


def test_vfm_round_trips(tiny_files, tmp_path):
    ref = load_vfm(tiny_files["vfm"], tiny_files["vfm_weights"], device="cpu", dtype="fp32")
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, tmp_path / "vfm.safetensors")
    # the original DINO release: a 'teacher'-style dict with a 'backbone.' prefix
    torch.save({"teacher": {"backbone." + k: v for k, v in ref.model.state_dict().items()}}, tmp_path / "dino.pth")
    for f in ("vfm.safetensors", "dino.pth"):
        assert _same(load_vfm(tiny_files["vfm"], str(tmp_path / f), device="cpu", dtype="fp32").model, ref.model), f
    feats = ref.features(torch.randn(2, 3, 168, 224))
    assert feats.shape == (2, 48, 21, 28)


def test_quickgelu_for_openai_weights(arch_dir, tiny_files, tmp_path, monkeypatch):
    cfg = json.loads((arch_dir / "glaclip-tiny-clip.json").read_text())
    cfg["quick_gelu"] = False
    path = tmp_path / "glaclip-tiny-gelu.json"
    path.write_text(json.dumps(cfg))
    plain = load_clip(str(path), "random", device="cpu")
    assert not isinstance(plain.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    scripted = tmp_path / "ViT-openai.pt"
    torch.jit.script(plain.model).save(str(scripted))
    tower = load_clip(str(path), str(scripted), device="cpu")  # an OpenAI archive forces QuickGELU
    assert isinstance(tower.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)

    seen = {}

    def fake_create(name, pretrained=None, **kw):
        seen.update(kw, name=name, pretrained=pretrained)
        raise RuntimeError("no network in this test")

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    monkeypatch.setattr(models, "cached_hub_file", lambda repo, names: str(tmp_path / names[0]))  # "in the cache"
    with pytest.raises(GlaclipError, match="cannot build CLIP model 'ViT-B-16'"):
        load_clip("ViT-B-16", "openai", device="cpu")  # plain name + openai tag
    assert seen["force_quick_gelu"] is True and seen["pretrained"] is None  # the tag's weights follow


def test_offline_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("GLACLIP_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("GLACLIP_VFM_WEIGHTS", raising=False)
    with pytest.raises(GlaclipError) as clip_err:
        load_clip(device="cpu", dtype="fp32")
    msg = str(clip_err.value)
    assert "ViT-B-16-quickgelu" in msg and "--clip-weights" in msg and "GLACLIP_CLIP_WEIGHTS" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg and "\n" not in msg
    with pytest.raises(GlaclipError) as vfm_err:
        load_vfm(device="cpu", dtype="fp32")
    msg = str(vfm_err.value)
    assert "vit_base_patch8_224" in msg and "--vfm-weights" in msg and "GLACLIP_VFM_WEIGHTS" in msg
    assert "timm/vit_base_patch8_224.dino" in msg and "\n" not in msg


def test_env_var_supplies_weights(tiny_files, monkeypatch):
    monkeypatch.setenv("GLACLIP_CLIP_WEIGHTS", tiny_files["clip_weights"])
    monkeypatch.setenv("GLACLIP_VFM_WEIGHTS", tiny_files["vfm_weights"])
    assert load_clip(tiny_files["clip"], device="cpu").weights == tiny_files["clip_weights"]
    assert load_vfm(tiny_files["vfm"], device="cpu").weights == tiny_files["vfm_weights"]


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04broken zip"])
def test_garbled_weights(tiny_files, tmp_path, content):
    for suffix in (".pt", ".safetensors"):
        f = tmp_path / f"bad{suffix}"
        f.write_bytes(content)
        with pytest.raises(GlaclipError, match="is not a CLIP weights file"):
            load_clip(tiny_files["clip"], str(f), device="cpu")
        with pytest.raises(GlaclipError, match="is not a VFM weights file"):
            load_vfm(tiny_files["vfm"], str(f), device="cpu")


def test_wrong_architecture_and_names(tiny_files, tmp_path):
    with pytest.raises(GlaclipError, match="do not fit"):
        load_clip(tiny_files["clip"], tiny_files["vfm_weights"], device="cpu")
    with pytest.raises(GlaclipError, match="do not fit"):
        load_vfm(tiny_files["vfm"], tiny_files["clip_weights"], device="cpu")
    with pytest.raises(GlaclipError, match="not found"):
        load_clip(tiny_files["clip"], str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(GlaclipError, match="did you mean"):
        load_clip("ViT-B-16-quickgel", "random", device="cpu")
    with pytest.raises(GlaclipError, match="no pretrained tag"):
        load_clip("ViT-B-16-quickgelu", "nonsense-tag", device="cpu")
    with pytest.raises(GlaclipError, match="unknown VFM"):
        load_vfm("not_a_model", "random", device="cpu")


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(GlaclipError):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(GlaclipError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


def test_value_path_equals_attention_internals(segmenter):
    """The value tokens are exactly what nn.MultiheadAttention would use as V in the last block."""
    tower: ClipTower = segmenter.clip
    x = torch.randn(2, 3, 224, 224)
    values = tower.value_tokens(x)
    captured = {}
    last = tower.visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    tower.visual(x)
    hook.remove()
    d = values.shape[1]
    v = torch.nn.functional.linear(last.ln_1(captured["x"]), last.attn.in_proj_weight[2 * d :],
                                   last.attn.in_proj_bias[2 * d :])[:, 1:]
    torch.testing.assert_close(values.flatten(2).transpose(1, 2), v)


def test_paper_backbones_resolve_without_download(monkeypatch, tmp_path):
    import timm

    from glaclip.config.backbones import CLIP_BACKBONES, VFM_BACKBONES

    looked = []
    monkeypatch.setattr(models, "cached_hub_file", lambda repo, names: looked.append(repo))
    for name, tag in CLIP_BACKBONES.values():  # not cached, hub off: the message names the weights to get
        with pytest.raises(GlaclipError, match=f"CLIP {name}:{tag} .*--clip-weights"):
            load_clip(name, tag, device="cpu")
    assert len(looked) == len(CLIP_BACKBONES) and all(looked)  # each tag's weights live in a hub repo
    built = []
    monkeypatch.setattr(models, "cached_hub_file", lambda repo, names: str(tmp_path / names[0]))
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kw: built.append(
        (name, kw.get("force_quick_gelu"))) or (_ for _ in ()).throw(RuntimeError("offline")))
    quick = []
    for name, tag in CLIP_BACKBONES.values():
        built.clear()
        with pytest.raises(GlaclipError, match="cannot build"):
            load_clip(name, tag, device="cpu")
        assert {b[0] for b in built} == {name}
        quick.append(built[0][1])
    assert quick == [True, True, False, False, True]  # QuickGELU exactly where the weights need it
    for name in VFM_BACKBONES.values():
        assert timm.is_model(name) and timm.models.get_pretrained_cfg(name).hf_hub_id
