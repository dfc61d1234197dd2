"""Weight resolution: explicit paths, the offline HF cache, the error text, and download."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.base import WeightsNotFoundError
from engine.config import EngineConfig
from engine.f5 import weights
from engine.f5.weights import ResolvedWeights, download, resolve_weights

REV = "0123456789abcdef0123456789abcdef01234567"


def _write_cached(cache: Path, repo: str, filename: str, text: str = "x") -> Path:
    """Write one file in the hub cache layout: models--O--N/snapshots/<rev>/<filename> + refs/main."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REV)
    path = repo_dir / "snapshots" / REV / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _fill_cache(cache: Path) -> dict[str, Path]:
    return {
        "checkpoint": _write_cached(cache, "SWivid/F5-TTS", "F5TTS_v1_Base/model_1250000.safetensors"),
        "vocab": _write_cached(cache, "SWivid/F5-TTS", "F5TTS_v1_Base/vocab.txt"),
        "config": _write_cached(cache, "charactr/vocos-mel-24khz", "config.yaml"),
        "bin": _write_cached(cache, "charactr/vocos-mel-24khz", "pytorch_model.bin"),
    }


def test_explicit_paths_win(tmp_path: Path, cache: Path) -> None:
    _fill_cache(cache)
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_text("c")
    (tmp_path / "vocab.txt").write_text("v")  # next to the checkpoint: used without --vocab
    voc = tmp_path / "vocos"
    voc.mkdir()
    (voc / "config.yaml").write_text("c")
    (voc / "pytorch_model.bin").write_text("b")
    got = resolve_weights(EngineConfig(checkpoint=str(ckpt), vocoder=str(voc)))
    assert got == ResolvedWeights(ckpt, tmp_path / "vocab.txt", voc)


def test_hf_cache_is_found_offline(cache: Path) -> None:
    files = _fill_cache(cache)
    got = resolve_weights(EngineConfig())
    assert got.checkpoint == files["checkpoint"]
    assert got.vocab == files["vocab"]
    assert got.vocoder_dir == files["config"].parent


def test_v0_model_uses_its_own_checkpoint(cache: Path) -> None:
    _fill_cache(cache)
    with pytest.raises(WeightsNotFoundError, match="F5TTS_Base/model_1200000.safetensors"):
        resolve_weights(EngineConfig(model="F5TTS_Base"))
    v0 = _write_cached(cache, "SWivid/F5-TTS", "F5TTS_Base/model_1200000.safetensors")
    assert resolve_weights(EngineConfig(model="F5TTS_Base")).checkpoint == v0


def test_missing_files_are_named_with_repo_and_destination(cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(EngineConfig())
    text = str(err.value)
    for needle in [
        "SWivid/F5-TTS / F5TTS_v1_Base/model_1250000.safetensors",
        "F5TTS_v1_Base/vocab.txt",
        "charactr/vocos-mel-24khz / config.yaml + pytorch_model.bin",
        "--checkpoint",
        "--vocoder",
        "stream-tts download",
        str(cache),
    ]:
        assert needle in text


def test_only_the_missing_part_is_reported(cache: Path) -> None:
    files = _fill_cache(cache)
    files["bin"].unlink()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(EngineConfig())
    assert "vocos-mel-24khz" in str(err.value)
    assert "model_1250000" not in str(err.value)


def test_explicit_path_that_does_not_exist(tmp_path: Path, cache: Path) -> None:
    _fill_cache(cache)
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        resolve_weights(EngineConfig(checkpoint=str(tmp_path / "nope.safetensors")))


def test_download_fetches_only_missing_files(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _fill_cache(cache)
    files["vocab"].unlink()
    calls: list[tuple[str, str]] = []

    def fake_download(*, repo_id: str, filename: str, cache_dir: Path | None = None,
                      local_dir: Path | None = None) -> str:
        calls.append((repo_id, filename))
        return str(_write_cached(Path(cache_dir or cache), repo_id, filename))

    monkeypatch.setattr(weights, "hf_hub_download", fake_download)
    got = download(EngineConfig())
    assert calls == [("SWivid/F5-TTS", "F5TTS_v1_Base/vocab.txt")]
    assert got == resolve_weights(EngineConfig())


def test_download_to_dest(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(*, repo_id: str, filename: str, cache_dir: Path | None = None,
                      local_dir: Path | None = None) -> str:
        assert local_dir is not None
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        return str(path)

    monkeypatch.setattr(weights, "hf_hub_download", fake_download)
    got = download(EngineConfig(), dest=tmp_path / "models")
    assert got.checkpoint == tmp_path / "models" / "F5TTS_v1_Base" / "model_1250000.safetensors"
    assert got.vocoder_dir == tmp_path / "models" / "vocos"
    explicit = EngineConfig(checkpoint=str(got.checkpoint), vocab=str(got.vocab),
                            vocoder=str(got.vocoder_dir))
    assert resolve_weights(explicit) == got


def test_download_failure_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(**kwargs: object) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFoundError, match="could not download SWivid/F5-TTS"):
        download(EngineConfig())
