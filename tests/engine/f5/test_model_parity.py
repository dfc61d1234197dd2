"""Our DiT equals the reference F5-TTS DiT (oracle) in keys, shapes and outputs (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from engine.f5.config import F5ModelConfig
from engine.f5.loader import build_model, expected_shapes
from engine.f5.model import DiT
from tests.f5_fixtures import oracle, reference_dit, small_config

TOL = 1e-4


def _reference_on_meta(cfg: F5ModelConfig) -> torch.nn.Module:
    dit = oracle("model.backbones.dit")
    with torch.device("meta"):
        return dit.DiT(
            dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head,
            ff_mult=cfg.ff_mult, text_num_embeds=cfg.text_num_embeds, text_dim=cfg.text_dim,
            text_mask_padding=cfg.text_mask_padding, conv_layers=cfg.conv_layers,
            pe_attn_head=cfg.pe_attn_head, attn_mask_enabled=False,
        )


@pytest.mark.parametrize("name", ["F5TTS_v1_Base", "F5TTS_Base", "F5TTS_v1_Small"])
def test_full_size_keys_and_shapes_equal_the_reference(name: str) -> None:
    cfg = F5ModelConfig.named(name)
    ref = {k: tuple(v.shape) for k, v in _reference_on_meta(cfg).state_dict().items()}
    ours = expected_shapes(cfg)
    assert ours == ref
    assert len(ours) == (364 if cfg.depth == 22 else 4 + 1 + 40 + 6 + 1 + 18 * 14 + 4)


def test_v1_base_has_the_documented_parameter_count() -> None:
    shapes = expected_shapes(F5ModelConfig.named("F5TTS_v1_Base"))
    n = sum(torch.Size(s).numel() for k, s in shapes.items() if k != "rotary_embed.inv_freq")
    assert n == 337_096_804
    assert shapes["text_embed.text_embed.weight"] == (2546, 512)
    assert shapes["input_embed.proj.weight"] == (1024, 712)


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="F5TTS_v1_Base"):
        F5ModelConfig.named("F5TTS_v2_Huge")


@pytest.fixture(
    scope="module",
    params=[("v1", False), ("v1", True), ("v0", False), ("v0", True)],
    ids=["v1", "v1-fused", "v0", "v0-fused"],
)
def pair(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, DiT]:
    # q/k/v fused is the accelerator layout, separate the CPU one: both must match
    version, fused = request.param
    cfg = small_config(version)
    ref = reference_dit(cfg, seed=7)
    model = build_model(cfg, ref.state_dict(), fuse_qkv=fused)
    assert (model.transformer_blocks[0].attn.qkv is not None) == fused
    return ref, model


def _inputs(b: int, n: int, nt: int, n_ref: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 100, generator=g)
    cond = torch.randn(b, n, 100, generator=g)
    cond[:, n_ref:] = 0
    text = torch.randint(0, 80, (b, nt), generator=g)
    return x, cond, text


# (batch, frames, text tokens): text shorter than, and longer than (truncated), the mel
SHAPES = [(1, 64, 40), (1, 33, 50), (2, 48, 30)]


@pytest.mark.parametrize(("b", "n", "nt"), SHAPES)
def test_cfg_forward_matches_the_reference(pair, b: int, n: int, nt: int) -> None:
    ref, ours = pair
    x, cond, text = _inputs(b, n, nt, n_ref=n // 3, seed=n)
    t = torch.tensor(0.37)
    with torch.inference_mode():
        expected = ref(x=x, cond=cond, text=text, time=t, cfg_infer=True, cache=False)
        got = ours(x, cond, ours.embed_text(text, n), t)
    assert got.shape == (2 * b, n, 100)
    assert (got - expected).abs().max().item() <= TOL


def test_padded_text_matches_the_reference(pair) -> None:
    ref, ours = pair
    x, cond, text = _inputs(2, 40, 25, n_ref=10, seed=3)
    text[1, 15:] = -1  # batch padding of the shorter text
    t = torch.tensor([0.1, 0.8])  # per-row times
    with torch.inference_mode():
        expected = ref(x=x, cond=cond, text=text, time=t, cfg_infer=True, cache=False)
        got = ours(x, cond, ours.embed_text(text, 40), t)
    assert (got - expected).abs().max().item() <= TOL


def test_non_cfg_forward_matches_the_reference(pair) -> None:
    ref, ours = pair
    x, cond, text = _inputs(1, 50, 30, n_ref=20, seed=5)
    t = torch.tensor(0.9)
    with torch.inference_mode():
        expected = ref(x=x, cond=cond, text=text, time=t, cache=False)
        got = ours(x, cond, ours.embed_text(text, 50, cfg=False), t)
    assert got.shape == (1, 50, 100)
    assert (got - expected).abs().max().item() <= TOL


def test_fused_qkv_gives_the_same_output() -> None:
    cfg = small_config("v1")
    ref = reference_dit(cfg, seed=2)
    unfused = DiT(cfg)
    unfused.load_state_dict(ref.state_dict(), strict=True)
    fused = build_model(cfg, ref.state_dict(), fuse_qkv=True)
    assert fused.transformer_blocks[0].attn.qkv is not None
    assert unfused.transformer_blocks[0].attn.qkv is None
    x, cond, text = _inputs(1, 30, 20, n_ref=10, seed=1)
    t = torch.tensor(0.5)
    with torch.inference_mode():
        a = unfused(x, cond, unfused.embed_text(text, 30), t)
        b = fused(x, cond, fused.embed_text(text, 30), t)
    assert (a - b).abs().max().item() <= TOL


def test_text_embedding_depends_on_the_total_length(pair) -> None:
    # GRN normalises over the whole sequence: the same tokens embed differently at another length,
    # which is why the sampler computes the embedding per sample at the final frame count.
    _, ours = pair
    text = torch.randint(0, 80, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        short = ours.embed_text(text, 30)
        long = ours.embed_text(text, 90)
    assert short.shape == (2, 30, 64) and long.shape == (2, 90, 64)
    assert (short[:, :20] - long[:, :20]).abs().max().item() > 1e-3


def test_forward_rejects_mismatched_shapes(pair) -> None:
    _, ours = pair
    x, cond, text = _inputs(1, 30, 20, n_ref=10, seed=1)
    emb = ours.embed_text(text, 30)
    with pytest.raises(ValueError, match="shape mismatch"):
        ours(x, cond[:, :20], emb, torch.tensor(0.5))
    with pytest.raises(ValueError, match="shape mismatch"):
        ours(x, cond, torch.cat((emb, emb)), torch.tensor(0.5))
    with pytest.raises(ValueError, match="text_ids"):
        ours.embed_text(text[0], 30)
