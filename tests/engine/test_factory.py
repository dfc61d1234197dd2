"""Engine selection: explicit espeak/f5, and auto with/without CUDA and weights."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.factory as factory
from engine.base import WeightsNotFoundError
from engine.config import EngineConfig
from engine.espeak import EspeakEngine
from engine.f5 import weights as weights_mod
from engine.f5.weights import ResolvedWeights


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_espeak_on_request() -> None:
    engine, reason = factory.create_engine(EngineConfig(engine="espeak"))
    assert isinstance(engine, EspeakEngine)
    assert "espeak" in reason


def test_f5_on_request_propagates_missing_weights(empty_hf_cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="model_1250000.safetensors"):
        factory.create_engine(EngineConfig(engine="f5"))


def test_auto_without_cuda_picks_espeak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory.torch.cuda, "is_available", lambda: False)
    engine, reason = factory.create_engine(EngineConfig(engine="auto"))
    assert isinstance(engine, EspeakEngine)
    assert "no CUDA device" in reason


def test_auto_with_cuda_but_no_weights_picks_espeak(
    monkeypatch: pytest.MonkeyPatch, empty_hf_cache: Path
) -> None:
    monkeypatch.setattr(factory.torch.cuda, "is_available", lambda: True)
    engine, reason = factory.create_engine(EngineConfig(engine="auto"))
    assert isinstance(engine, EspeakEngine)
    assert "F5 weights not found" in reason and "model_1250000.safetensors" in reason


def test_auto_with_cuda_and_weights_picks_f5(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = ResolvedWeights(tmp_path / "m.safetensors", tmp_path / "vocab.txt", tmp_path)
    built: list[tuple[EngineConfig, object]] = []
    monkeypatch.setattr(factory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(weights_mod, "resolve_weights", lambda cfg: found)
    monkeypatch.setattr(factory, "_f5", lambda cfg, w: built.append((cfg, w)) or "F5")
    engine, reason = factory.create_engine(EngineConfig(engine="auto"))
    assert engine == "F5" and built[0][1] == found  # the resolved paths are passed on, not re-resolved
    assert reason.startswith("auto: F5")


def test_auto_with_a_cpu_device_never_tries_f5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(factory, "_f5", lambda cfg, w: pytest.fail("F5 must not be built"))
    engine, reason = factory.create_engine(EngineConfig(engine="auto", device="cpu"))
    assert isinstance(engine, EspeakEngine) and "not CUDA" in reason


def test_f5_random_weights_builds_without_files(
    monkeypatch: pytest.MonkeyPatch, empty_hf_cache: Path, tmp_path: Path
) -> None:
    from engine.f5 import engine as f5_engine
    from tests.f5_fixtures import small_config

    # the real-size architecture is what benchmarks get; a tiny one keeps this test fast
    monkeypatch.setattr(f5_engine.F5ModelConfig, "named", classmethod(lambda cls, name: small_config()))
    cfg = EngineConfig(engine="f5", random_weights=True, device="cpu", voices_dir=str(tmp_path))
    engine, reason = factory.create_engine(cfg)
    assert engine.name == "f5" and "f5" in reason
    assert engine.default_voice == "default"  # built-in eSpeak reference: the folder is empty
