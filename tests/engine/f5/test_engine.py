"""F5Engine on CPU with a tiny random model written in the official file layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.base import Engine, InvalidOptionError, SynthOptions, UnknownVoiceError
from engine.config import EngineConfig
from engine.f5.engine import F5Engine, duration_buckets
from engine.f5.model import DiT
from engine.f5.weights import ResolvedWeights
from tests.f5_fixtures import (
    randomize_,
    small_config,
    write_safetensors_checkpoint,
    write_vocab,
)

TEXT = "Hello world, a small test."
# A reduced Vocos (same mel/iSTFT settings, tiny backbone) keeps the tests fast; the real-size one
# is covered by test_vocoder.py.
TINY_VOCOS_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 64, intermediate_dim: 128, num_layers: 2}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 64, n_fft: 1024, hop_length: 256, padding: center}
"""


def write_tiny_vocos(folder: Path) -> Path:
    from vocos import Vocos

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(TINY_VOCOS_YAML)
    torch.manual_seed(0)
    torch.save(Vocos.from_hparams(str(folder / "config.yaml")).state_dict(), folder / "pytorch_model.bin")
    return folder


def voice_wave(seconds: float, amplitude: float) -> np.ndarray:
    """A voiced-sounding test clip at a steady level: harmonics of a wobbling 150 Hz tone.

    Float32 at 24 kHz; steady so that silence trimming keeps all of it at any amplitude used here.
    """
    t = np.arange(int(seconds * 24000)) / 24000
    f0 = 150 + 20 * np.sin(2 * np.pi * 2 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 24000
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    wave = wave / np.abs(wave).max() * amplitude
    return wave.astype(np.float32)


def write_voice(folder: Path, name: str, amplitude: float, text: str = "Some reference words.") -> None:
    sf.write(folder / f"{name}.wav", voice_wave(1.2, amplitude), 24000, subtype="FLOAT")
    (folder / f"{name}.txt").write_text(text)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ResolvedWeights, Path]:
    root = tmp_path_factory.mktemp("f5")
    cfg = small_config(text_num_embeds=2545)
    # Our own DiT before q/k/v fusion has the official key layout; no reference import needed.
    state = randomize_(DiT(cfg), seed=0).state_dict()
    ckpt = write_safetensors_checkpoint(state, root / "model.safetensors")
    weights = ResolvedWeights(ckpt, write_vocab(root / "vocab.txt"), write_tiny_vocos(root / "vocos"))
    voices = root / "voices"
    voices.mkdir()
    write_voice(voices, "alice", 0.5)
    # 16-bit values in an exact 2.5 ratio: preprocessing quantizes to 16 bits, and different
    # rounding would give the model different prompts (quiet2 is even, so quiet5 is exact)
    quiet2 = 2 * np.round(voice_wave(1.2, 0.02) * 16384)
    for name, scale in (("quiet2", 1.0), ("quiet5", 2.5)):
        sf.write(voices / f"{name}.wav", quiet2 * scale / 32768, 24000, subtype="FLOAT")
        (voices / f"{name}.txt").write_text("Some reference words.")
    return weights, voices


@pytest.fixture(scope="module")
def engine(files: tuple[ResolvedWeights, Path]) -> F5Engine:
    weights, voices = files
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(voices), nfe=7)
    return F5Engine(cfg, model_config=small_config(text_num_embeds=2545), weights=weights)


def test_implements_the_engine_interface(engine: F5Engine) -> None:
    assert isinstance(engine, Engine)
    assert (engine.name, engine.sample_rate, engine.device) == ("f5", 24000, "cpu")
    assert [v.name for v in engine.voices()] == ["alice", "quiet2", "quiet5"]
    assert engine.default_voice == "alice"
    assert engine.model.dtype == torch.float32  # CPU runs fp32 whatever cfg.dtype says
    assert engine.warmup() > 0


def test_chunks_are_float32_and_match_the_generated_frames(engine: F5Engine) -> None:
    chunks = list(engine.synthesize(TEXT, "alice", SynthOptions(seed=3)))
    assert len(chunks) >= 2  # first chunk small, then the rest
    assert all(c.dtype == np.float32 and c.ndim == 1 and c.size > 0 for c in chunks)
    assert engine.last_mel is not None
    n_frames = engine.last_mel.shape[0]
    assert engine.last_mel.shape == (n_frames, 100)
    assert sum(c.size for c in chunks) == 256 * (n_frames - 1)
    assert np.isfinite(np.concatenate(chunks)).all()
    stats = engine.last_stats
    assert stats is not None and stats.generated_frames == n_frames
    assert stats.audio_s == pytest.approx(256 * (n_frames - 1) / 24000)


def test_generated_mel_keeps_one_reference_frame(engine: F5Engine) -> None:
    list(engine.synthesize(TEXT, "alice", SynthOptions(seed=3)))
    ref = engine._reference("alice")
    assert engine.last_mel is not None and engine.last_stats is not None
    assert engine.last_mel.shape[0] == engine.last_stats.total_frames - ref.ref_frames
    # cond spans ref_frames + 1 frames; the slice at ref_frames keeps the last one (facts 4.5)
    np.testing.assert_array_equal(engine.last_mel[0], ref.mel[0, ref.ref_frames].numpy())


def test_same_seed_same_audio_and_different_seed_differs(engine: F5Engine) -> None:
    a = np.concatenate(list(engine.synthesize(TEXT, "alice", SynthOptions(seed=11))))
    b = np.concatenate(list(engine.synthesize(TEXT, "alice", SynthOptions(seed=11))))
    c = np.concatenate(list(engine.synthesize(TEXT, "alice", SynthOptions(seed=12))))
    np.testing.assert_array_equal(a, b)
    assert a.shape == c.shape and np.abs(a - c).max() > 1e-3


def test_unknown_voice_raises_before_anything_is_yielded(engine: F5Engine) -> None:
    with pytest.raises(UnknownVoiceError):
        engine.synthesize(TEXT, "nobody", SynthOptions())


@pytest.mark.parametrize("nfe", [5, 16])
def test_nfe_option_sets_the_number_of_backbone_steps(
    engine: F5Engine, monkeypatch: pytest.MonkeyPatch, nfe: int
) -> None:
    calls = []
    step = engine.batch.velocity

    def counting_step(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[3])
        return step(*args)

    monkeypatch.setattr(engine.batch, "velocity", counting_step)
    list(engine.synthesize(TEXT, "alice", SynthOptions(nfe=nfe, seed=0)))
    assert len(calls) == nfe


def test_unsupported_options_are_rejected(engine: F5Engine) -> None:
    with pytest.raises(InvalidOptionError, match="nfe"):
        engine.synthesize(TEXT, "alice", SynthOptions(nfe=9))
    with pytest.raises(InvalidOptionError):
        engine.synthesize(TEXT, "alice", SynthOptions(speed=3.0))
    with pytest.raises(InvalidOptionError, match="too long"):
        engine.synthesize("word " * 3000, "alice", SynthOptions())


def test_faster_speed_gives_fewer_frames(engine: F5Engine) -> None:
    list(engine.synthesize(TEXT, "alice", SynthOptions(seed=0)))
    normal = engine.last_mel.shape[0]  # type: ignore[union-attr]
    list(engine.synthesize(TEXT, "alice", SynthOptions(seed=0, speed=2.0)))
    assert engine.last_mel.shape[0] < normal  # type: ignore[union-attr]


def test_quiet_reference_scales_the_output_back(engine: F5Engine) -> None:
    # Both clips are raised to RMS 0.1 before sampling, so the model sees (nearly) the same
    # reference; the outputs differ by the ratio of the original levels.
    a = np.concatenate(list(engine.synthesize(TEXT, "quiet5", SynthOptions(seed=5))))
    b = np.concatenate(list(engine.synthesize(TEXT, "quiet2", SynthOptions(seed=5))))
    ra, rb = engine._reference("quiet5").voice.rms, engine._reference("quiet2").voice.rms
    assert ra / rb == pytest.approx(2.5, rel=1e-3)
    np.testing.assert_allclose(a, b * (ra / rb), atol=1e-3 * np.abs(a).max())


def test_voice_reference_is_cached_until_the_file_changes(
    engine: F5Engine, files: tuple[ResolvedWeights, Path]
) -> None:
    first = engine._reference("alice")
    assert engine._reference("alice") is first
    _, voices = files
    wav = voices / "alice.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert engine._reference("alice") is not first


def test_closing_the_stream_early_is_safe(engine: F5Engine) -> None:
    stream = engine.synthesize(TEXT, "alice", SynthOptions(seed=1))
    first = next(stream)
    assert first.size > 0
    stream.close()  # type: ignore[attr-defined]
    assert sum(c.size for c in engine.synthesize(TEXT, "alice", SynthOptions(seed=1))) > 0


def test_random_weights_need_no_files(tmp_path: Path) -> None:
    write_voice(tmp_path, "v", 0.3)
    cfg = EngineConfig(engine="f5", device="cpu", random_weights=True, voices_dir=str(tmp_path),
                       vocoder_first_chunk_frames=8)
    eng = F5Engine(cfg, model_config=small_config(text_num_embeds=2545))
    assert sum(c.size for c in eng.synthesize("Random weights work.", "v", SynthOptions(seed=0))) > 0


def test_builtin_espeak_voice_when_the_folder_is_empty(
    files: tuple[ResolvedWeights, Path], tmp_path: Path
) -> None:
    pytest.importorskip("engine.espeak")
    weights, _ = files
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(tmp_path / "none"))
    eng = F5Engine(cfg, model_config=small_config(text_num_embeds=2545), weights=weights)
    assert eng.default_voice == "default"
    assert [v.name for v in eng.voices()] == ["default"]
    assert sum(c.size for c in eng.synthesize("Hi there, friend.", "default", SynthOptions(seed=0))) > 0


def test_duration_buckets_are_few_and_increasing() -> None:
    buckets = duration_buckets()
    assert all(b % 32 == 0 for b in buckets)
    assert buckets == sorted(set(buckets)) and buckets[-1] == 4096
    assert len(buckets) <= 32
    assert all(b2 <= b1 * 1.1 + 32 for b1, b2 in zip(buckets, buckets[1:], strict=False))


def test_last_mel_matches_the_reference_pipeline(engine: F5Engine, files: tuple[ResolvedWeights, Path]) -> None:
    """--mel-out parity: same weights, voice, text, seed -> the reference's generated mel.

    Replays infer_batch_process's steps with the reference: ref_text + gen_text through its
    frontend, its duration rule, CFM.sample (NFE 7, CFG 2, sway -1, EPSS), then the slice at
    ref_audio_len = samples // 256.
    """
    import warnings

    with warnings.catch_warnings():  # x_transformers uses the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        from tests.f5_fixtures import reference_cfm, reference_dit
        from tests.f5_oracle import reference_module

        utils = reference_module("model.utils")
        dit = reference_dit(small_config(text_num_embeds=2545))
    weights, _ = files
    from engine.f5.loader import load_f5_state_dict

    dit.load_state_dict(load_f5_state_dict(weights.checkpoint), strict=True)
    cfm = reference_cfm(dit)
    cfm.vocab_char_map = engine.frontend.vocab

    text = "Hello world, a small test."
    list(engine.synthesize(text, "alice", SynthOptions(seed=21)))
    voice = engine._reference("alice").voice
    audio = torch.from_numpy(np.array(voice.audio)).unsqueeze(0)
    ref_len = audio.shape[-1] // 256
    duration = ref_len + int(ref_len / len(voice.text.encode()) * len(text.encode()))
    tokens = utils.convert_char_to_pinyin([voice.text + text])
    with torch.inference_mode():
        out, _ = cfm.sample(cond=audio, text=tokens, duration=duration, steps=7, cfg_strength=2.0,
                            sway_sampling_coef=-1.0, seed=21)
    expected = out.float()[0, ref_len:, :].numpy()
    assert engine.last_mel is not None and engine.last_mel.shape == expected.shape
    assert np.abs(engine.last_mel - expected).max() <= 1e-3


@pytest.mark.gpu
def test_cuda_compiled_engine_does_not_recompile_after_warmup(
    files: tuple[ResolvedWeights, Path],
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from torch._dynamo.utils import counters

    weights, voices = files
    cfg = EngineConfig(engine="f5", device="cuda:0", dtype="fp16", compile=True, voices_dir=str(voices),
                       max_batch_rows=2)
    eng = F5Engine(cfg, model_config=small_config(text_num_embeds=2545), weights=weights)
    assert eng.compiled and eng.model.dtype == torch.float16
    # the short test texts fit in the smallest buckets
    eng.buckets = eng.batch.frame_buckets = eng.buckets[:4]  # type: ignore[assignment]
    assert eng.warmup() > 0
    counters.clear()
    for seed in (0, 1):
        chunks = list(eng.synthesize(TEXT, "alice", SynthOptions(seed=seed)))
        assert sum(c.size for c in chunks) > 0 and np.isfinite(np.concatenate(chunks)).all()
    a, b = (eng.open_item(TEXT, "alice", SynthOptions(seed=s)) for s in (2, 3))
    while a.phase == "sampling":
        eng.sample_step([a, b])  # batched: the (2 items, bucket) graph
    assert counters["stats"]["unique_graphs"] == 0  # every shape was compiled during warm-up
    assert eng.batch.runner is not None and eng.graph_bytes >= 0
    assert eng.step_cost_s(2, 200, "sample") > 0
    assert eng.last_stats is not None and eng.last_stats.total_frames == a.n_frames
