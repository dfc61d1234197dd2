"""The F5-TTS engine: text + reference voice in, 24 kHz float32 audio chunks out.

One segment = one flow-matching sample of the whole (reference + generated) mel, because the DiT
is globally non-causal; the audio then streams out of the chunked Vocos decoder, first chunk small.

Pipeline per segment (F5_FACTS.md sections 4-6):
    tokens(ref_text + text) -> total frames (reference rule, speed) -> [duration bucket when
    compiled] -> FlowSampler (EPSS grid, sway, batched CFG, Euler) -> mel[:, ref_frames:] (keeps
    one reference frame, as the reference does) -> ChunkedVocoder -> scaled by rms/0.1 when the
    reference was quiet.

Voices come from the ``VoiceStore`` folder. When the folder has none, a built-in reference voice
named ``default`` is synthesized once at start-up with eSpeak NG and its transcript, so a fresh
install speaks (with eSpeak's timbre) before any voice is uploaded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.base import EngineError, InvalidOptionError, SynthOptions, UnknownVoiceError, VoiceInfo
from engine.config import EngineConfig
from engine.f5 import frontend as frontend_mod
from engine.f5.config import HOP_LENGTH, SAMPLE_RATE, F5ModelConfig
from engine.f5.frontend import TextFrontend, estimate_frames, fix_reference_text
from engine.f5.loader import build_model, load_f5_state_dict, load_vocab, load_vocos
from engine.f5.mel import LogMelSpectrogram
from engine.f5.reference_audio import prepare_reference_audio
from engine.f5.sampler import EPSS_TABLES, FlowSampler, SamplerSettings, min_total_frames
from engine.f5.vocoder import ChunkedVocoder, random_vocos
from engine.f5.voices import PreparedVoice, VoiceStore
from engine.f5.weights import ResolvedWeights, resolve_weights

log = logging.getLogger(__name__)

TARGET_RMS = 0.1
SUPPORTED_NFE = (*sorted(EPSS_TABLES), 32)  # EPSS grids, plus the reference's uniform default
MAX_TOTAL_FRAMES = 4096  # reference + generated, 43.7 s (the v1 release's text position limit)
CROSSFADE_SAMPLES = 360  # 15 ms seams between vocoder chunks
DEFAULT_VOICE = "default"
DEFAULT_VOICE_TEXT = "Hello there. This is the default voice, made with a speech synthesizer."
_VOICE_CACHE_SIZE = 16
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(name: str) -> str:
    """"auto" -> "cuda:0" when CUDA is available, else "cpu"; anything else is used as given."""
    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return name


def duration_buckets(
    max_frames: int = MAX_TOTAL_FRAMES, min_frames: int = 256, ratio: float = 1.1, multiple: int = 32
) -> list[int]:
    """Total-frame sizes that compiled graphs are specialised on (geometric, ~10 % apart).

    A request's total is rounded up to the next bucket, so it may speak up to ~10 % slower than the
    reference's exact duration; the count (27 with the defaults) is what warm-up compiles.
    """
    buckets = [min_frames]
    while buckets[-1] < max_frames:
        nxt = math.ceil(buckets[-1] * ratio / multiple) * multiple
        buckets.append(min(max(nxt, buckets[-1] + multiple), max_frames))
    return buckets


@dataclass(frozen=True)
class _Reference:
    """A voice prepared for sampling, cached on the device."""

    voice: PreparedVoice  # identity = the store's cache key (same object while files unchanged)
    mel: Tensor  # (1, 1 + samples // 256, 100) float32 log-mel on device
    ref_frames: int  # samples // 256 (the reference's ref_audio_len)


@dataclass(frozen=True)
class SynthStats:
    """Timings of the last ``synthesize`` call (seconds; device work included)."""

    frontend_s: float
    backbone_s: float
    vocoder_s: float
    total_frames: int
    generated_frames: int
    audio_s: float


class F5Engine:
    """F5-TTS behind the ``engine.base.Engine`` interface.

    Args:
        cfg: engine settings (device, dtype, compile, nfe, cfg_strength, sway, vocoder chunking,
            voices folder, weight paths).
        model_config: architecture override (tests use a tiny one); default
            ``F5ModelConfig.named(cfg.model)``.
        weights: resolved file paths; default ``resolve_weights(cfg)`` unless ``cfg.random_weights``
            (then files are used only when found: vocab and Vocos fall back to built-ins).
        state_dict: DiT weights already in memory (takes precedence over the checkpoint file;
            benchmarks use it to share random weights with the reference implementation).
    """

    name = "f5"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        model_config: F5ModelConfig | None = None,
        weights: ResolvedWeights | None = None,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        on_cuda = self.device.startswith("cuda")
        self.dtype = _DTYPES[cfg.dtype] if on_cuda else torch.float32  # CPU always fp32
        self.model_config = model_config or F5ModelConfig.named(cfg.model)
        if cfg.nfe not in SUPPORTED_NFE:
            raise InvalidOptionError(f"engine.nfe must be one of {SUPPORTED_NFE}, got {cfg.nfe}")
        if weights is None and not cfg.random_weights:
            weights = resolve_weights(cfg)
        elif weights is None:
            weights = _try_resolve(cfg)

        if state_dict is None and not cfg.random_weights:
            assert weights is not None
            state_dict = load_f5_state_dict(weights.checkpoint)
        self.model = build_model(self.model_config, state_dict, device=self.device, dtype=self.dtype)
        vocab = load_vocab(weights.vocab) if weights is not None else _builtin_vocab()
        self.frontend = TextFrontend(vocab)
        vocos = load_vocos(weights.vocoder_dir) if weights is not None else random_vocos()
        self.vocoder = ChunkedVocoder(
            vocos,
            first_chunk_frames=cfg.vocoder_first_chunk_frames,
            chunk_frames=cfg.vocoder_chunk_frames,
            context_frames=cfg.vocoder_context_frames,
            crossfade_samples=CROSSFADE_SAMPLES,
            device=self.device,
        )
        self.compiled = bool(cfg.compile and on_cuda)
        self.buckets = duration_buckets() if self.compiled else []
        if self.compiled:
            _configure_compile_cache(len(self.buckets))
        self.sampler = FlowSampler(self.model, self._settings(SynthOptions()), compile=self.compiled)
        self.mel = LogMelSpectrogram().to(self.device)
        self.voice_store = VoiceStore(cfg.voices_dir)
        self._builtin: dict[str, PreparedVoice] = {}
        if not self.voice_store.names():
            self._builtin[DEFAULT_VOICE] = _espeak_reference_voice(cfg)
        names = self.voice_store.names() or sorted(self._builtin)
        self.default_voice = names[0]
        self._refs: OrderedDict[str, _Reference] = OrderedDict()
        self.last_mel: np.ndarray | None = None  # (T, 100) float32 generated mel of the last call
        self.last_stats: SynthStats | None = None

    # ------------------------------------------------------------------ Engine interface
    def voices(self) -> list[VoiceInfo]:
        """Voices in the folder, plus the built-in default (if one was made and not shadowed)."""
        names = self.voice_store.names()
        infos = [VoiceInfo(n, "", "reference clip") for n in names]
        infos += [
            VoiceInfo(n, "en", "built-in eSpeak reference")
            for n in sorted(self._builtin)
            if n not in names
        ]
        return infos

    def synthesize(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> Iterator[np.ndarray]:
        """Synthesize one segment; yields float32 (n,) chunks at 24 kHz in playback order.
        ``fast_start`` is ignored: the first vocoder chunk is always small (the whole mel exists by
        then, so that costs only one more small vocoder call).

        Raises UnknownVoiceError / InvalidOptionError right away (before the iterator exists).
        """
        options.validate()
        settings = self._settings(options)
        ref = self._reference(voice)
        text = " ".join(text.split())
        if not text:
            return iter(())
        t0 = time.perf_counter()
        ids = self.frontend.ids(ref.voice.text + text)  # concatenated, exactly like the reference
        total = estimate_frames(ref.ref_frames, ref.voice.text, text, options.speed)
        total = max(total, min_total_frames(ref.mel.shape[1], len(ids)))
        if total > MAX_TOTAL_FRAMES:
            raise InvalidOptionError(
                f"segment too long: {total} frames with the reference (max {MAX_TOTAL_FRAMES})"
            )
        if self.buckets:
            total = next(b for b in self.buckets if b >= total)
        text_ids = torch.tensor([ids], dtype=torch.long)
        frontend_s = time.perf_counter() - t0
        return self._generate(ref, text_ids, total, options.seed, settings, frontend_s)

    def warmup(self) -> float:
        """Initialise the frontend, sample once (compiled: once per duration bucket), vocode once."""
        t0 = time.perf_counter()
        frontend_mod.warmup()
        n_ref = 64
        cond = torch.zeros(1, n_ref, 100, device=self.device)
        ids = torch.zeros(1, 8, dtype=torch.long)
        # One Euler step is enough: graphs depend on shapes only, not on the step count.
        settings = replace(self._settings(SynthOptions()), nfe=1)
        for total in self.buckets or [n_ref + 32]:
            tb = time.perf_counter()
            mel = self.sampler.sample(cond, ids, total, seed=0, settings=settings)
            self._sync()
            if self.buckets:
                log.info("f5 warm-up: bucket %d frames ready in %.2f s", total, time.perf_counter() - tb)
        for _ in self.vocoder.decode_chunks(mel[:, : 2 * self.cfg.vocoder_first_chunk_frames]):
            pass
        seconds = time.perf_counter() - t0
        if self.compiled:
            log.info("f5 warm-up: compiled %d duration buckets in %.1f s", len(self.buckets), seconds)
        return seconds

    # ------------------------------------------------------------------ internals
    def _settings(self, options: SynthOptions) -> SamplerSettings:
        nfe = options.nfe if options.nfe is not None else self.cfg.nfe
        if nfe not in SUPPORTED_NFE:
            raise InvalidOptionError(f"nfe must be one of {', '.join(map(str, SUPPORTED_NFE))}")
        cfg_strength = self.cfg.cfg_strength if options.cfg_strength is None else options.cfg_strength
        return SamplerSettings(nfe=nfe, cfg_strength=cfg_strength, sway=self.cfg.sway)

    def _prepared(self, voice: str) -> PreparedVoice:
        if voice in self._builtin and voice not in self.voice_store.names():
            return self._builtin[voice]
        return self.voice_store.prepare(voice)  # UnknownVoiceError if missing

    def _reference(self, voice: str) -> _Reference:
        """The voice's reference mel on device; recomputed only when the store's voice changes."""
        if not isinstance(voice, str):
            raise UnknownVoiceError(f"unknown voice {voice!r}")
        prepared = self._prepared(voice)
        hit = self._refs.get(voice)
        if hit is not None and hit.voice is prepared:
            self._refs.move_to_end(voice)
            return hit
        wave = torch.from_numpy(np.array(prepared.audio, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            mel = self.mel(wave.unsqueeze(0))  # (1, 1 + n // 256, 100)
        ref = _Reference(prepared, mel, prepared.audio.shape[0] // HOP_LENGTH)
        self._refs[voice] = ref
        while len(self._refs) > _VOICE_CACHE_SIZE:
            self._refs.popitem(last=False)
        return ref

    def _generate(
        self,
        ref: _Reference,
        text_ids: Tensor,
        total: int,
        seed: int | None,
        settings: SamplerSettings,
        frontend_s: float,
    ) -> Iterator[np.ndarray]:
        gen: Tensor | None = None
        try:
            t0 = time.perf_counter()
            mel = self.sampler.sample(ref.mel, text_ids, total, seed=seed, settings=settings)
            # Keep from ref_frames on: one reference frame stays, as in the reference, so
            # --mel-out output is directly comparable with it.
            gen = mel[:, ref.ref_frames :, :]
            self.last_mel = gen[0].float().cpu().numpy()  # also the sync that ends the timing
            backbone_s = time.perf_counter() - t0
            gain = ref.voice.rms / TARGET_RMS if ref.voice.rms < TARGET_RMS else 1.0
            t1 = time.perf_counter()
            n_samples = 0
            for chunk in self.vocoder.decode_chunks(gen):
                if gain != 1.0:
                    chunk = chunk * np.float32(gain)
                n_samples += chunk.shape[0]
                yield chunk
            self.last_stats = SynthStats(
                frontend_s=frontend_s,
                backbone_s=backbone_s,
                vocoder_s=time.perf_counter() - t1,
                total_frames=total,
                generated_frames=gen.shape[1],
                audio_s=n_samples / SAMPLE_RATE,
            )
        finally:
            del gen  # drop device tensors of this request even when the caller cancels

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


def _try_resolve(cfg: EngineConfig) -> ResolvedWeights | None:
    """Weights for a random-weights build: use files when they resolve, else built-ins."""
    try:
        return resolve_weights(cfg)
    except EngineError:
        return None


def _builtin_vocab() -> dict[str, int]:
    """A stand-in vocab for random-weight benchmarks: space first, then printable ASCII."""
    tokens = [" "] + [chr(c) for c in range(33, 127)]
    return {tok: i for i, tok in enumerate(tokens)}


def _configure_compile_cache(n_buckets: int) -> None:
    """Keep compiled graphs on disk (fast restarts) and allow one graph per duration bucket."""
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "stream-tts" / "inductor")
    )
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    needed = n_buckets + 8  # + headroom for the CFG-off path and guard re-specialisations
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, needed)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * needed
    )


def _espeak_reference_voice(cfg: EngineConfig) -> PreparedVoice:
    """The built-in ``default`` voice: eSpeak NG reading DEFAULT_VOICE_TEXT, preprocessed for F5."""
    try:
        from engine.espeak import EspeakEngine

        espeak = EspeakEngine(cfg)
        chunks = list(espeak.synthesize(DEFAULT_VOICE_TEXT, espeak.default_voice, SynthOptions()))
        rate = espeak.sample_rate
    except Exception as exc:  # no eSpeak: the engine still works with voices from the folder
        log.warning("f5: no voices in %s and eSpeak is unavailable (%s)", cfg.voices_dir, exc)
        raise EngineError(
            f"no F5 reference voices in {cfg.voices_dir!r} and the built-in eSpeak voice could not "
            f"be made ({exc}); add NAME.wav + NAME.txt there"
        ) from exc
    audio, rms = prepare_reference_audio(np.concatenate(chunks).astype(np.float32), rate)
    audio.flags.writeable = False
    return PreparedVoice(DEFAULT_VOICE, audio, fix_reference_text(DEFAULT_VOICE_TEXT), rms)
