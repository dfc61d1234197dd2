"""Fake engines that engine worker processes can build (importable by path, picklable recipes).

``FaultyEngine`` speaks like ``tests.server_fixtures.SineBurstEngine`` (each character becomes
``ms_per_char`` of a sine tone, in ``chunk_ms`` chunks) and misbehaves on purpose when the text
contains a trigger word: ``FAIL`` raises an ``EngineError`` at the first chunk, ``HANG`` blocks
forever, ``CRASH`` kills its process (``os._exit``), ``SLOW`` sleeps ``slow_s`` per chunk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.base import EngineError, SynthOptions, UnknownVoiceError, VoiceInfo


class FaultyEngine:
    name = "faulty"
    sample_rate = 24000
    device = "cpu"
    default_voice = "low"

    def __init__(self, *, ms_per_char: float = 10.0, chunk_ms: float = 60.0, slow_s: float = 0.05) -> None:
        self.kwargs: dict[str, Any] = {"ms_per_char": ms_per_char, "chunk_ms": chunk_ms, "slow_s": slow_s}
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.slow_s = slow_s

    def worker_recipe(self) -> tuple[str, dict[str, Any]]:
        return "tests.fake_engines:FaultyEngine", dict(self.kwargs)

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("low", "xx", "220 Hz")]

    def synthesize(self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
                   ) -> Iterator[np.ndarray]:
        if voice != "low":
            raise UnknownVoiceError(f"unknown voice {voice!r}")
        n = round(len(text) * self.ms_per_char / 1000.0 * self.sample_rate)
        t = np.arange(n, dtype=np.float64) / self.sample_rate
        audio = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        return self._chunks(text, audio)

    def _chunks(self, text: str, audio: np.ndarray) -> Iterator[np.ndarray]:
        step = max(1, round(self.chunk_ms / 1000.0 * self.sample_rate))
        for i in range(0, audio.shape[0], step):
            if "FAIL" in text:
                raise EngineError("injected engine failure")
            if "HANG" in text:
                time.sleep(3600)
            if "CRASH" in text:
                os._exit(3)
            if "SLOW" in text:
                time.sleep(self.slow_s)
            yield audio[i : i + step]

    def warmup(self) -> float:
        return 0.0
