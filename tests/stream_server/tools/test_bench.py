"""The TTFA benchmark: pure statistics and playback simulation, report writing, CLI errors, and one
end-to-end run against the real server with the eSpeak engine."""

from __future__ import annotations

import argparse
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from stream_server.tools import bench
from stream_server.tools.bench import load_texts, split_tokens
from stream_server.tools.bench_report import (
    ClientResult,
    format_table,
    percentile,
    simulate_playback,
    summarize,
    summarize_level,
    write_json,
    write_plot,
)
from tests.server_fixtures import running_server, ws_url


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.configure_parser(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(n: int) -> None:
    values = list(np.random.default_rng(n).exponential(30.0, size=n))
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summarize_and_empty() -> None:
    s = summarize([10.0, 20.0, 30.0, 40.0])
    assert (s["n"], s["mean"], s["max"], s["p50"]) == (4, 25.0, 40.0, 25.0)
    assert set(s) == {"n", "mean", "max", "p50", "p90", "p95", "p99"}
    assert math.isnan(summarize([])["p99"])


FRAME = 0.02


def test_playback_burst_and_realtime_arrivals_never_underrun() -> None:
    burst = [0.5 + 0.0001 * i for i in range(50)]  # all frames at once (faster than real time)
    assert simulate_playback(burst, [FRAME] * 50) == (0, 0.0, [])
    realtime = [1.0 + FRAME * i for i in range(50)]  # exactly on time
    assert simulate_playback(realtime, [FRAME] * 50) == (0, 0.0, [])


def test_playback_gap_is_one_underrun_with_its_stall() -> None:
    arrivals = [FRAME * i for i in range(10)]
    arrivals[5:] = [a + 0.05 for a in arrivals[5:]]  # frame 5 and after arrive 50 ms late
    underruns, stall, at = simulate_playback(arrivals, [FRAME] * 10)
    assert underruns == 1
    assert stall == pytest.approx(0.05)
    assert at == [pytest.approx(0.1)]  # after 5 frames of audio


def test_playback_slower_than_realtime_underruns_every_frame() -> None:
    arrivals = [0.025 * i for i in range(11)]  # 20 ms of audio every 25 ms
    underruns, stall, at = simulate_playback(arrivals, [FRAME] * 11)
    assert underruns == 10
    assert stall == pytest.approx(10 * 0.005)
    assert len(at) == 10


def test_playback_prebuffer_absorbs_jitter() -> None:
    arrivals = [0.0, 0.02, 0.055, 0.06, 0.08]  # frame 2 is 15 ms late
    assert simulate_playback(arrivals, [FRAME] * 5)[0] == 1
    assert simulate_playback(arrivals, [FRAME] * 5, prebuffer_s=0.02) == (0, 0.0, [])
    with pytest.raises(ValueError):
        simulate_playback([0.0], [])


@pytest.mark.parametrize(
    "text",
    [
        "Hello there, world! How are you?",
        "你好，欢迎使用流式语音合成。",
        "我们的新版 App 支持 dark mode 和离线下载。 ",
        "  leading and trailing spaces  ",
    ],
)
def test_split_tokens_rejoins_exactly(text: str) -> None:
    tokens = split_tokens(text)
    assert "".join(tokens) == text
    assert len(tokens) >= 3


def test_split_tokens_shape() -> None:
    assert split_tokens("Hi there, you.") == ["Hi", " there,", " you."]
    assert split_tokens("你好。") == ["你", "好", "。"]


def test_shipped_texts_cover_english_chinese_and_mixed() -> None:
    texts = load_texts(bench.DEFAULT_TEXTS)
    assert 10 <= len(texts) <= 20
    assert not any(t.startswith("#") for t in texts)

    def has_cjk(t: str) -> bool:
        return any("\u4e00" <= c <= "\u9fff" for c in t)

    def has_latin(t: str) -> bool:
        return any(c.isascii() and c.isalpha() for c in t)

    assert any(has_latin(t) and not has_cjk(t) for t in texts)
    assert any(has_cjk(t) and not has_latin(t) for t in texts)
    assert any(has_cjk(t) and has_latin(t) for t in texts)


def synthetic_level() -> dict[str, object]:
    results = [
        ClientResult(
            2,
            0,
            client_ttfa_ms=12.0,
            sentence_ttfa_ms=12.0,
            server_ttfa_ms=8.0,
            rtf=0.03,
            segment_rtfs=[0.02, 0.04],
            underruns=1,
            stall_ms=5.0,
        ),
        ClientResult(
            2,
            1,
            client_ttfa_ms=20.0,
            sentence_ttfa_ms=20.0,
            server_ttfa_ms=15.0,
            rtf=0.05,
            segment_rtfs=[0.05],
            underruns=0,
        ),
        ClientResult(2, 0, error="OSError: boom"),
        ClientResult(2, 1, refused="over_capacity"),
    ]
    return summarize_level(2, results)


def test_summarize_level_counts_errors_and_aggregates() -> None:
    lv = synthetic_level()
    assert (lv["clients"], lv["utterances"], lv["errors"], lv["refused"]) == (2, 4, 1, 1)
    assert lv["client_ttfa_ms"]["p50"] == pytest.approx(16.0)  # type: ignore[index]
    assert lv["server_ttfa_ms"]["n"] == 2  # type: ignore[index]
    assert lv["segment_rtf"]["n"] == 3  # type: ignore[index]
    assert lv["underruns"]["total"] == 1  # type: ignore[index]
    table = format_table([lv])  # type: ignore[list-item]
    assert "client TTFA" in table
    assert table.splitlines()[2].split()[:4] == ["2", "4", "1", "1"]


def test_json_and_plot_are_written(tmp_path: Path) -> None:
    lv = synthetic_level()
    empty = summarize_level(4, [])
    write_json(tmp_path / "r.json", {"url": "ws://x"}, [lv, empty])  # type: ignore[list-item]
    data = json.loads((tmp_path / "r.json").read_text())  # NaN became null: strict JSON parses
    assert data["levels"][1]["client_ttfa_ms"]["p50"] is None
    assert len(data["levels"][0]["results"]) == 4
    write_plot(tmp_path / "r.png", [lv, empty])  # type: ignore[list-item]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1/v1/stream", "--url must look like"),
        ("ws://127.0.0.1:{port}/v1/stream", "cannot connect"),
    ],
)
def test_unreachable_server_is_one_line_error(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = bench.run(parse("--url", url.format(port=free_port()), "--clients", "1"))
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert message in err and err.count("\n") == 1


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.run(parse("--clients", "1,x")) == 1
    assert bench.run(parse("--texts", "/nonexistent/file.txt")) == 1
    assert bench.run(parse("--light", "--url", "wss://127.0.0.1:9/v1/stream")) == 1
    err = capsys.readouterr().err
    assert "--clients" in err and "cannot read texts file" in err and "--light speaks ws:// only" in err


@pytest.fixture(scope="module")
def espeak_server_url() -> object:
    from engine.espeak import EspeakEngine

    with running_server(engine=EspeakEngine()) as url:
        yield ws_url(url)


@pytest.mark.parametrize(("llm_rate", "mode"), [("0", "decode"), ("200", "decode"), ("0", "light")])
def test_end_to_end_against_espeak_server(
    espeak_server_url: str, llm_rate: str, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there. This is a short benchmark text.\n你好，这是一个测试。\n")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = parse(
        "--url",
        espeak_server_url,
        "--clients",
        "1,2",
        "--texts",
        str(texts),
        "--llm-rate",
        llm_rate,
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        *(["--light"] if mode == "light" else []),
    )
    assert bench.run(args) == 0
    assert "client TTFA" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["config"]["client_mode"] == mode
    assert [lv["clients"] for lv in data["levels"]] == [1, 2]
    for lv in data["levels"]:
        assert lv["errors"] == 0
        assert lv["utterances"] == lv["clients"]
        assert lv["client_ttfa_ms"]["p50"] > 0
        assert lv["server_ttfa_ms"]["p50"] > 0
        assert lv["underruns"]["total"] >= 0 and lv["underruns"]["n"] == lv["clients"]
        for r in lv["results"]:
            assert r["client_ttfa_ms"] > 0 and r["server_ttfa_ms"] > 0
            assert 0 < r["rtf"] < 1.0  # eSpeak is far faster than real time
            assert r["segment_rtfs"]
            # decoded Opus duration = the server's audio_ms, up to the last frame's padding
            assert r["audio_ms"] > 500
            assert abs(r["decoded_ms"] - r["audio_ms"]) <= 20.0 + 1e-6
            assert r["frames"] == round(r["decoded_ms"] / 20)
            if llm_rate != "0":  # the first sentence completes after the first token was sent
                assert r["sentence_ttfa_ms"] < r["client_ttfa_ms"]
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_server_errors_are_reported_per_utterance(
    espeak_server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there.\n")
    out_json = tmp_path / "bench.json"
    args = parse(
        "--url", espeak_server_url, "--clients", "1", "--texts", str(texts),
        "--voice", "klingon", "--json", str(out_json),
    )  # fmt: skip
    assert bench.run(args) == 1  # the run completes, but an utterance had an error
    level = json.loads(out_json.read_text())["levels"][0]
    assert level["errors"] == 1
    assert level["results"][0]["error"].startswith("unknown_voice")
    assert " 1     1    1    0 |" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["decode", "light"])
def test_refused_sessions_are_counted_apart_from_errors(tmp_path: Path, mode: str) -> None:
    from stream_server.config import AppConfig, ServerConfig
    from tests.server_fixtures import SineBurstEngine

    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there. A second sentence.\n")
    out_json = tmp_path / "bench.json"
    config = AppConfig(server=ServerConfig(port=0, max_sessions=1))
    # the served session lasts seconds (slow engine), so the other two arrive while it is open
    with running_server(config, SineBurstEngine(ms_per_char=100.0, delay_s=0.1)) as url:
        args = parse("--url", ws_url(url), "--clients", "3", "--texts", str(texts), "--json", str(out_json),
                     *(["--light"] if mode == "light" else []))
        assert bench.run(args) == 0  # refusals are not errors
    level = json.loads(out_json.read_text())["levels"][0]
    # at least two of three are refused (all three when the bench's own probe connection is still
    # being closed on the server as they arrive)
    assert level["errors"] == 0 and level["refused"] >= 2
    assert {r["refused"] for r in level["results"]} <= {None, "overloaded"}
    assert level["underruns"]["n"] == 3 - level["refused"]  # only served sessions are measured
