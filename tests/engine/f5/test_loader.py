"""Strict loading of official F5-TTS checkpoints, vocab and Vocos folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.base import CheckpointError, WeightsNotFoundError
from engine.f5.config import F5ModelConfig
from engine.f5.loader import (
    build_model,
    expected_shapes,
    load_f5_state_dict,
    load_vocab,
    load_vocos,
)
from tests.f5_fixtures import (
    oracle,
    reference_dit,
    reference_vocab_path,
    small_config,
    write_pt_checkpoint,
    write_safetensors_checkpoint,
    write_vocab,
    write_vocos_folder,
)

V1 = F5ModelConfig.named("F5TTS_v1_Base")


@pytest.fixture(scope="module")
def full_size_state() -> dict[str, torch.Tensor]:
    # uninitialised full-size tensors: the file layout and loader path are real, the values are
    # irrelevant (parity of values is tested at reduced size); a few get marks to check the data
    state = {k: torch.empty(s) for k, s in expected_shapes(V1).items()}
    state["proj_out.bias"] = torch.arange(100, dtype=torch.float32)
    state["transformer_blocks.21.attn.to_v.weight"].fill_(0.25)
    return state


def _check_full_size(model: torch.nn.Module) -> None:
    assert torch.equal(model.proj_out.bias, torch.arange(100, dtype=torch.float32))
    assert torch.all(model.transformer_blocks[21].attn.to_v.weight == 0.25)


def test_full_size_v1_safetensors_loads_strictly(full_size_state, tmp_path: Path) -> None:
    path = write_safetensors_checkpoint(full_size_state, tmp_path / "model_1250000.safetensors")
    state = load_f5_state_dict(path)
    assert len(state) == 364
    model = build_model(V1, state)
    _check_full_size(model)
    fused = build_model(V1, state, fuse_qkv=True)  # the accelerator layout
    qkv = fused.transformer_blocks[21].attn.qkv
    assert qkv.weight.shape == (3 * 1024, 1024) and torch.all(qkv.weight[2048:] == 0.25)
    n = sum(p.numel() for p in model.parameters())
    assert n == 337_096_804


def test_full_size_legacy_pt_loads_strictly(full_size_state, tmp_path: Path) -> None:
    path = write_pt_checkpoint(full_size_state, tmp_path / "model_1200000.pt")
    _check_full_size(build_model(V1, load_f5_state_dict(path)))


@pytest.fixture(scope="module")
def small_ref() -> torch.nn.Module:
    return reference_dit(small_config("v0"), seed=5)


def test_loaded_file_reproduces_the_reference_forward(small_ref, tmp_path: Path) -> None:
    # the v0 release also carries the mel filterbank/window, which the loader ignores
    path = write_safetensors_checkpoint(
        small_ref.state_dict(), tmp_path / "m.safetensors", with_mel_spec=True
    )
    model = build_model(small_config("v0"), load_f5_state_dict(path))
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 40, 100, generator=g), torch.randn(1, 40, 100, generator=g)
    text = torch.randint(0, 80, (1, 25), generator=g)
    t = torch.tensor(0.25)
    with torch.inference_mode():
        expected = small_ref(x=x, cond=cond, text=text, time=t, cfg_infer=True, cache=False)
        got = model(x, cond, model.embed_text(text, 40), t)
    assert (got - expected).abs().max().item() <= 1e-4


def _state(small_ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(small_ref.state_dict())


def test_missing_key_is_named(small_ref) -> None:
    state = _state(small_ref)
    del state["transformer_blocks.1.ff.ff.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: transformer_blocks\.1\.ff\.ff\.2\.bias"):
        build_model(small_config("v0"), state)


def test_unexpected_key_is_named(small_ref) -> None:
    state = _state(small_ref)
    state["long_skip_connection.weight"] = torch.zeros(128, 256)
    with pytest.raises(CheckpointError, match=r"unexpected keys: long_skip_connection\.weight"):
        build_model(small_config("v0"), state)


def test_wrong_shape_is_named(small_ref) -> None:
    # e.g. a vocab of a different size
    state = _state(small_ref)
    state["text_embed.text_embed.weight"] = torch.zeros(100, 64)
    with pytest.raises(CheckpointError, match=r"text_embed\.text_embed\.weight \(100, 64\) != \(81, 64\)"):
        build_model(small_config("v0"), state)


def test_full_size_file_does_not_load_into_the_small_config(small_ref, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing keys"):
        build_model(small_config("v1", depth=3), _state(small_ref))


def test_foreign_keys_in_the_file_are_rejected(small_ref, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"model.decoder.weight": torch.zeros(2, 2), "initted": torch.tensor(True)}, str(path))
    with pytest.raises(CheckpointError, match=r"model\.decoder\.weight"):
        load_f5_state_dict(path)


def test_missing_file_raises_weights_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        load_f5_state_dict(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.pt"])
def test_corrupt_file_raises_checkpoint_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_f5_state_dict(path)


class _Payload:
    """An arbitrary pickled object: weights_only=True must refuse it."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"ema_model_state_dict": {"x": _Payload()}}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_f5_state_dict(path)


def test_random_weights_are_seeded_and_leave_the_global_rng() -> None:
    cfg = small_config("v1")
    before = torch.random.get_rng_state()
    a, b, c = build_model(cfg, None, seed=1), build_model(cfg, None, seed=1), build_model(cfg, None, seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.proj_out.weight, b.proj_out.weight)
    assert not torch.equal(a.proj_out.weight, c.proj_out.weight)
    assert not a.proj_out.weight.requires_grad and not a.training


def test_low_precision_cast_keeps_rope_and_text_encoder_fp32(small_ref) -> None:
    model = build_model(small_config("v0"), _state(small_ref), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert model.rotary_embed.inv_freq.dtype == torch.float32
    assert model.text_embed.text_embed.weight.dtype == torch.float32
    # text encoder weights are the checkpoint's fp32 values, not a bf16 round trip
    assert torch.equal(model.text_embed.text_embed.weight, small_ref.text_embed.text_embed.weight)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 30, 100, generator=g), torch.randn(1, 30, 100, generator=g)
    text = torch.randint(0, 80, (1, 20), generator=g)
    with torch.inference_mode():
        emb = model.embed_text(text, 30)
        out = model(x, cond, emb, torch.tensor(0.5))
        expected = small_ref(x=x, cond=cond, text=text, time=torch.tensor(0.5), cfg_infer=True)
    assert emb.dtype == out.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; the error must stay small relative to the output scale
    assert (out.float() - expected).abs().mean() <= 0.05 * expected.abs().mean()


def test_vocab_matches_the_reference_tokenizer(tmp_path: Path) -> None:
    path = write_vocab(tmp_path / "vocab.txt")
    vocab = load_vocab(path)
    expected, size = oracle("model.utils").get_tokenizer(str(reference_vocab_path()), "custom")
    assert vocab == expected and len(vocab) == size == 2545
    assert vocab[" "] == 0 and vocab[","] == 12 and vocab["a"] == 62 and vocab["zuo4"] == 1412
    assert vocab["。"] == 1895 and vocab["𠮶"] == 2544


def test_crlf_vocab_reads_the_same(tmp_path: Path) -> None:
    lf = load_vocab(write_vocab(tmp_path / "vocab.txt"))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes((tmp_path / "vocab.txt").read_bytes().replace(b"\n", b"\r\n"))
    assert load_vocab(crlf) == lf


def test_vocab_without_space_first_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("a\n \nb\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="single space"):
        load_vocab(path)
    with pytest.raises(WeightsNotFoundError):
        load_vocab(tmp_path / "missing.txt")


def test_vocos_folder_loads_strictly_and_decodes(tmp_path: Path) -> None:
    folder = write_vocos_folder(tmp_path / "vocos", seed=1)
    model = load_vocos(folder)
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert len(saved) == 83
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert sum(p.numel() for p in model.parameters()) == 13_531_650
    with torch.inference_mode():
        wave = model.decode(torch.randn(1, 100, 20))
    assert wave.shape == (1, 256 * 19) and wave.dtype == torch.float32


def test_vocos_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="config.yaml, pytorch_model.bin"):
        load_vocos(tmp_path)
    folder = write_vocos_folder(tmp_path / "vocos", seed=1)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["head.out.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"head\.out\.weight"):
        load_vocos(folder)
