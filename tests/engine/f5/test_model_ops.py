"""The CPU fast forms of two DiT ops equal the plain formulas they replace."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.f5.model import RotaryEmbedding, apply_rope, gelu_tanh


def test_gelu_tanh_equals_torch_tanh_gelu() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(4096, generator=g) * 3,
        torch.tensor([0.0, -0.0, 1e-8, -1e-8, 8.0, -8.0, 30.0, -30.0, 1e20, -1e20]),
    ])
    got = gelu_tanh(x.clone())
    want = F.gelu(x, approximate="tanh")
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(got).all()
    assert gelu_tanh(torch.tensor([float("nan")])).isnan().all()


def test_gelu_tanh_leaves_its_input_alone() -> None:
    x = torch.randn(8, 16)
    before = x.clone()
    gelu_tanh(x)
    assert torch.equal(x, before)


def test_rope_rotates_adjacent_pairs_by_position_angles() -> None:
    b, h, n, dh = 2, 3, 7, 8
    x = torch.randn(b, n, h, dh).transpose(1, 2)  # (b, h, n, dh), not contiguous, as in Attention
    cos, sin = RotaryEmbedding(dh)(n)
    got = apply_rope(x, cos, sin)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    want = torch.empty_like(x)
    want[..., 0::2] = x0 * cos - x1 * sin
    want[..., 1::2] = x1 * cos + x0 * sin
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-6)
    # position 0 is not rotated; rotation keeps each pair's length
    assert torch.allclose(got[:, :, 0], x[:, :, 0])
    norms = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    assert torch.allclose(norms(got), norms(x), atol=1e-5)


def test_rope_on_half_precision_input_returns_half() -> None:
    x = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    cos, sin = RotaryEmbedding(8)(5)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), apply_rope(x.float(), cos, sin), atol=2e-2)
