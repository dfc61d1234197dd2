"""The eSpeak NG engine: real speech out, voices, options, cancellation and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import espeak, espeak_text
from engine.base import Engine, InvalidOptionError, SynthOptions, UnknownVoiceError
from engine.config import EngineConfig
from engine.espeak import EspeakEngine

EN = "Hello there, this is a test of the streaming speech server. It should sound natural."
ZH = "你好，欢迎使用流式语音合成服务器。今天天气很好。"
CLAUSES = "The weather tomorrow looks mostly sunny, with a high of twenty-three degrees, and a light breeze."


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def synth(engine: EspeakEngine, text: str, voice: str, **opts: float) -> list[np.ndarray]:
    return list(engine.synthesize(text, voice, SynthOptions(**opts)))  # type: ignore[arg-type]


def assert_same_speech(a: np.ndarray, b: np.ndarray) -> None:
    """Same speech up to eSpeak's call-to-call jitter (a few samples of length and of phase).

    Compares lengths and 20 ms loudness envelopes, which jitter does not change but a different
    voice, text or a mixed-up buffer would.
    """
    assert abs(a.shape[0] - b.shape[0]) <= 0.01 * b.shape[0]
    frame = 480
    n = min(a.shape[0], b.shape[0]) // frame
    env_a = np.sqrt(np.mean(a[: n * frame].reshape(n, frame) ** 2, axis=1))
    env_b = np.sqrt(np.mean(b[: n * frame].reshape(n, frame) ** 2, axis=1))
    assert np.corrcoef(env_a, env_b)[0, 1] > 0.95


def test_implements_engine_protocol(engine: EspeakEngine) -> None:
    assert isinstance(engine, Engine)
    assert (engine.name, engine.sample_rate, engine.device) == ("espeak", 24000, "cpu")
    assert engine.default_voice == "auto"


def test_voices_include_english_and_mandarin(engine: EspeakEngine) -> None:
    voices = {v.name: v for v in engine.voices()}
    assert {"auto", "en-us", "cmn"} <= set(voices)
    assert voices["cmn"].language.startswith("zh")
    assert all(v.description for v in voices.values())
    # every listed voice really loads and speaks
    for name in voices:
        assert sum(c.shape[0] for c in synth(engine, "1 2 3", name)) > 0


@pytest.mark.parametrize(("text", "voice"), [(EN, "en-us"), (ZH, "cmn")])
def test_speech_is_nonsilent_float32_of_plausible_length(
    engine: EspeakEngine, text: str, voice: str
) -> None:
    chunks = synth(engine, text, voice)
    assert len(chunks) >= 5
    assert all(c.dtype == np.float32 and c.ndim == 1 and c.shape[0] > 0 for c in chunks)
    audio = np.concatenate(chunks)
    duration_s = audio.shape[0] / engine.sample_rate
    assert 1.5 < duration_s < 10.0
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms > 0.02
    assert np.max(np.abs(audio)) <= 1.0
    # light trim: it starts and ends close to the sound, not after a long silence
    edge = engine.sample_rate // 20  # 50 ms
    assert np.max(np.abs(audio[:edge])) > 0.003
    assert np.max(np.abs(audio[-edge:])) > 0.003


def test_chunks_join_without_seams(engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked resampling must equal the one-shot result (no seams at chunk boundaries)."""
    # eSpeak is not bit-exact from call to call, so every call returns one captured rendering
    with espeak._LOCK:
        raw = espeak._synth_locked(espeak._load_locked(), EN, "en-us", 175)
    monkeypatch.setattr(espeak, "_synth_locked", lambda *args, **kwargs: raw)
    chunks = synth(engine, CLAUSES, "en-us")
    a = np.concatenate(chunks)
    b = np.concatenate(
        list(EspeakEngine(chunk_ms=1000).synthesize(CLAUSES, "en-us", SynthOptions()))
    )
    assert len(chunks) > 20
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-5)
    # three clauses: the first trimmed at its start, the last at its end; then 22050 -> 24000 Hz
    assert len(espeak_text.split_clauses(CLAUSES)) == 3
    x = raw.astype(np.float32) / 32768.0
    n_in = espeak._trim_edges(x, 22050, True, False).shape[0] + x.shape[0]
    n_in += espeak._trim_edges(x, 22050, False, True).shape[0]
    assert a.shape[0] == -(-n_in * 160 // 147)


@pytest.mark.parametrize(("text", "voice"), [(CLAUSES, "en-us"), (ZH, "cmn")])
def test_clause_by_clause_matches_one_call(engine: EspeakEngine, text: str, voice: str) -> None:
    """Split synthesis keeps eSpeak's own pauses: same duration as one call within 20 ms (a lost
    pause would cost 150 ms or more; eSpeak's state carried over from earlier calls, e.g. another
    voice, moves the length by ~10 ms)."""
    assert len(espeak_text.split_clauses(text)) >= 2
    split = sum(c.shape[0] for c in synth(engine, text, voice)) / 24000
    with espeak._LOCK:
        raw = espeak._synth_locked(espeak._load_locked(), text, voice, 175)
    whole = espeak._trim_edges(raw.astype(np.float32) / 32768.0, 22050).shape[0] / 22050
    assert split == pytest.approx(whole, abs=0.020)


def spy_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, bool]]:
    """Record (text, eSpeak voice, end pause) of every eSpeak call."""
    calls: list[tuple[str, str, bool]] = []
    real = espeak._synth_locked

    def spy(lib: object, text: str, voice: str, wpm: int, end_pause: bool = False) -> np.ndarray:
        calls.append((text, voice, end_pause))
        return real(lib, text, voice, wpm, end_pause)  # type: ignore[arg-type]

    monkeypatch.setattr(espeak, "_synth_locked", spy)
    return calls


def test_first_chunk_needs_only_the_first_clause(
    engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_calls(monkeypatch)
    gen = engine.synthesize(CLAUSES, "en-us", SynthOptions())
    next(gen)
    assert calls == [("The weather tomorrow looks mostly sunny,", "en-us", True)]
    gen.close()


def test_fast_start_first_call_is_about_one_second_of_speech(
    engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_calls(monkeypatch)
    gen = engine.synthesize(CLAUSES, "en-us", SynthOptions(), fast_start=True)
    first = next(gen)
    # cut inside the first clause, with a comma for "more to come" intonation and no pause
    assert calls == [("The weather tomorrow,", "en-us", False)]
    assert first.shape[0] > 0
    rest = list(gen)
    texts = [c[0] for c in calls]
    assert texts[1] == "looks mostly sunny,"
    # the same words in the same order as without the fast start
    assert " ".join(texts).replace("tomorrow,", "tomorrow") == CLAUSES
    audio_s = sum(c.shape[0] for c in [first, *rest]) / 24000
    plain_s = sum(c.shape[0] for c in synth(engine, CLAUSES, "en-us")) / 24000
    assert audio_s == pytest.approx(plain_s, abs=0.15)


@pytest.mark.parametrize(
    ("text", "espeak_voice"),
    [(EN, "en-us"), (ZH, "cmn"), ("こんにちは、元気ですか。", "ja"), ("안녕하세요.", "ko"),
     ("Please say 你好 to everyone.", "cmn"), ("Привет, как дела?", "ru")],
)
def test_auto_voice_reads_each_segment_with_the_voice_of_its_script(
    engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch, text: str, espeak_voice: str
) -> None:
    calls = spy_calls(monkeypatch)
    audio = synth(engine, text, "auto")
    assert audio and {voice for _, voice, _ in calls} == {espeak_voice}


def test_auto_voice_speaks_chinese_like_the_mandarin_voice(engine: EspeakEngine) -> None:
    auto = np.concatenate(synth(engine, ZH, "auto"))
    assert_same_speech(auto, np.concatenate(synth(engine, ZH, "cmn")))
    english = np.concatenate(synth(engine, ZH, "en-us"))  # reads "Chinese letter ..." per character
    assert english.shape[0] > 1.5 * auto.shape[0]


def test_speed_option_shortens_audio(engine: EspeakEngine) -> None:
    normal = sum(c.shape[0] for c in synth(engine, EN, "en-us"))
    fast = sum(c.shape[0] for c in synth(engine, EN, "en-us", speed=1.6))
    slow = sum(c.shape[0] for c in synth(engine, EN, "en-us", speed=0.6))
    assert fast < 0.8 * normal
    assert slow > 1.3 * normal


def test_unknown_voice_and_bad_options_raise_before_yielding(engine: EspeakEngine) -> None:
    with pytest.raises(UnknownVoiceError, match="klingon"):
        engine.synthesize(EN, "klingon", SynthOptions())
    with pytest.raises(InvalidOptionError):
        engine.synthesize(EN, "en-us", SynthOptions(speed=3.0))
    with pytest.raises(UnknownVoiceError):
        EspeakEngine(EngineConfig(espeak_default_voice="nope"))


def test_empty_or_control_text(engine: EspeakEngine) -> None:
    assert synth(engine, "   \n ", "en-us") == []
    # an embedded NUL must not cut the text short (it would end eSpeak's C string)
    whole = sum(c.shape[0] for c in synth(engine, "one two\x00 three four", "en-us"))
    head = sum(c.shape[0] for c in synth(engine, "one two", "en-us"))
    assert whole > 1.5 * head


def test_voice_name_is_case_insensitive_and_default_used_when_empty(
    engine: EspeakEngine,
) -> None:
    a = np.concatenate(synth(engine, "Testing one two.", "EN-US"))
    b = np.concatenate(synth(engine, "Testing one two.", ""))
    c = np.concatenate(synth(engine, "Testing one two.", "en-us"))
    assert_same_speech(a, c)
    assert_same_speech(b, c)


def test_closing_early_is_safe_and_next_call_works(engine: EspeakEngine) -> None:
    gen = engine.synthesize(EN, "en-us", SynthOptions())
    first = next(gen)
    assert first.shape[0] > 0
    gen.close()
    again = np.concatenate(synth(engine, EN, "en-us"))
    reference = np.concatenate(synth(engine, EN, "en-us"))
    assert_same_speech(again, reference)
    assert 0 < first.shape[0] <= 1440  # one 60 ms chunk at most


def test_concurrent_threads_are_serialized(engine: EspeakEngine) -> None:
    expected = {
        "en-us": np.concatenate(synth(engine, EN, "en-us")),
        "cmn": np.concatenate(synth(engine, ZH, "cmn")),
    }
    results: dict[str, list[np.ndarray]] = {"en-us": [], "cmn": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(voice: str, text: str) -> None:
        try:
            barrier.wait()
            for _ in range(4):
                results[voice].append(np.concatenate(synth(engine, text, voice)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=("en-us", EN)),
        threading.Thread(target=worker, args=("cmn", ZH)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for voice, outs in results.items():
        assert len(outs) == 4
        for out in outs:  # interleaved calls never mixed voices or buffers
            assert_same_speech(out, expected[voice])


def test_prints_nothing(engine: EspeakEngine, capfd: pytest.CaptureFixture[str]) -> None:
    synth(engine, EN, "en-us")
    synth(engine, "<b>&amp; ###</b> \u200b", "de")
    with pytest.raises(UnknownVoiceError):
        engine.synthesize(EN, "xx", SynthOptions())
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_warmup_returns_seconds(engine: EspeakEngine) -> None:
    spent = engine.warmup()
    assert 0.0 < spent < 30.0


def test_first_piece_length_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_calls(monkeypatch)
    whole_clause = EspeakEngine(EngineConfig(espeak_first_piece_s=0.0))
    list(whole_clause.synthesize(CLAUSES, "en-us", SynthOptions(), fast_start=True))
    assert calls[0] == ("The weather tomorrow looks mostly sunny,", "en-us", True)
    calls.clear()
    short = EspeakEngine(EngineConfig(espeak_first_piece_s=0.5))
    list(short.synthesize(CLAUSES, "en-us", SynthOptions(), fast_start=True))
    assert calls[0] == ("The weather,", "en-us", False)
    with pytest.raises(ValueError, match="espeak_first_piece_s"):
        EngineConfig(espeak_first_piece_s=-1.0)
