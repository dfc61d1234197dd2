"""The engine interface every synthesizer implements.

Engines are synchronous and single-threaded from their own point of view: the server's one engine
worker thread owns an engine instance and calls it; nothing here knows about asyncio or sockets.

Audio contract: every chunk yielded by ``Engine.synthesize`` is a 1-D ``np.float32`` array of mono
samples at ``Engine.sample_rate`` Hz, nominally in [-1, 1]. Chunks come in playback order, each as
soon as it is ready, and their concatenation is the segment's audio (seams are already joined by the
engine; the audio post in ``engine.audio`` adds segment-level fades and pauses).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np


class EngineError(Exception):
    """Base class of engine errors. ``code`` is the stable wire code the server reports."""

    code = "engine_error"


class UnknownVoiceError(EngineError):
    code = "unknown_voice"


class InvalidOptionError(EngineError):
    code = "invalid_option"


class WeightsNotFoundError(EngineError):
    """Model files could not be resolved; the message says which files and where to put them."""

    code = "weights_not_found"


class CheckpointError(EngineError):
    """A checkpoint file does not match the expected layout (missing/unexpected keys, shapes)."""

    code = "checkpoint_error"


@dataclass(frozen=True)
class VoiceInfo:
    """A voice as listed by ``GET /v1/voices``."""

    name: str
    language: str = ""
    description: str = ""


@dataclass(frozen=True)
class SynthOptions:
    """Per-request synthesis options (the ``options`` object of the ``start`` message).

    Engines ignore options they do not support (e.g. eSpeak ignores ``nfe``) but must reject values
    out of range with ``InvalidOptionError``.
    """

    speed: float = 1.0  # 0.5 .. 2.0; >1 is faster speech
    nfe: int | None = None  # F5 only: number of flow steps (5, 6, 7, 10, 12, 16, 32); None = engine default
    seed: int | None = None  # F5 only: initial-noise seed for reproducible output
    cfg_strength: float | None = None  # F5 only; None = engine default (2.0)

    def validate(self) -> None:
        if not 0.5 <= self.speed <= 2.0:
            raise InvalidOptionError("speed must be between 0.5 and 2.0")
        if self.nfe is not None and not 1 <= self.nfe <= 64:
            raise InvalidOptionError("nfe must be between 1 and 64")
        if self.cfg_strength is not None and not 0.0 <= self.cfg_strength <= 10.0:
            raise InvalidOptionError("cfg_strength must be between 0 and 10")


@runtime_checkable
class Engine(Protocol):
    """A text-to-speech engine.

    Attributes:
        name: short engine name as shown to clients ("espeak", "f5").
        sample_rate: output sample rate in Hz (24000 for every engine we ship).
        device: where it runs, e.g. "cpu" or "cuda:0".
        default_voice: the voice used when a client names none.
    """

    name: str
    sample_rate: int
    device: str
    default_voice: str

    def voices(self) -> list[VoiceInfo]:
        """The voices this engine can speak with."""
        ...

    def synthesize(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> Iterator[np.ndarray]:
        """Synthesize one segment of text.

        Yields float32 mono chunks (shape (n,), at ``sample_rate``) in order as they become ready.
        ``fast_start``: a listener is waiting with nothing to play (the first segment of a turn),
        so the first chunk should come as early as possible, even at some cost in prosody or
        efficiency; otherwise the segment is made ahead of playback. Engines may ignore it.
        The caller may stop iterating (and ``close()`` the generator) at any chunk boundary to
        cancel; engines must release per-request state in a ``finally``.
        Raises ``UnknownVoiceError`` / ``InvalidOptionError`` before yielding anything.
        """
        ...

    def warmup(self) -> float:
        """Run everything needed so the first real request is fast. Returns seconds spent."""
        ...


ItemPhase = Literal["sampling", "vocoding", "done"]
StepKind = Literal["sample", "vocode"]


class BatchItem(Protocol):
    """One segment in flight in a batching engine (`BatchEngine.open_item`). Read-only for the
    caller; the engine's steps change them.

    Attributes:
        phase: "sampling" (sampler steps left), "vocoding" (audio chunks left), "done".
        n_frames: total frames of its sample (reference + generated); its "size" in a step.
        steps_left: sampler steps still to run (0 once vocoding).
        first_audio: True until its first audio chunk has been returned.
    """

    @property
    def phase(self) -> ItemPhase: ...

    @property
    def n_frames(self) -> int: ...

    @property
    def steps_left(self) -> int: ...

    @property
    def first_audio(self) -> bool: ...


@runtime_checkable
class BatchEngine(Engine, Protocol):
    """An engine whose work is split into steps that several segments share (F5-TTS).

    The caller (one engine thread) opens items, then repeatedly runs either one sampler step or
    one vocoder step over any subset of its items, within ``max_batch_rows`` items and
    ``max_batch_frames`` (items x the largest item's ``n_frames``) per step. Results never depend
    on which items shared a step. ``synthesize`` stays available (the solo path).
    """

    max_batch_rows: int  # config limit on items per sampler step
    max_batch_frames: int  # config limit on items x padded frames per sampler step

    def open_item(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> BatchItem:
        """Validate and prepare (text frontend, reference mel, noise); raises UnknownVoiceError /
        InvalidOptionError here. An empty text gives an item already 'done'."""
        ...

    def sample_step(self, items: Sequence[BatchItem]) -> None:
        """ONE backbone forward for all given items (all in phase 'sampling', possibly at
        different steps, nfe, cfg, lengths): each advances one Euler step at its own t and dt; an
        item whose last step ran moves to 'vocoding'. Results equal each item sampled alone
        (<= 1e-4 fp32)."""
        ...

    def vocode_step(self, items: Sequence[BatchItem]) -> list[np.ndarray]:
        """The next vocoder chunk of each given item (all in phase 'vocoding'), in one batched
        vocoder call: float32 (n,) at sample_rate, seams already cross-faded, equal to its solo
        decode (<= 1e-4). After its last chunk an item is 'done'."""
        ...

    def close_item(self, item: BatchItem) -> None:
        """Forget the item (cancel/disconnect); idempotent; frees its device memory."""
        ...

    def step_cost_s(self, rows: int, frames: int, kind: StepKind) -> float:
        """Estimated wall time of one step with ``rows`` items padded to ``frames`` frames (for
        "vocode": ``rows`` chunks of up to ``frames`` mel frames with context), from the table
        measured during warm-up."""
        ...
