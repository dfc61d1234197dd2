"""Voices: reference-clip preprocessing, upload validation, the folder round trip and its cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.base import EngineError, UnknownVoiceError
from engine.f5.reference_audio import (
    clip_at_silence,
    prepare_reference_audio,
    to_pcm16,
    trim_silence,
)
from engine.f5.voices import (
    PreparedVoice,
    VoiceError,
    VoiceExistsError,
    VoiceStore,
    VoiceTooLargeError,
)

SR = 16000


def tone(seconds: float, amp: float = 0.3, sr: int = SR, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(round(seconds * sr), np.float32)


def wav_bytes(audio: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- preprocessing


def test_quiet_stereo_16k_clip_is_cut_at_the_gap_trimmed_and_raised() -> None:
    speech = np.concatenate([silence(0.5), tone(8.0), silence(1.5), tone(8.0), silence(0.5)])
    stereo = np.stack([speech * 0.1, speech * 0.06], axis=1)  # quiet and unequal channels

    audio, original_rms = prepare_reference_audio(stereo, SR)

    assert audio.dtype == np.float32 and audio.ndim == 1
    # cut at the 1.5 s gap after the first 8 s: leading 0.5 s and the gap trimmed, 50 ms appended
    assert len(audio) / 24000 == pytest.approx(8.05, abs=0.011)
    assert len(audio) <= 12 * 24000
    assert rms(audio) == pytest.approx(0.1, rel=0.01)
    expected_rms = rms(np.concatenate([tone(8.0) * 0.08, silence(0.05)]))
    assert original_rms == pytest.approx(expected_rms, rel=0.01)
    # edges: sound in the first 10 ms, the appended 50 ms is silent, sound just before it
    assert np.abs(audio[:240]).max() > 0.05
    assert np.abs(audio[-int(0.045 * 24000) :]).max() < 1e-3
    assert np.abs(audio[-int(0.07 * 24000) : -int(0.06 * 24000)]).max() > 0.05


def test_loud_audio_is_not_turned_down() -> None:
    audio, original_rms = prepare_reference_audio(tone(3.0, amp=0.8), SR)
    assert original_rms > 0.5
    assert rms(audio) == pytest.approx(original_rms, rel=0.01)


def test_a_clip_without_silence_is_cut_hard_at_12_s() -> None:
    clipped, rate = clip_at_silence(to_pcm16(tone(20.0)), SR)
    assert rate == SR and clipped.shape == (12 * SR, 1)


def test_short_pauses_are_used_when_there_is_no_long_one() -> None:
    # 4 s phrases with 300 ms pauses: no 1 s silence, so the 100 ms / -40 dBFS split is used
    phrases = [tone(4.0)] + [np.concatenate([silence(0.3), tone(4.0)]) for _ in range(4)]
    clipped, _ = clip_at_silence(to_pcm16(np.concatenate(phrases)), SR)
    assert 6 * SR < len(clipped) < 12 * SR
    # it ends inside a pause: the last 100 ms are silent
    assert np.abs(clipped[-int(0.1 * SR) :]).max() == 0


def test_long_silences_shrink_to_two_seconds() -> None:
    clip = np.concatenate([tone(3.0), silence(5.0), tone(3.0)])
    clipped, _ = clip_at_silence(to_pcm16(clip), SR)
    assert len(clipped) == 8 * SR  # each side keeps 1 s of the 5 s silence


def test_trim_silence_removes_quiet_edges_only() -> None:
    clip = np.concatenate([silence(0.3), tone(1.0, amp=0.001), tone(1.0), silence(0.2)])
    trimmed = trim_silence(to_pcm16(clip), SR)
    # the -63 dBFS tone counts as silence at -42 dBFS; trimming works on 10 ms blocks
    assert len(trimmed) == pytest.approx(SR, abs=SR // 100)
    assert np.abs(trimmed[:160]).max() > 0.05 * 32768
    assert trim_silence(to_pcm16(silence(1.0)), SR).size == 0


def test_stereo_is_trimmed_on_both_channels_before_the_downmix() -> None:
    # the right channel starts 0.4 s later: silence is measured over both channels together
    left = np.concatenate([silence(0.2), tone(1.0), silence(0.5)])
    right = np.concatenate([silence(0.6), tone(0.6, amp=0.2), silence(0.5)])
    trimmed = trim_silence(to_pcm16(np.stack([left, right], axis=1)), SR)
    assert trimmed.shape[1] == 2
    assert len(trimmed) == pytest.approx(1.0 * SR, abs=SR // 100)


def test_silent_audio_is_rejected() -> None:
    with pytest.raises(VoiceError, match="silent"):
        prepare_reference_audio(silence(3.0), SR)
    with pytest.raises(VoiceError, match="less than"):
        prepare_reference_audio(np.concatenate([silence(2.0), tone(0.2)]), SR)


# --- the store


@pytest.fixture
def store(tmp_path: Path) -> VoiceStore:
    return VoiceStore(tmp_path / "voices", max_upload_bytes=1_000_000, max_seconds=8.0)


def speech_clip(seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    return np.concatenate([silence(0.2, sr), tone(seconds, amp=0.05, sr=sr), silence(0.2, sr)])


def test_add_names_prepare_remove_round_trip(store: VoiceStore) -> None:
    assert store.names() == []
    added = store.add("alice", wav_bytes(speech_clip()), "  Hello, I am Alice\n")
    assert isinstance(added, PreparedVoice)
    assert store.names() == ["alice"]
    assert (store.folder / "alice.txt").read_text(encoding="utf-8") == "Hello, I am Alice\n"
    info = sf.info(store.folder / "alice.wav")  # stored whole, as uploaded, 16-bit
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert info.frames == len(speech_clip())

    voice = store.prepare("alice")
    assert voice.name == "alice"
    assert voice.text == "Hello, I am Alice.  "
    assert voice.audio.dtype == np.float32 and not voice.audio.flags.writeable
    assert voice.duration_s == pytest.approx(2.05, abs=0.011)
    np.testing.assert_array_equal(voice.audio, added.audio)  # the stored file is what was checked
    assert voice.rms == added.rms
    assert rms(voice.audio) == pytest.approx(0.1, rel=0.02)

    store.remove("alice")
    assert store.names() == []
    assert list(store.folder.iterdir()) == []
    with pytest.raises(UnknownVoiceError):
        store.prepare("alice")
    with pytest.raises(UnknownVoiceError):
        store.remove("alice")


def test_adding_an_existing_name_fails(store: VoiceStore) -> None:
    store.add("bob", wav_bytes(speech_clip()), "First take.")
    with pytest.raises(VoiceExistsError) as info:
        store.add("bob", wav_bytes(speech_clip(3.0)), "Second take.")
    assert info.value.code == "voice_exists"
    assert store.prepare("bob").text == "First take.  "


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "FLOAT")]
)
def test_flac_ogg_and_float_wav_uploads_are_accepted(
    store: VoiceStore, fmt: str, subtype: str
) -> None:
    stereo = np.stack([speech_clip(sr=22050), speech_clip(sr=22050) * 0.5], axis=1)
    voice = store.add("clip", wav_bytes(stereo, 22050, fmt, subtype), "你好，世界")
    assert voice.text == "你好，世界.  "
    assert voice.duration_s == pytest.approx(2.05, abs=0.02)


@pytest.mark.parametrize("name", ["", "a/b", "../etc", "x" * 65, "with space", "é", "a.b"])
def test_bad_names_are_rejected(store: VoiceStore, name: str) -> None:
    with pytest.raises(VoiceError, match="name"):
        store.add(name, wav_bytes(speech_clip()), "Some text.")
    assert not store.folder.exists() or not any(store.folder.iterdir())


@pytest.mark.parametrize(
    ("audio", "text", "error", "match"),
    [
        (b"RIFF not really a wav file", "Text.", VoiceError, "decoded"),
        (wav_bytes(tone(0.5)), "Text.", VoiceError, "s long"),
        (wav_bytes(tone(9.0)), "Text.", VoiceError, "s long"),
        (wav_bytes(silence(2.0)), "Text.", VoiceError, "silent"),
        (wav_bytes(speech_clip()), " \n\t", VoiceError, "empty"),
        (wav_bytes(speech_clip()), "x" * 501, VoiceError, "longer than 500"),
        (b"\0" * 1_000_001, "Text.", VoiceTooLargeError, "larger"),
    ],
    ids=["undecodable", "too_short", "too_long", "silent", "empty_text", "long_text", "too_big"],
)
def test_invalid_uploads_are_rejected(
    store: VoiceStore, audio: bytes, text: str, error: type[EngineError], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        store.add("voice", audio, text)
    assert isinstance(info.value, EngineError) and info.value.code in {
        "invalid_voice",
        "voice_too_large",
    }
    assert store.names() == []
    assert not store.folder.exists() or not any(store.folder.iterdir())


def test_prepare_is_cached_until_the_files_change(store: VoiceStore) -> None:
    store.add("carol", wav_bytes(speech_clip()), "Version one.")
    first = store.prepare("carol")
    assert store.prepare("carol") is first
    txt = store.folder / "carol.txt"
    txt.write_text("Version two", encoding="utf-8")
    stat = txt.stat()
    os.utime(txt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = store.prepare("carol")
    assert second is not first
    assert second.text == "Version two.  "
    assert store.prepare("carol") is second


def test_folder_voices_in_any_layout_are_listed_and_prepared(tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    folder.mkdir()
    stereo = np.stack([speech_clip(sr=44100), speech_clip(sr=44100)], axis=1)
    sf.write(folder / "dave.wav", stereo, 44100, subtype="PCM_24")
    (folder / "dave.txt").write_text("\ufeff这是参考。\n", encoding="utf-8")
    sf.write(folder / "no_transcript.wav", speech_clip(), SR)
    (folder / ".dave.wav.1234.tmp").write_bytes(b"partial")
    store = VoiceStore(folder)
    assert store.names() == ["dave"]
    voice = store.prepare("dave")
    assert voice.text == "这是参考。"
    assert voice.duration_s == pytest.approx(2.05, abs=0.011)
    with pytest.raises(UnknownVoiceError):
        store.prepare("no_transcript")
    with pytest.raises(UnknownVoiceError):
        store.prepare("../voices/dave")


def test_broken_folder_voices_raise_voice_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    (tmp_path / "junk.txt").write_text("Text.", encoding="utf-8")
    sf.write(tmp_path / "mute.wav", speech_clip(), SR)
    (tmp_path / "mute.txt").write_text("  \n", encoding="utf-8")
    store = VoiceStore(tmp_path)
    with pytest.raises(VoiceError, match="cannot be read"):
        store.prepare("junk")
    with pytest.raises(VoiceError, match="empty transcript"):
        store.prepare("mute")


def test_missing_folder_lists_no_voices(tmp_path: Path) -> None:
    assert VoiceStore(tmp_path / "absent").names() == []


def test_names_are_read_again_only_when_the_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def put(name: str) -> None:
        sf.write(tmp_path / f"{name}.wav", speech_clip(), SR)
        (tmp_path / f"{name}.txt").write_text("Text.", encoding="utf-8")

    def age_folder() -> None:  # as if the last change was a minute ago
        old = tmp_path.stat().st_mtime_ns - 60_000_000_000
        os.utime(tmp_path, ns=(old, old))

    scans: list[str] = []
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: scans.append(pattern) or real_glob(self, pattern))
    store = VoiceStore(tmp_path)
    put("ann")
    assert store.names() == ["ann"]
    assert store.names() == ["ann"] and len(scans) == 2  # changed just now: read every time
    age_folder()
    scans.clear()
    assert store.names() == ["ann"] and store.names() == ["ann"]
    assert len(scans) == 1  # settled: one read, then one stat per call
    put("bob")  # a file added by hand changes the folder's time
    assert store.names() == ["ann", "bob"]
    age_folder()
    assert store.names() == ["ann", "bob"]
    store.remove("bob")
    assert store.names() == ["ann"]
