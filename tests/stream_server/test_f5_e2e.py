"""End to end (issue 3): the server streams real Opus from an F5Engine built from a small random
checkpoint written by the test in the official layout."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.codec import OpusFrameDecoder
from engine.config import EngineConfig
from engine.f5.engine import F5Engine
from engine.f5.model import DiT
from engine.f5.weights import ResolvedWeights
from tests.engine.f5.test_engine import write_tiny_vocos, write_voice
from tests.f5_fixtures import randomize_, small_config, write_safetensors_checkpoint, write_vocab
from tests.server_fixtures import collect, make_config, running_server, ws_url

TEXT = "The first sentence is long enough to stand alone. A second one follows it closely."


@pytest.fixture(scope="module")
def f5_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, F5Engine]]:
    root = tmp_path_factory.mktemp("f5e2e")
    model_cfg = small_config(text_num_embeds=2545)
    ckpt = write_safetensors_checkpoint(
        randomize_(DiT(model_cfg), seed=1).state_dict(), root / "model_1250000.safetensors"
    )
    weights = ResolvedWeights(ckpt, write_vocab(root / "vocab.txt"), write_tiny_vocos(root / "vocos"))
    voices = root / "voices"
    voices.mkdir()
    write_voice(voices, "alice", 0.5)
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(voices))
    engine = F5Engine(cfg, model_config=model_cfg, weights=weights)
    with running_server(make_config(), engine) as url:
        yield url, engine


def test_streams_opus_from_f5(f5_server: tuple[str, F5Engine]) -> None:
    url, engine = f5_server
    start = {"type": "start", "voice": "alice", "format": "opus", "options": {"seed": 7, "nfe": 7}}
    opened = []  # the server's batch worker opens one engine item per segment
    real_open = engine.open_item

    def open_item(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    engine.open_item = open_item  # type: ignore[method-assign]
    try:
        got = asyncio.run(
            collect(ws_url(url), [start, {"type": "text", "text": TEXT}, {"type": "end"}], timeout_s=120)
        )
    finally:
        del engine.open_item
    assert got.close_code == 1000
    types = [m["type"] for m in got.messages]
    assert types[0] == "ready" and types[-1] == "done"
    assert "error" not in types
    ready = got.messages[0]
    assert ready["engine"] == "f5" and ready["voice"] == "alice"

    # message order: each segment's `segment` comes before its audio and `segment_done` after it
    got.assert_segment_order()
    segments = [m for m in got.messages if m["type"] == "segment"]
    assert len(segments) == 2

    dec = OpusFrameDecoder(24000)
    pcm = np.concatenate([dec.decode(f) for f in got.frames])
    done = got.messages[-1]
    assert pcm.shape[0] / 24.0 == pytest.approx(done["audio_ms"])  # exactly the frames sent
    assert done["audio_ms"] > 500 and done["segments"] == 2 and done["ttfa_ms"] > 0
    assert float(np.sqrt(np.mean(pcm**2))) > 1e-3  # the random model's audio is not silence
    # the segments' generated frames fit inside the streamed audio
    assert len(opened) == 2 and all(item.mel is not None for item in opened)
    assert sum(256 * (item.mel.shape[0] - 1) / 24.0 for item in opened) < done["audio_ms"]


def test_unknown_voice_is_reported_and_the_session_goes_on(f5_server: tuple[str, F5Engine]) -> None:
    url, _ = f5_server
    got = asyncio.run(collect(
        ws_url(url),
        [{"type": "start", "voice": "nobody"}, {"type": "text", "text": "Hi there."}, {"type": "end"}],
        timeout_s=60,
    ))
    errors = [m for m in got.messages if m["type"] == "error"]
    assert errors and errors[0]["code"] == "unknown_voice"


# --- the CLI tools around the F5 engine (stream-tts download / bench-engine) ---------------------


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.configure_parser(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_download_cli_reports_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.f5 import weights
    from stream_server.tools import download

    def fake_download(*, repo_id: str, filename: str, local_dir: Path | None = None,
                      cache_dir: Path | None = None) -> str:
        assert local_dir is not None
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        return str(path)

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "hf_hub_download", fake_download)
    assert download.run(_parse(download, ["--dest", str(tmp_path / "models")])) == 0
    out = capsys.readouterr().out
    assert f"--checkpoint {tmp_path / 'models' / 'F5TTS_v1_Base' / 'model_1250000.safetensors'}" in out
    assert f"--vocoder {tmp_path / 'models' / 'vocos'}" in out


def test_download_cli_offline_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.f5 import weights
    from stream_server.tools import download

    def offline(**kwargs: object) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "hf_hub_download", offline)
    assert download.run(_parse(download, [])) == 1
    err = capsys.readouterr().err
    assert "could not download SWivid/F5-TTS" in err and "offline" in err


def test_bench_engine_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_server.tools import bench_engine

    out = tmp_path / "bench.json"
    args = _parse(bench_engine, ["--engine", "espeak", "--runs", "2", "--json", str(out),
                                 "--text", "One short sentence. And another one."])
    assert bench_engine.run(args) == 0
    result = json.loads(out.read_text())
    assert result["engine"] == "espeak" and result["runs"] == 2 and result["segments"] >= 1
    ours = result["ours"]
    assert ours["audio_s"] > 0.5 and 0 < ours["ttfa_s"] <= ours["total_s"]
    assert ours["rtf"] == pytest.approx(ours["total_s"] / ours["audio_s"], rel=0.5)
    assert "RTF" in capsys.readouterr().out
