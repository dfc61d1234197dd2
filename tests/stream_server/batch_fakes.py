"""A fake batching engine (the ``BatchEngine`` contract) for scheduler, worker and fault tests.

Each segment's audio is a sine tone, ``ms_per_char`` per character (like ``SineBurstEngine``), so the
audio of a segment does not depend on what it was batched with. Items need ``nfe`` sampler steps,
then come out in vocoder chunks of 24 frames first, 96 after (256 samples per frame). Every step is
recorded (``steps``: kind and texts), and faults can be injected:

- ``fail_texts``: a step containing one of these texts raises ``RuntimeError`` (nothing advances);
- ``oom_over_rows``: a sampler step with more rows raises ``torch.OutOfMemoryError``;
- ``oom_texts``: a step containing one of these texts raises ``torch.OutOfMemoryError``, even alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from engine.base import SynthOptions, UnknownVoiceError, VoiceInfo
from stream_server.batch_policy import CostFn, linear_cost

HOP = 256
FIRST, LATER = 24, 96


@dataclass(eq=False)
class FakeItem:
    text: str
    voice: str
    audio: np.ndarray  # the whole segment's audio, float32
    n_frames: int
    steps_left: int
    fast_start: bool
    phase: Literal["sampling", "vocoding", "done"] = "sampling"
    first_audio: bool = True
    pos: int = 0  # samples vocoded so far
    ref_frames: int = 0
    closed: bool = False
    log: list[str] = field(default_factory=list)


class FakeBatchEngine:
    name = "fakebatch"
    sample_rate = 24000
    device = "cpu"
    default_voice = "low"
    FREQS = {"low": 220.0, "high": 880.0}

    def __init__(self, *, nfe: int = 3, ms_per_char: float = 10.0, ref_frames: int = 100,
                 cost: CostFn | None = None, max_batch_rows: int = 16, max_batch_frames: int = 100_000,
                 step_delay_s: float = 0.0, fail_texts: Sequence[str] = (), oom_over_rows: int = 0,
                 oom_texts: Sequence[str] = ()) -> None:
        self.nfe = nfe
        self.ms_per_char = ms_per_char
        self.ref_frames = ref_frames
        self.cost = cost or linear_cost(1e-5)
        self.max_batch_rows = max_batch_rows
        self.max_batch_frames = max_batch_frames
        self.step_delay_s = step_delay_s
        self.fail_texts = set(fail_texts)
        self.oom_over_rows = oom_over_rows
        self.oom_texts = set(oom_texts)
        self.steps: list[tuple[str, tuple[str, ...]]] = []  # successful steps: kind, item texts
        self.opened: list[FakeItem] = []
        self.trace: list[str] = []  # "open TEXT", "sample N", "vocode N" in call order
        self.closed: list[str] = []

    # ------------------------------------------------------------------ Engine
    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("low", "xx", "220 Hz"), VoiceInfo("high", "xx", "880 Hz")]

    def synthesize(self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False):  # type: ignore[no-untyped-def]
        item = self.open_item(text, voice, options, fast_start=fast_start)
        try:
            while item.phase == "sampling":
                self.sample_step([item])
            while item.phase == "vocoding":
                yield self.vocode_step([item])[0]
        finally:
            self.close_item(item)

    def warmup(self) -> float:
        return 0.0

    # ------------------------------------------------------------------ BatchEngine
    def open_item(self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False) -> FakeItem:
        if voice not in self.FREQS:
            raise UnknownVoiceError(f"unknown voice {voice!r}")
        options.validate()
        n = round(len(text.strip()) * self.ms_per_char / 1000.0 / options.speed * self.sample_rate)
        t = np.arange(n, dtype=np.float64) / self.sample_rate
        audio = (0.5 * np.sin(2 * np.pi * self.FREQS[voice] * t)).astype(np.float32)
        gen = -(-n // HOP)
        item = FakeItem(text, voice, audio, self.ref_frames + gen, self.nfe, fast_start, ref_frames=self.ref_frames)
        if n == 0:
            item.phase, item.steps_left = "done", 0
        self.opened.append(item)
        self.trace.append(f"open {text}")
        return item

    def _check(self, kind: str, items: Sequence[FakeItem]) -> None:
        texts = {i.text for i in items}
        if texts & self.oom_texts or (kind == "sample" and self.oom_over_rows and len(items) > self.oom_over_rows):
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        if texts & self.fail_texts:
            raise RuntimeError("injected engine failure")

    def sample_step(self, items: Sequence[FakeItem]) -> None:
        assert items and all(i.phase == "sampling" and not i.closed for i in items)
        self._check("sample", items)
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        for i in items:
            i.steps_left -= 1
            if i.steps_left == 0:
                i.phase = "vocoding"
        self.steps.append(("sample", tuple(i.text for i in items)))
        self.trace.append(f"sample {len(items)}")

    def vocode_step(self, items: Sequence[FakeItem]) -> list[np.ndarray]:
        assert items and all(i.phase == "vocoding" and not i.closed for i in items)
        self._check("vocode", items)
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        out = []
        for i in items:
            n = (FIRST if i.first_audio else LATER) * HOP
            out.append(i.audio[i.pos : i.pos + n])
            i.pos += n
            i.first_audio = False
            if i.pos >= i.audio.size:
                i.phase = "done"
        self.steps.append(("vocode", tuple(i.text for i in items)))
        self.trace.append(f"vocode {len(items)}")
        return out

    def close_item(self, item: FakeItem) -> None:
        if not item.closed:
            item.closed = True
            self.closed.append(item.text)

    def step_cost_s(self, rows: int, frames: int, kind: Literal["sample", "vocode"]) -> float:
        return self.cost(rows, frames, kind)


def gpu_like_cost(rows: int, frames: int, kind: str) -> float:
    """A step costs about the same up to many rows (a device that batching fills)."""
    return 0.01 + 1e-7 * rows * frames


def cpu_like_cost(rows: int, frames: int, kind: str) -> float:
    """A step costs rows x frames (a device that one item already fills)."""
    return 1e-5 * rows * frames
