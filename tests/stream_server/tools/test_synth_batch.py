"""``stream-tts synth --batch``: lines rendered through one running batch equal solo synth, for any
stagger; bad lines get one clear error (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import engine.factory
from engine.config import EngineConfig
from engine.f5.engine import F5Engine
from engine.f5.weights import ResolvedWeights
from stream_server.__main__ import main
from tests.engine.f5.test_engine import files  # noqa: F401  (module fixture)
from tests.f5_fixtures import small_config

LINES = [
    {"id": "one", "text": "Hello world, a small test.", "seed": 1},
    {"id": "two.b", "text": "First sentence here. And a second sentence after it!", "voice": "quiet5",
     "seed": 2, "speed": 1.2},
    {"id": "three", "text": "Short one.", "seed": 3},
]


@pytest.fixture(scope="module")
def tiny(files: tuple[ResolvedWeights, Path]) -> F5Engine:  # noqa: F811
    weights, voices = files
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(voices), nfe=5,
                       vocoder_first_chunk_frames=8, vocoder_chunk_frames=24, max_batch_rows=2)
    return F5Engine(cfg, model_config=small_config(text_num_embeds=2545), weights=weights)


@pytest.fixture()
def use_tiny(tiny: F5Engine, monkeypatch: pytest.MonkeyPatch) -> F5Engine:
    monkeypatch.setattr(engine.factory, "create_engine", lambda cfg: (tiny, "test"))
    return tiny


def _write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _read(folder: Path, ident: str) -> tuple[np.ndarray, np.ndarray]:
    audio, rate = sf.read(folder / f"{ident}.wav", dtype="int16")
    assert rate == 24000
    return audio.astype(np.int32), np.load(folder / f"{ident}.npy")


def test_results_do_not_depend_on_the_stagger_and_equal_solo_synth(
    use_tiny: F5Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write_lines(tmp_path / "lines.jsonl", [*LINES[:2], "", LINES[2]])  # blank lines skipped
    for k in (0, 2):
        assert main(["synth", "--batch", str(src), "--out-dir", str(tmp_path / f"k{k}"),
                     "--stagger-steps", str(k)]) == 0
    assert "wrote 3 line(s)" in capsys.readouterr().out
    for line in LINES:
        a0, m0 = _read(tmp_path / "k0", str(line["id"]))
        a2, m2 = _read(tmp_path / "k2", str(line["id"]))
        assert m0.shape == m2.shape and m0.shape[1] == 100 and m0.dtype == np.float32
        assert np.abs(m0 - m2).max() <= 1e-4
        assert a0.shape == a2.shape and np.abs(a0 - a2).max() <= 1  # PCM16: at most one step
        assert np.abs(a0).max() > 0
    # solo synth of the two-sentence line (two segments) with the same seed, speed and voice
    line = LINES[1]
    out, mel = tmp_path / "solo.wav", tmp_path / "solo.npy"
    assert main(["synth", "--text", str(line["text"]), "--voice", "quiet5", "--seed", "2",
                 "--speed", "1.2", "--out", str(out), "--mel-out", str(mel)]) == 0
    a0, m0 = _read(tmp_path / "k0", "two.b")
    solo_audio = sf.read(out, dtype="int16")[0].astype(np.int32)
    solo_mel = np.load(mel)
    assert m0.shape == solo_mel.shape and np.abs(m0 - solo_mel).max() <= 1e-4
    assert a0.shape == solo_audio.shape and np.abs(a0 - solo_audio).max() <= 1


def test_mel_out_dir_gets_the_mels(use_tiny: F5Engine, tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "lines.jsonl", [LINES[2]])
    assert main(["synth", "--batch", str(src), "--out-dir", str(tmp_path / "wav"),
                 "--mel-out-dir", str(tmp_path / "mel")]) == 0
    assert (tmp_path / "wav" / "three.wav").exists() and not (tmp_path / "wav" / "three.npy").exists()
    assert np.load(tmp_path / "mel" / "three.npy").shape[1] == 100


def test_bad_lines_are_reported_together_with_line_numbers(
    use_tiny: F5Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write_lines(tmp_path / "bad.jsonl", [
        LINES[0],
        "{not json",
        {"text": "no id"},
        {"id": "one", "text": "duplicate id"},
        {"id": "x", "text": "who?", "voice": "nobody"},
        {"id": "../evil", "text": "path"},
        {"id": "y", "text": "   "},
        {"id": "z", "text": "fast", "speed": 9},
        {"id": "w", "text": "extra", "pitch": 2},
        "[1, 2]",
    ])
    code = main(["synth", "--batch", str(src), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for expected in ("line 2: invalid JSON", 'line 3: "id"', "line 4: duplicate id 'one'",
                     "line 5: unknown voice 'nobody'", "line 6: \"id\" '../evil'", 'line 7: "text"',
                     "line 8: speed", "line 9: unknown key(s) 'pitch'", "line 10: expected a JSON object"):
        assert expected in err, expected
    assert not (tmp_path / "out").exists()  # nothing rendered


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out-dir", "d", "--text", "Hi."], "--batch takes --out-dir"),
        ([], "--batch needs --out-dir"),
        (["--out-dir", "d", "--stagger-steps", "-1"], "--stagger-steps must be >= 0"),
    ],
)
def test_batch_flag_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           message: str) -> None:
    src = _write_lines(tmp_path / "l.jsonl", [LINES[0]])
    assert main(["synth", "--engine", "espeak", "--batch", str(src), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_batch_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["synth", "--engine", "espeak", "--batch", str(tmp_path / "none.jsonl"),
                 "--out-dir", str(tmp_path / "o")])
    assert code == 2 and "cannot read" in capsys.readouterr().err
