"""The F5-TTS engine: text + reference voice in, 24 kHz float32 audio chunks out.

One segment = one flow-matching sample of the whole (reference + generated) mel, because the DiT
is globally non-causal; the audio then streams out of the chunked Vocos decoder, first chunk small.

Pipeline per segment (F5_FACTS.md sections 4-6):
    tokens(ref_text + text) -> total frames (reference rule, speed; never rounded) ->
    BatchSampler (EPSS grid, sway, batched CFG, Euler; compiled graphs pad to a duration bucket
    and mask) -> mel[:, ref_frames:] (keeps one reference frame, as the reference does) ->
    ChunkedVocoder -> scaled by rms/0.1 when the reference was quiet.

Batching (`engine.base.BatchEngine`): ``open_item`` prepares a segment, ``sample_step`` runs one
backbone pass for any set of sampling items, ``vocode_step`` the next vocoder chunk for any set of
vocoding items; ``synthesize`` is the same path for one item alone. Warm-up measures the step cost
table (``step_cost_s``) and, compiled on CUDA, captures one CUDA graph per (items, frames) bucket.

Voices come from the ``VoiceStore`` folder. When the folder has none, a built-in reference voice
named ``default`` is synthesized once at start-up with eSpeak NG and its transcript, so a fresh
install speaks (with eSpeak's timbre) before any voice is uploaded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.base import (
    BatchItem,
    EngineError,
    InvalidOptionError,
    StepKind,
    SynthOptions,
    UnknownVoiceError,
    VoiceInfo,
)
from engine.config import EngineConfig
from engine.f5.batch import BatchSampler, row_buckets
from engine.f5.config import (
    HOP_LENGTH,
    SAMPLE_RATE,
    TINY_MODEL_ENV,
    F5ModelConfig,
    model_config_for,
    tiny_model_requested,
)
from engine.f5.frontend import TextFrontend, estimate_frames, fix_reference_text
from engine.f5.graphs import configure_compile_cache
from engine.f5.loader import build_model, load_f5_state_dict, load_vocab, load_vocos
from engine.f5.mel import LogMelSpectrogram
from engine.f5.reference_audio import prepare_reference_audio
from engine.f5.sampler import EPSS_TABLES, SamplerSettings, min_total_frames
from engine.f5.steps import F5Item, StepCostTable
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

    A step is padded up to the next bucket and the padded frames are masked, so durations stay the
    reference's exact rule; padding costs at most ~10 % more work per step.
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
            ``model_config_for(cfg.model)`` (``F5ModelConfig.named``, or the smoke checks' tiny
            one when ``STREAM_TTS_F5_TINY=1``: random weights only).
        weights: resolved file paths; default ``resolve_weights(cfg)`` unless ``cfg.random_weights``
            (then files are used only when found: vocab and Vocos fall back to built-ins).
        state_dict: DiT weights already in memory (takes precedence over the checkpoint file;
            benchmarks use it to share random weights with the reference implementation).
        static_shapes: pad every sampler step to (items, frames) buckets; default: when compiled
            (tests turn it on on CPU to cover the padding without a compiler).
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
        static_shapes: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        on_cuda = self.device.startswith("cuda")
        self.dtype = _DTYPES[cfg.dtype] if on_cuda else torch.float32  # CPU always fp32
        if model_config is None and tiny_model_requested() and not cfg.random_weights:
            raise InvalidOptionError(f"{TINY_MODEL_ENV}=1 needs random weights (engine.random_weights)")
        self.model_config = model_config or model_config_for(cfg.model)
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
        self.max_batch_rows = cfg.max_batch_rows
        self.max_batch_frames = cfg.max_batch_frames
        static = self.compiled if static_shapes is None else static_shapes
        self.buckets = duration_buckets() if static else []
        self.row_buckets = row_buckets(cfg.max_batch_rows) if static else []
        if self.compiled:
            configure_compile_cache(len(self.buckets) * len(self.row_buckets))
        self.batch = BatchSampler(
            self.model,
            compile=self.compiled,
            # one compilation for every bucket: the graphs per shape are CUDA graph captures
            compile_options={"dynamic": True} if self.compiled else None,
            frame_buckets=self.buckets or None,
            row_buckets=self.row_buckets or None,
        )
        self.costs = StepCostTable(bucketed=static)
        self.graph_bytes = 0  # CUDA graph memory, after warm-up
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
        The solo path of the batching API: ``open_item``, ``sample_step([item])`` until it
        vocodes, then ``vocode_step([item])`` until it is done.
        """
        item = self.open_item(text, voice, options, fast_start=fast_start)
        if item.phase == "done":
            return iter(())
        return self._solo(item)

    def warmup(self) -> float:
        """Initialise the frontend, compile and capture (CUDA) every step shape, and measure the
        step cost table; returns seconds spent."""
        from engine.f5.warmup import run_warmup

        return run_warmup(self)

    # ------------------------------------------------------------------ BatchEngine interface
    def open_item(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> F5Item:
        """Prepare a segment: text frontend, duration (the reference's rule, exact), reference
        mel, text features and initial noise. Raises UnknownVoiceError / InvalidOptionError."""
        options.validate()
        settings = self._settings(options)
        ref = self._reference(voice)
        text = " ".join(text.split())
        if not text:
            return F5Item(phase="done", n_frames=0)
        t0 = time.perf_counter()
        ids = self.frontend.ids(ref.voice.text + text)  # concatenated, exactly like the reference
        total = estimate_frames(ref.ref_frames, ref.voice.text, text, options.speed)
        total = max(total, min_total_frames(ref.mel.shape[1], len(ids)))
        if total > MAX_TOTAL_FRAMES:
            raise InvalidOptionError(
                f"segment too long: {total} frames with the reference (max {MAX_TOTAL_FRAMES})"
            )
        text_ids = torch.tensor([ids], dtype=torch.long)
        t1 = time.perf_counter()
        flow = self.batch.new_item(ref.mel, text_ids, total, settings.grid(), settings.cfg_strength,
                               seed=options.seed)
        gain = ref.voice.rms / TARGET_RMS if ref.voice.rms < TARGET_RMS else 1.0
        # text encoder + noise count as backbone work (as before the batching API)
        timings = {"frontend_s": t1 - t0, "prepare_s": time.perf_counter() - t1}
        return F5Item(phase="sampling", n_frames=total, ref_frames=ref.ref_frames, gain=gain,
                      flow=flow, timings=timings)

    def sample_step(self, items: Sequence[BatchItem]) -> None:
        """One backbone pass for all ``items`` (phase "sampling"); finished ones move on to
        "vocoding" (or "done" when their mel is too short to make audio)."""
        own = self._own(items, "sampling")
        flows = [it.flow for it in own]
        assert all(f is not None for f in flows)
        self.batch.step(flows)  # type: ignore[arg-type]
        for it in own:
            assert it.flow is not None
            if not it.flow.finished:
                continue
            # Keep from ref_frames on: one reference frame stays, as in the reference, so
            # --mel-out output is directly comparable with it.
            gen = it.flow.result()[:, it.ref_frames :, :]
            it.mel = gen[0].cpu().numpy()
            it.flow = None
            it.stream = self.vocoder.open_stream(gen)
            it.phase = "done" if it.stream.finished else "vocoding"

    def vocode_step(self, items: Sequence[BatchItem]) -> list[np.ndarray]:
        """The next audio chunk of every item (phase "vocoding"), one batched vocoder call."""
        own = self._own(items, "vocoding")
        chunks = self.vocoder.decode_step([it.stream for it in own])  # type: ignore[misc]
        for it, chunk in zip(own, chunks, strict=True):
            if it.gain != 1.0:
                chunk *= np.float32(it.gain)
            it.first_audio = False
            it.audio_samples += chunk.shape[0]
            assert it.stream is not None
            if it.stream.finished:
                it.stream = None
                it.phase = "done"
        return chunks

    def close_item(self, item: BatchItem) -> None:
        """Forget ``item`` (idempotent): its device tensors are released."""
        if isinstance(item, F5Item):
            if item.flow is not None:
                self.batch.forget()  # the cached rows may hold it
            item.flow = None
            item.stream = None
            item.phase = "done"

    def step_cost_s(self, rows: int, frames: int, kind: StepKind) -> float:
        """Estimated seconds of one step (`StepCostTable.estimate`; 0.0 before warm-up)."""
        return self.costs.estimate(kind, rows, frames)

    def vocode_frames(self, item: BatchItem) -> int:
        """Mel frames (with context) of ``item``'s next vocoder chunk: its size in a vocode step."""
        own = self._own([item], "vocoding")[0]
        assert own.stream is not None
        return self.vocoder.window_frames(own.stream)

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

    def _own(self, items: Sequence[BatchItem], phase: str) -> list[F5Item]:
        out: list[F5Item] = []
        for it in items:
            if not isinstance(it, F5Item):
                raise TypeError(f"not an item of this engine: {it!r}")
            if it.phase != phase:
                raise ValueError(f"item in phase {it.phase!r}, expected {phase!r}")
            out.append(it)
        return out

    def _solo(self, item: F5Item) -> Iterator[np.ndarray]:
        try:
            t0 = time.perf_counter()
            while item.phase == "sampling":
                self.sample_step([item])
            self.last_mel = item.mel  # the device-to-host copy also ends the timing
            backbone_s = time.perf_counter() - t0 + item.timings.get("prepare_s", 0.0)
            t1 = time.perf_counter()
            while item.phase == "vocoding":
                chunk = self.vocode_step([item])[0]
                if chunk.size:
                    yield chunk
            self.last_stats = SynthStats(
                frontend_s=item.timings.get("frontend_s", 0.0),
                backbone_s=backbone_s,
                vocoder_s=time.perf_counter() - t1,
                total_frames=item.n_frames,
                generated_frames=0 if item.mel is None else item.mel.shape[0],
                audio_s=item.audio_samples / SAMPLE_RATE,
            )
        finally:
            self.close_item(item)  # drop device tensors even when the caller cancels

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
