import pytest

from glaclip import PRESETS, GlaclipError, get_preset
from glaclip.config.presets import setting_names


def test_defaults_are_method_md():
    p = get_preset("gla-proxyclip")
    w, a, d = p.window, p.attention, p.decision
    assert (w.short_side, w.max_long_side, w.crop, w.stride, w.pad_multiple) == (336, 2048, 224, 112, 56)
    assert (a.rho, a.proxy_iters, a.dynamic, a.alpha_beta, a.alpha_gamma, a.beta, a.gamma) == (
        0.55, 2, True, 0.3, 30.0, 1.2, 3.0)
    assert (d.logit_scale, d.prob_thd) == (40.0, 0.0)
    assert get_preset("gla-proxyclip-paper").attention.rho == 0.6
    assert get_preset("proxyclip").method == "proxyclip"


def test_overrides_from_strings_and_aliases():
    p = get_preset("gla-proxyclip", rho="0.6", T="1", short_side="560", dynamic="false", block_rows="auto",
                   prob_thd=0.1)
    assert p.attention.rho == 0.6 and p.attention.proxy_iters == 1 and p.window.short_side == 560
    assert p.attention.dynamic is False and p.attention.block_rows is None and p.decision.prob_thd == 0.1
    assert "rho=0.6" in p.describe() and "short_side=560" in p.describe()
    assert PRESETS["gla-proxyclip"].attention.rho == 0.55  # presets themselves are untouched


@pytest.mark.parametrize("bad", [{"nonsense": 1}, {"rho": "x"}, {"rho": 1.5}, {"proxy_iters": 1.5},
                                 {"prob_thd": 2}, {"crop": -1}, {"method": "magic"}, {"dynamic": "maybe"}])
def test_bad_overrides(bad):
    with pytest.raises(GlaclipError):
        get_preset("gla-proxyclip", **bad)


def test_every_setting_is_listed():
    names = setting_names()
    for key in ("short_side", "crop", "stride", "rho", "proxy_iters", "alpha_beta", "alpha_gamma", "beta", "gamma",
                "logit_scale", "prob_thd"):
        assert key in names
