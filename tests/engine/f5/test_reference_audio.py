"""Reference-clip preprocessing equals the reference's own, sample for sample.

Each clip is written as a 16-bit WAV (the usual reference-clip format); the reference runs its
``preprocess_ref_audio_text`` on the file (pydub) and ``infer_batch_process`` on the WAV that writes,
and we run ``reference_pcm`` / ``prepare_reference_audio`` on the file read as float, the way the
voice store reads it. Clip edges fall off the 1 ms and 10 ms grids on purpose.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.f5.pcm_grid import length_ms, ms_slice, upsample_linear
from engine.f5.reference_audio import prepare_reference_audio, reference_pcm
from tests.f5_oracle import import_pydub, reference_infer, reference_preprocess

REF_TEXT = "Some reference words."


@pytest.fixture
def ref_infer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``f5_tts.infer.utils_infer`` with the real pydub (the preprocessing under test)."""
    if not import_pydub():
        pytest.skip("pydub (test extra) is not installed or not importable")
    yield from reference_infer(monkeypatch)


# --- clips ---------------------------------------------------------------------------------------


def speech(seconds: float, sr: int, amp: float, seed: int = 0) -> np.ndarray:
    """Voice-like float64 (n,): harmonics of a wobbling pitch under a syllable envelope whose dips
    go down to about -30 dB below the peak, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    f0 = 140 + 25 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 7))
    envelope = 0.03 + 0.97 * np.abs(np.sin(2 * np.pi * 2.7 * t + 0.4)) ** 1.5
    wave = wave * envelope + 0.02 * rng.standard_normal(t.size)
    return amp * wave / np.abs(wave).max()


def quiet(seconds: float, sr: int, db: float | None = None, seed: int = 1) -> np.ndarray:
    """Digital silence (``db`` None) or white noise at ``db`` dBFS RMS."""
    n = round(seconds * sr)
    if db is None:
        return np.zeros(n)
    return 10 ** (db / 20) * np.random.default_rng(seed).standard_normal(n)


def cat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    n = max(left.size, right.size)
    out = np.zeros((n, 2))
    out[: left.size, 0] = left
    out[: right.size, 1] = right
    return out


# name -> (sample rate, builder); lengths like 0.2573 s put every edge off the ms grids
CLIPS: dict[str, tuple[int, Callable[[int], np.ndarray]]] = {
    "mono_loud_silence_22050": (22050, lambda sr: cat(
        quiet(0.2573, sr), speech(2.3117, sr, 0.9), quiet(0.3411, sr))),
    "mono_quiet_noise_floor_44100": (44100, lambda sr: cat(
        quiet(0.4129, sr, -63), speech(1.8763, sr, 0.03, seed=2), quiet(0.2907, sr, -58))),
    "stereo_quiet_48000": (48000, lambda sr: stereo(
        cat(quiet(0.3137, sr), speech(2.0531, sr, 0.02, seed=3), quiet(0.1999, sr)),
        cat(quiet(0.3301, sr), speech(2.1003, sr, 0.012, seed=4)))),
    "stereo_loud_no_silence_44100": (44100, lambda sr: stereo(
        speech(2.71234, sr, 0.95, seed=5), speech(2.71234, sr, 0.5, seed=6))),
    "mono_no_silence_24000": (24000, lambda sr: speech(3.31725, sr, 0.6, seed=7)),
    "mono_edges_near_threshold_24000": (24000, lambda sr: cat(
        quiet(0.3007, sr, -42.3), speech(1.5013, sr, 0.2, seed=8), quiet(0.2413, sr, -41.8))),
    "mono_loud_silence_16000": (16000, lambda sr: cat(
        quiet(0.1234, sr), speech(1.9876, sr, 0.7, seed=9), quiet(0.4321, sr))),
    "stereo_below_11025_8000": (8000, lambda sr: stereo(
        cat(quiet(0.2111, sr), speech(1.7777, sr, 0.5, seed=10), quiet(0.3333, sr)),
        cat(quiet(0.2222, sr), speech(1.7, sr, 0.3, seed=11)))),
    # over 12 s: cut at a >= 1 s pause at -50 dBFS ...
    "long_pauses_48000": (48000, lambda sr: cat(*[
        cat(speech(3.1017, sr, 0.5, seed=20 + k), quiet(1.2031, sr, -70, seed=k)) for k in range(4)])),
    # ... else at a >= 100 ms pause at -40 dBFS (with a -45 dBFS floor), else hard at 12 s
    "long_short_pauses_22050": (22050, lambda sr: cat(*[
        cat(speech(2.6011, sr, 0.5, seed=30 + k), quiet(0.3007, sr, -45, seed=k)) for k in range(6)])),
    "long_no_pause_44100": (44100, lambda sr: speech(13.4567, sr, 0.4, seed=40)),
}


def write_and_read(tmp_path: Path, audio: np.ndarray, sr: int) -> tuple[Path, np.ndarray]:
    path = tmp_path / "clip.wav"
    sf.write(path, audio, sr, subtype="PCM_16")
    read, read_sr = sf.read(path, dtype="float32", always_2d=True)
    assert read_sr == sr
    return path, read


class _RecordingModel:
    """Records the waveform ``infer_batch_process`` conditions on."""

    def __init__(self) -> None:
        self.cond: torch.Tensor | None = None

    def sample(self, cond: torch.Tensor, duration: int, **_: Any) -> Any:
        self.cond = cond.clone()
        return torch.zeros(1, duration, 100), None


class _UnitVocoder:
    """Ones: the reference's output is then just its gain, rms / 0.1 for a quiet reference."""

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.ones(1, mel.shape[-1] * 256)


def reference_condition(ref_infer: Any, pcm: np.ndarray, rate: int, text: str) -> tuple[np.ndarray, float]:
    """(float32 (m,) waveform the reference's model gets, output gain) for its preprocessed WAV."""
    wave = torch.from_numpy(np.ascontiguousarray(pcm.T, dtype=np.float32) / 32768.0)
    model = _RecordingModel()
    out = list(ref_infer.infer_batch_process(
        (wave, rate), text, ["Some generated text."], model, _UnitVocoder(), progress=None,
        device="cpu", nfe_step=7,
    ))  # fmt: skip
    assert model.cond is not None
    return model.cond.squeeze(0).numpy(), float(out[0][0][0])


# --- against the reference -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLIPS))
def test_preprocessing_equals_the_reference_sample_for_sample(
    ref_infer: Any, tmp_path: Path, name: str
) -> None:
    sr, build = CLIPS[name]
    path, audio = write_and_read(tmp_path, build(sr), sr)
    expected_pcm, expected_rate, ref_text = reference_preprocess(ref_infer, path, REF_TEXT)

    pcm, rate = reference_pcm(audio, sr)
    assert rate == expected_rate
    assert pcm.shape == expected_pcm.shape  # the same samples kept ...
    np.testing.assert_array_equal(pcm, expected_pcm)  # ... with the same 16-bit values

    expected, gain = reference_condition(ref_infer, expected_pcm, expected_rate, ref_text)
    ours, rms = prepare_reference_audio(audio, sr)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)
    assert gain == pytest.approx(min(rms / 0.1, 1.0), rel=1e-6)


def test_clips_cover_what_they_claim() -> None:
    """The cases above exercise each branch: cut at a long pause, at a short one, hard at 12 s."""
    lengths = {}
    for name in ("long_pauses_48000", "long_short_pauses_22050", "long_no_pause_44100"):
        sr, build = CLIPS[name]
        pcm, rate = reference_pcm(build(sr).astype(np.float32), sr)
        lengths[name] = pcm.shape[0] / rate
    assert 6.0 < lengths["long_pauses_48000"] < 12.0  # three 3.1 s phrases and their pauses
    assert 6.0 < lengths["long_short_pauses_22050"] < 12.0
    assert lengths["long_no_pause_44100"] == pytest.approx(12.0 + 0.05, abs=0.011)


def espeak_clip() -> np.ndarray:
    """79,614 samples at 24 kHz: 0.26 s of silence, 65,214 samples of eSpeak NG speech (cut from a
    longer read), 0.34 s of silence. The end of the kept speech is 0.25 ms off the ms grid."""
    from engine.base import SynthOptions
    from engine.config import EngineConfig
    from engine.espeak import EspeakEngine

    espeak = EspeakEngine(EngineConfig())
    text = "Hello there. This is the default voice, made with a speech synthesizer."
    voice = np.concatenate(list(espeak.synthesize(text, "en-us", SynthOptions())))
    onset = int(np.flatnonzero(np.abs(voice) > 0.05)[0])
    assert voice.size > onset + 65214
    speech = voice[onset : onset + 65214]
    return cat(quiet(0.26, 24000), speech, quiet(0.34, 24000)).astype(np.float32)


def test_espeak_clip_keeps_the_reference_sample_count(ref_infer: Any, tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader")
    clip = espeak_clip()
    assert clip.size == 79614
    # the speech starts and ends loud (first and last 10 ms above -42 dBFS) ...
    level = lambda x: 20 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-12)  # noqa: E731
    assert level(clip[6240:6480]) > -42 and level(clip[71214:71454]) > -42
    path, audio = write_and_read(tmp_path, clip, 24000)
    expected_pcm, _, ref_text = reference_preprocess(ref_infer, path, REF_TEXT)
    # ... so 10 ms blocks alone would keep 65,214 + 1,200 samples; the reference keeps up to
    # the last whole ms (2717 ms) and appends 50 ms made at 11025 Hz, raised to 24 kHz (1198)
    assert expected_pcm.shape == (66406, 1)
    pcm, _ = reference_pcm(audio, 24000)
    np.testing.assert_array_equal(pcm, expected_pcm)
    ours, _ = prepare_reference_audio(audio, 24000)
    expected, _ = reference_condition(ref_infer, expected_pcm, 24000, ref_text)
    assert ours.shape == expected.shape == (66406,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)


# --- the millisecond grid against pydub itself ---------------------------------------------------


def test_ms_slices_equal_pydub_slices() -> None:
    if not import_pydub():
        pytest.skip("pydub (test extra) is not installed or not importable")
    from pydub import AudioSegment

    rng = np.random.default_rng(0)
    for sr, n, channels in [(24000, 13, 1), (22050, 79614, 2), (44100, 1001, 1), (8000, 37, 2)]:
        pcm = rng.integers(-32768, 32767, size=(n, channels), dtype=np.int16)
        seg = AudioSegment(pcm.tobytes(), frame_rate=sr, sample_width=2, channels=channels)
        assert len(seg) == length_ms(n, sr)
        for a, b in [(0, 1), (0, len(seg)), (3, 17), (len(seg) - 1, len(seg) + 5), (5, 2)]:
            expected = np.frombuffer(seg[a:b].raw_data, np.int16).reshape(-1, channels)
            np.testing.assert_array_equal(ms_slice(pcm, sr, a, b), expected)


@pytest.mark.parametrize(("rate", "new_rate", "channels"), [(8000, 11025, 1), (11000, 11025, 2),
                                                           (11025, 24000, 1), (7999, 11025, 2)])
def test_upsampling_equals_audioop_ratecv(rate: int, new_rate: int, channels: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")
        except ImportError:
            pytest.skip("no audioop (Python >= 3.13)")
    pcm = np.random.default_rng(rate).integers(-32768, 32767, size=(997, channels), dtype=np.int16)
    converted, _ = audioop.ratecv(pcm.tobytes(), 2, channels, rate, new_rate, None)
    expected = np.frombuffer(converted, np.int16).reshape(-1, channels)
    np.testing.assert_array_equal(upsample_linear(pcm, rate, new_rate), expected)


# --- the end effect: the generated mel ----------------------------------------------------------


class _SeededModel:
    """The reference CFM, sampling with a fixed seed (``infer_batch_process`` passes none)."""

    def __init__(self, cfm: Any, seed: int) -> None:
        self.cfm, self.seed = cfm, seed

    def sample(self, **kwargs: Any) -> Any:
        return self.cfm.sample(**kwargs, seed=self.seed)


def test_generated_mel_equals_the_reference_on_the_espeak_clip(
    ref_infer: Any, tmp_path: Path
) -> None:
    """Same tiny random weights, clip file, text and seed: our engine's generated mel equals what
    the reference's own pipeline (its preprocessing, duration rule, frontend, CFM.sample at NFE 7)
    generates. Eight more prompt samples (the old trimming) changed the last prompt frame, and
    with it every generated frame."""
    pytest.importorskip("espeakng_loader")
    from engine.base import SynthOptions
    from engine.config import EngineConfig
    from engine.f5.engine import F5Engine
    from engine.f5.model import DiT
    from tests.f5_fixtures import randomize_, reference_cfm, reference_dit, small_config
    from tests.f5_oracle import SilentVocoder

    model_config = small_config(text_num_embeds=2545)
    state = randomize_(DiT(model_config), seed=0).state_dict()
    voices = tmp_path / "voices"
    voices.mkdir()
    sf.write(voices / "clip.wav", espeak_clip(), 24000, subtype="PCM_16")
    (voices / "clip.txt").write_text(REF_TEXT, encoding="utf-8")
    cfg = EngineConfig(engine="f5", device="cpu", random_weights=True, voices_dir=str(voices), nfe=7)
    engine = F5Engine(cfg, model_config=model_config, state_dict=state)
    text, seed = "Hello world, a small test.", 21
    chunks = engine.synthesize(text, "clip", SynthOptions(seed=seed))
    next(iter(chunks))  # the whole mel is sampled before the first chunk is vocoded
    chunks.close()  # type: ignore[attr-defined]
    assert engine._reference("clip").voice.audio.shape == (66406,)

    dit = reference_dit(model_config)
    dit.load_state_dict(state, strict=True)
    cfm = reference_cfm(dit)
    cfm.vocab_char_map = engine.frontend.vocab  # type: ignore[assignment]
    pcm, rate, ref_text = reference_preprocess(ref_infer, voices / "clip.wav", REF_TEXT)
    wave = torch.from_numpy(np.ascontiguousarray(pcm.T, dtype=np.float32) / 32768.0)
    (_, _, mel), = ref_infer.infer_batch_process(
        (wave, rate), ref_text, [text], _SeededModel(cfm, seed), SilentVocoder(), progress=None,
        device="cpu", nfe_step=7, cfg_strength=2.0, sway_sampling_coef=-1.0,
    )  # fmt: skip
    expected = mel.T  # (T, 100)
    assert engine.last_mel is not None and engine.last_mel.shape == expected.shape
    assert np.abs(engine.last_mel - expected).max() <= 1e-4
