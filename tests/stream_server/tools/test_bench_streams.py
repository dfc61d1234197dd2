"""``bench-engine --streams``: levels through the server's worker, batched vs one at a time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from engine.base import SynthOptions
from engine.config import AudioConfig
from stream_server.tools import bench_engine
from stream_server.tools.bench_streams import parse_streams, run_levels
from tests.stream_server.batch_fakes import FakeBatchEngine, gpu_like_cost

SEGMENTS = ["The first sentence of the stream.", "And a second one after it."]


def expected_audio_s(segments: list[str]) -> float:
    pause = AudioConfig().pause_ms / 1000
    return sum(len(t) * 0.010 + pause for t in segments)


def test_levels_batched_and_unbatched_make_the_same_audio(capsys: pytest.CaptureFixture[str]) -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, step_delay_s=0.005)  # later arrivals join in time
    levels = run_levels(engine, [1, 3], SEGMENTS, "low", SynthOptions(), stagger_s=0.001, compare_unbatched=True)
    assert [(lv["streams"], lv["mode"]) for lv in levels] == [
        (1, "batched"), (1, "unbatched"), (3, "batched"), (3, "unbatched")]
    for lv in levels:
        assert lv["errors"] == 0
        assert lv["audio_s"] == pytest.approx(lv["streams"] * expected_audio_s(SEGMENTS), abs=0.05)
        assert 0 < lv["first_audio_ms_p50"] <= lv["first_audio_ms_p95"]
        assert lv["aggregate_x_realtime"] > 0 and lv["stream_rtf_p50"] > 0
    assert levels[3]["mean_rows_per_sample_step"] == 1.0  # one at a time
    assert levels[2]["mean_rows_per_sample_step"] > 1.0  # three streams shared steps
    assert "rows/step" in capsys.readouterr().out


def test_parse_streams_rejects_bad_specs() -> None:
    assert parse_streams("1, 4,16") == [1, 4, 16]
    for bad in ("", "a", "0", "1,2000"):
        with pytest.raises(ValueError):
            parse_streams(bad)


def test_cli_streams_with_the_chunk_worker_writes_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_engine.configure_parser(parser)
    out = tmp_path / "streams.json"
    args = parser.parse_args(["--engine", "espeak", "--streams", "1,2", "--stagger-ms", "20",
                              "--compare-unbatched", "--json", str(out), "--text", "One sentence. Two."])
    assert bench_engine.run(args) == 0
    report = json.loads(out.read_text())
    assert report["config"]["batching"] is False and report["config"]["stagger_ms"] == 20
    assert [lv["streams"] for lv in report["levels"]] == [1, 2]  # no unbatched twin for eSpeak
    assert all(lv["mode"] == "chunked" and lv["errors"] == 0 and lv["audio_s"] > 0 for lv in report["levels"])
