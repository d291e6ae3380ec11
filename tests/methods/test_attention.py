import math

import pytest
import reference
import torch
import torch.nn.functional as F

from glaclip.config.presets import AttentionConfig
from glaclip.methods.attention import (
    auto_block_rows,
    dense_gla_attention,
    dynamic_beta,
    gla_attention,
    proxyclip_attention,
)


def _tokens(n_windows=3, per=40, c=16, d=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, c, generator=g, dtype=dtype)
    keys = centres[torch.randint(0, 5, (n_windows * per,), generator=g)] + 0.6 * torch.randn(n_windows * per, c,
                                                                                            generator=g, dtype=dtype)
    return F.normalize(keys, dim=-1), torch.randn(n_windows * per, d, generator=g, dtype=dtype)


def _naive(keys, values, n_windows, cfg, heads=3):
    v = values.T.reshape(heads, -1, values.shape[0]).transpose(1, 2)  # heads x N x hd
    out, _ = reference.gla(keys, v, n_windows, rho=cfg.rho, T=cfg.proxy_iters, dynamic=cfg.dynamic,
                           ab=cfg.alpha_beta, ag=cfg.alpha_gamma, beta_fixed=cfg.beta, gamma_fixed=cfg.gamma)
    return out.transpose(1, 2).reshape(values.shape[1], -1).T


@pytest.mark.parametrize("iters", [0, 1, 2, 3])
@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("rho", [0.2, 0.55, 0.9])
def test_gla_equals_formula(iters, dynamic, rho):
    keys, values = _tokens()
    cfg = AttentionConfig(rho=rho, proxy_iters=iters, dynamic=dynamic, block_rows=17)
    torch.testing.assert_close(gla_attention(keys, values, 3, cfg), _naive(keys, values, 3, cfg), rtol=0, atol=1e-10)


@pytest.mark.parametrize("rows", [1, 7, 64, 119, 120, 10_000, None])
def test_blocks_equal_dense(rows):
    keys, values = _tokens(n_windows=4, per=30)
    cfg = AttentionConfig(block_rows=rows, memory_mb=1)
    torch.testing.assert_close(gla_attention(keys, values, 4, cfg), dense_gla_attention(keys, values, 4, cfg),
                               rtol=0, atol=1e-12)


def test_blocks_equal_dense_fp32():
    keys, values = _tokens(n_windows=6, per=50, dtype=torch.float32)
    cfg = AttentionConfig(block_rows=33)
    torch.testing.assert_close(gla_attention(keys, values, 6, cfg), dense_gla_attention(keys, values, 6, cfg),
                               rtol=0, atol=1e-6)


def test_empty_rows_get_their_diagonal():
    """A zero key matches nothing above rho: its mask keeps only itself, c_i = 1, weights stay finite."""
    keys, values = _tokens(n_windows=2, per=10)
    keys[3] = 0.0
    cfg = AttentionConfig(rho=0.55, block_rows=4)
    out = gla_attention(keys, values, 2, cfg)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _naive(keys, values, 2, cfg), rtol=0, atol=1e-10)
    # its scores are all 0: t = 0 keeps every key and the softmax is uniform
    torch.testing.assert_close(out[3], values.mean(0), rtol=0, atol=1e-12)


def test_dynamic_beta_gamma_values():
    assert dynamic_beta(6, 0.3) == pytest.approx(1 + 0.3 * math.log(7))
    # one query whose proxy mask holds exactly c keys: gamma = 1 + 30 / c
    keys = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64), dim=1)
    values = torch.eye(4, dtype=torch.float64)
    cfg = AttentionConfig(rho=0.5, proxy_iters=0, block_rows=1)
    out = gla_attention(keys, values, 1, cfg)
    A = keys @ keys.T
    c = (A > 0.5).sum(1).double()
    mu = A.mean(1).clamp_min(0)
    scores = (A - (1 + 0.3 * math.log(2)) * mu[:, None]) * (1 + 30 / c)[:, None]
    t = scores.max(1).values.clamp_max(0)
    expected = torch.where(scores < t[:, None], float("-inf"), scores).softmax(1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_threshold_keeps_only_the_max_when_all_scores_negative():
    keys = F.normalize(torch.tensor([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]], dtype=torch.float64), dim=1)
    values = torch.eye(3, dtype=torch.float64)
    # huge fixed beta: every score of row 0 is negative -> t = rowmax, a one-hot at the max
    cfg = AttentionConfig(dynamic=False, beta=50.0, gamma=1.0, proxy_iters=0, rho=0.99)
    out = gla_attention(keys, values, 1, cfg)
    assert out[0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("token_norm", [False, True])
def test_proxyclip_window_local_equals_formula(token_norm):
    keys, values = _tokens(n_windows=3, per=25)
    cfg = AttentionConfig(memory_mb=1, token_norm=token_norm)
    out = proxyclip_attention(keys.view(3, 25, -1), values.view(3, 25, -1), cfg)
    for w in range(3):
        k, v = keys[w * 25 : (w + 1) * 25], values[w * 25 : (w + 1) * 25]
        expected, _ = reference.proxyclip_local(k, v[None], token_norm=token_norm)
        torch.testing.assert_close(out[w], expected[0], rtol=0, atol=1e-12)


def test_single_window_gla_is_not_the_host():
    """With one window GLA still uses proxies and dynamic scaling, so it differs from ProxyCLIP."""
    keys, values = _tokens(n_windows=1, per=60)
    gla = gla_attention(keys, values, 1, AttentionConfig())
    host = proxyclip_attention(keys[None], values[None], AttentionConfig())[0]
    assert (gla - host).abs().max() > 1e-3


def test_auto_block_rows_is_linear_budget():
    assert auto_block_rows(100, 512) == 100
    rows = auto_block_rows(120_000, 512)
    assert 1 <= rows < 120_000 and rows * 120_000 * 24 <= 512 * 2**20


def test_peak_memory_stays_linear():
    """N = 30,000 tokens: one dense fp32 N x N matrix is 3.4 GiB; block-wise stays far below."""
    import subprocess
    import sys

    code = (
        "import resource, torch, torch.nn.functional as F\n"
        "from glaclip.methods.attention import gla_attention\n"
        "from glaclip.config.presets import AttentionConfig\n"
        "torch.manual_seed(0)\n"
        "k = F.normalize(torch.randn(30000, 32), dim=-1); v = torch.randn(30000, 32)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = gla_attention(k, v, 38, AttentionConfig(block_rows=128))\n"
        "assert torch.isfinite(out).all()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown_mb = int(proc.stdout.split()[-1])
    assert grown_mb < 1000, f"peak grew by {grown_mb} MiB (one dense N x N fp32 matrix: 3433 MiB)"
