"""RADIO through its own hub entry (models/radio.py): a stand-in with RADIO's interface (CI has no RADIO
checkout; tests/models/radio_standin/hubconf.py) loaded through the real torch.hub.load(source='local')
path, and RADIO's own code when $GLACLIP_RADIO_REPO names a checkout."""

import os
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from glaclip.errors import GlaclipError, MissingWeights
from glaclip.models.radio import RADIO_REPO_ENV, RadioTower, load_radio, radio_repo_dir

STANDIN = Path(__file__).parent / "radio_standin"
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


@pytest.fixture
def checkpoint(tmp_path):
    """A stand-in checkpoint in RADIO's layout: args and base_model.* / input_conditioner.* tensors."""
    g = torch.Generator().manual_seed(3)
    sd = {"base_model.embed.weight": torch.randn(8, 3, 16, 16, generator=g) * 0.05,
          "base_model.embed.bias": torch.randn(8, generator=g), "base_model.mix.weight": torch.randn(8, 8, generator=g),
          "base_model.mix.bias": torch.randn(8, generator=g),
          "input_conditioner.norm_mean": MEAN, "input_conditioner.norm_std": STD}
    path = tmp_path / "radio.pth.tar"
    torch.save({"args": {"dim": 8}, "state_dict": sd}, path)
    return path, sd


def naive_features(sd, x, dtype):
    """The stand-in's forward restated in `dtype`: conditioner, 16x16 patches, t + tanh(mix t)."""
    x = ((x.to(dtype) - MEAN.to(dtype)) / STD.to(dtype))
    f = torch.nn.functional.conv2d(x, sd["base_model.embed.weight"].to(dtype), sd["base_model.embed.bias"].to(dtype),
                                   stride=16)
    t = f.flatten(2).transpose(1, 2)
    t = t + torch.tanh(t @ sd["base_model.mix.weight"].to(dtype).T + sd["base_model.mix.bias"].to(dtype))
    return t.transpose(1, 2).reshape(f.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpoint_file_through_torch_hub(checkpoint, dtype):
    path, sd = checkpoint
    tower = load_radio("c-radio_v3-l", weights=str(path), radio_repo=STANDIN, device="cpu", dtype=dtype)
    assert isinstance(tower, RadioTower) and tower.weights == str(path)
    assert tower.dim == 8 and tower.patch_size == 16 and tower.dtype == dtype
    x = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = tower.model.input_conditioner.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = tower.features(x)
    hook.remove()
    assert seen == [dtype]  # the conditioner runs in the run's precision (fp64 included)
    assert out.shape == (1, 8, 3, 5) and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, naive_features(sd, x, dtype), atol=tol, rtol=tol)


def test_resource_name_and_snapping():
    tower = load_radio("tiny-random", radio_repo=STANDIN, device="cpu", dtype="fp32")
    assert tower.weights == "hub"
    # Python round: half to even (424 / 16 = 26.5 -> 26)
    for size, want in [(424, 416), (200, 192), (264, 256), (280, 288), (401, 400), (301, 304), (5, 16)]:
        assert tower.nearest_resolution(size, size) == (want, want)
    assert tower.nearest_resolution(424, 301) == (416, 304)


def test_missing_code_and_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(RADIO_REPO_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeights, match=r"RADIO code \(git clone https://github.com/NVlabs/RADIO"):
        load_radio(device="cpu", dtype="fp32")
    with pytest.raises(GlaclipError, match="no RADIO code at"):
        radio_repo_dir(tmp_path)
    monkeypatch.setenv(RADIO_REPO_ENV, str(STANDIN))
    assert radio_repo_dir() == STANDIN
    with pytest.raises(MissingWeights, match=r"RADIO c-radio_v3-l \(get https://huggingface.co/nvidia/C-RADIOv3-L/"
                                             r"resolve/main/c-radio-v3_l_half.pth.tar into .*checkpoints"):
        load_radio(device="cpu", dtype="fp32")
    with pytest.raises(GlaclipError, match="RADIO weights file not found"):
        load_radio(weights=str(tmp_path / "nope.pth"), device="cpu", dtype="fp32")
    with pytest.raises(GlaclipError, match="no random initialisation"):
        load_radio(weights="random", device="cpu", dtype="fp32")
    # the hub cache's checkout is found without a path
    monkeypatch.delenv(RADIO_REPO_ENV)
    (tmp_path / "hub").mkdir()
    os.symlink(STANDIN, tmp_path / "hub" / "NVlabs_RADIO_main")
    assert radio_repo_dir() == tmp_path / "hub" / "NVlabs_RADIO_main"
    with pytest.raises(GlaclipError, match="does not load from"):
        load_radio("no-such-version", device="cpu", dtype="fp32")


@pytest.mark.skipif(not os.environ.get(RADIO_REPO_ENV) or not (Path(os.environ.get(RADIO_REPO_ENV, ".")) /
                    "radio").is_dir(), reason="needs a RADIO checkout in $GLACLIP_RADIO_REPO")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_radio_code(tmp_path, dtype):
    """RADIO's own code on a small randomly initialised ViT checkpoint (a C-RADIO-like CPE ViT-Ti/16)."""
    args = Namespace(model="vit_tiny_patch16_224", in_chans=None, input_size=None, model_kwargs={}, pretrained=False,
                     num_classes=0, drop=0.0, drop_path=None, drop_block=None, gp=None, bn_momentum=None,
                     bn_eps=None, torchscript=False, initial_checkpoint="", cpe_max_size=2048,
                     teachers=[{"name": "clip"}, {"name": "dino"}], cls_token_per_teacher=True,
                     register_multiple=8, spectral_reparam=False, dtype=torch.float32)
    path = tmp_path / "tiny.pth.tar"
    torch.save({"args": args, "state_dict": {"input_conditioner.norm_mean": MEAN, "input_conditioner.norm_std": STD}},
               path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RADIO warns about the (randomly initialised) missing base_model keys
        tower = load_radio(weights=str(path), device="cpu", dtype=dtype)
    assert tower.nearest_resolution(424, 200) == (416, 192) and tower.dim == 192 and tower.patch_size == 16
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    out = tower.features(x)
    assert out.shape == (1, 192, 4, 6) and out.dtype == dtype
    torch.testing.assert_close(out, tower.model(x.to(dtype), feature_fmt="NCHW")[1])
