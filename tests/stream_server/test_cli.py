"""The stream-tts command line: subcommands, offline synth, and one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from stream_server.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_synth_renders_a_wav_through_the_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wav"
    text = "Offline rendering uses the same chunker. And the same audio post as streaming."
    assert main(["synth", "--engine", "espeak", "--text", text, "--out", str(out), "--pause-ms", "200"]) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and audio.ndim == 1
    assert 2.0 < audio.shape[0] / rate < 15.0
    assert float(abs(audio).max()) > 0.05
    assert abs(audio[-int(0.2 * rate) :]).max() == 0.0  # the last segment's pause is silence
    assert "2 segment(s)" in capsys.readouterr().out


def test_synth_reads_a_text_file_and_a_voice(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("你好，世界。这是一个测试。", encoding="utf-8")
    out = tmp_path / "zh.wav"
    assert main(["synth", "--engine", "espeak", "--voice", "cmn", "--text-file", str(src), "--out", str(out)]) == 0
    assert sf.info(out).duration > 0.5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["synth", "--engine", "espeak", "--out", "x.wav"], "exactly one of --text or --text-file"),
        (["synth", "--engine", "espeak", "--text", "Hi there.", "--mel-out", "m.npy", "--out", "x.wav"], "--mel-out"),
        (["synth", "--engine", "espeak", "--text", "  ", "--out", "x.wav"], "empty"),
        (["serve", "--config", "/nonexistent/c.toml"], "cannot read"),
    ],
)
def test_usage_and_config_errors_exit_2_with_one_line(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "x.wav").exists()


def test_bad_toml_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nportt = 1\n", encoding="utf-8")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "portt" in capsys.readouterr().err


def test_engine_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["synth", "--engine", "espeak", "--espeak-default-voice", "klingon", "--text", "Hello there.",
                 "--out", str(tmp_path / "x.wav")])
    assert code == 1
    assert "unknown_voice" in capsys.readouterr().err


def test_invalid_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--engine", "gpu"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_lazy_subcommands_are_only_imported_when_used() -> None:
    sys.modules.pop("stream_server.tools.bench", None)
    build_parser(["serve"])
    assert "stream_server.tools.bench" not in sys.modules
    parser = build_parser(["bench", "--help"])
    assert "stream_server.tools.bench" in sys.modules
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["bench", "--help"])
    assert info.value.code == 0


def test_python_dash_m_lists_the_subcommands() -> None:
    proc = subprocess.run([sys.executable, "-m", "stream_server", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0
    for name in ("serve", "synth", "bench", "bench-engine", "download"):
        assert name in proc.stdout


def test_missing_f5_weights_exit_1_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["synth", "--engine", "f5", "--checkpoint", str(tmp_path / "model.safetensors"),
                 "--vocab", str(tmp_path / "vocab.txt"), "--vocoder", str(tmp_path / "vocos"),
                 "--text", "Hello there.", "--out", str(tmp_path / "x.wav")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("stream-tts: weights_not_found:") and "model.safetensors" in err
