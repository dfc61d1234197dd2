"""The child side of the engine worker processes: one engine, its audio post and encoders.

A worker process builds its engine from an ``EngineRecipe`` (an import path and keyword arguments,
so it works with ``spawn``/``forkserver`` and test engines alike), warms it up, then answers one
request at a time on its pipe; the parent (``stream_server.process_pool``) never has more than one
request outstanding per process, so the pipe is bounded by construction.

Requests (tuples, pickled by ``multiprocessing.connection``):

- ``("step", job_id, open_spec | None, min_audio_s, budget_s)``: advance a job; ``open_spec`` starts
  it (``OpenSpec``). Runs engine chunks through the ``SegmentShaper`` and the encoder until the packets hold at
  least ``min_audio_s`` of audio, ``budget_s`` of wall time is spent, or the segment ends.
  Answer ``("ok", packets, finished, synth_s)`` or ``("err", code, message)`` (the job is dropped).
- ``("close", job_ids)``: drop cancelled jobs (their generators are closed). Answer ``("ok",)``.

Start-up answers ``("ready", warmup_s, calib_synth_s, calib_audio_s)`` (a calibration: one
sentence through engine, audio post and Opus, timed, which seeds admission control's RTF before any
real segment is measured) or ``("err", code, message)``. This module imports only
``engine`` modules that do not import torch (``engine.audio``, ``engine.codec``, ``engine.base``), so
a worker starts in well under a second; the recipe's module is imported in the child.
"""

from __future__ import annotations

import importlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from engine.audio import SegmentShaper
from engine.base import Engine, EngineError, SynthOptions
from engine.codec import AudioEncoder, encoded_seconds, make_encoder
from engine.config import AudioConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineRecipe:
    """How a worker process builds its engine: ``target`` = ``"module:callable"``."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Engine:
        module_name, _, attr = self.target.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        engine: Engine = factory(**self.kwargs)
        return engine


@dataclass(frozen=True)
class OpenSpec:
    """What a worker needs to start a segment (from ``SynthRequest`` plus the scheduler's hint)."""

    text: str
    voice: str
    options: SynthOptions
    format: str
    sample_rate: int
    fast_start: bool
    bitrate: int | None = None


@dataclass(eq=False)
class _Segment:
    gen: Iterator[np.ndarray]
    shaper: SegmentShaper
    encoder: AudioEncoder
    format: str
    sample_rate: int

    def close(self) -> None:
        close = getattr(self.gen, "close", None)
        if close is not None:
            close()


class SegmentRunner:
    """Per-process state: the engine and the segments in progress (by job id)."""

    def __init__(self, engine: Engine, audio: AudioConfig) -> None:
        self.engine = engine
        self.audio = audio
        self.segments: dict[int, _Segment] = {}

    def open(self, job_id: int, spec: OpenSpec) -> None:
        a, rate = self.audio, self.engine.sample_rate
        encoder = make_encoder(spec.format, spec.sample_rate, a, rate, bitrate=spec.bitrate)
        shaper = SegmentShaper(rate, a.fade_in_ms, a.fade_out_ms, a.pause_ms)
        gen = iter(self.engine.synthesize(spec.text, spec.voice, spec.options, fast_start=spec.fast_start))
        self.segments[job_id] = _Segment(gen, shaper, encoder, spec.format, spec.sample_rate)

    def step(self, job_id: int, min_audio_s: float, budget_s: float) -> tuple[list[bytes], bool]:
        """Advance one segment: (packets, finished). Raises what the engine raises (job dropped)."""
        seg = self.segments[job_id]
        t0 = time.perf_counter()
        packets: list[bytes] = []
        encoded_s = 0.0  # of the packets (an MP3 encoder holds back ~50 ms of what it was fed)
        frame_ms = float(self.audio.frame_ms)
        finished = False
        try:
            while True:
                try:
                    chunk = next(seg.gen)
                except StopIteration:
                    packets += seg.encoder.encode(seg.shaper.finish())
                    packets += seg.encoder.flush()
                    finished = True
                    break
                new = seg.encoder.encode(seg.shaper.process(chunk))
                packets += new
                encoded_s += sum(encoded_seconds(seg.format, seg.sample_rate, p, frame_ms) for p in new)
                if encoded_s >= min_audio_s or time.perf_counter() - t0 >= budget_s:
                    break
        except BaseException:
            self.close([job_id])
            raise
        if finished:
            del self.segments[job_id]
        return packets, finished

    def close(self, job_ids: tuple[int, ...] | list[int]) -> None:
        for job_id in job_ids:
            seg = self.segments.pop(job_id, None)
            if seg is not None:
                try:
                    seg.close()
                except Exception:
                    log.exception("engine generator raised on close")


CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


def calibrate(runner: SegmentRunner) -> tuple[float, float]:
    """Synthesize and encode one sentence: (wall seconds, audio seconds); (0, 0) if it fails."""
    t0 = time.perf_counter()
    try:
        spec = OpenSpec(CALIBRATION_TEXT, runner.engine.default_voice, SynthOptions(), "pcm_s16le",
                        runner.engine.sample_rate, False)
        runner.open(-1, spec)
        n_bytes = 0
        finished = False
        while not finished:
            packets, finished = runner.step(-1, 1.0, 1.0)
            n_bytes += sum(len(p) for p in packets)
    except Exception:
        log.exception("calibration failed")
        return 0.0, 0.0
    return time.perf_counter() - t0, n_bytes / 2 / runner.engine.sample_rate


def _answer(runner: SegmentRunner, request: tuple[Any, ...]) -> tuple[Any, ...]:
    kind = request[0]
    if kind == "close":
        runner.close(request[1])
        return ("ok",)
    _, job_id, spec, min_audio_s, budget_s = request
    t0 = time.perf_counter()
    try:
        if spec is not None:
            runner.open(job_id, spec)
        elif job_id not in runner.segments:
            return ("err", "worker_restarted", "this segment's engine worker was replaced")
        packets, finished = runner.step(job_id, min_audio_s, budget_s)
    except EngineError as exc:
        return ("err", exc.code, str(exc) or exc.code)
    except Exception:
        log.exception("segment failed in the engine worker")
        return ("err", "internal_error", "internal error while synthesizing this segment")
    return ("ok", packets, finished, time.perf_counter() - t0)


def worker_main(conn: Connection, recipe: EngineRecipe, audio: AudioConfig) -> None:
    """Entry point of a worker process: build, warm up, then serve requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server; the server stops us
    try:
        engine = recipe.build()
        warmup_s = engine.warmup()
    except EngineError as exc:
        conn.send(("err", exc.code, str(exc) or exc.code))
        return
    except Exception as exc:
        conn.send(("err", "internal_error", f"engine worker failed to start: {exc}"))
        return
    runner = SegmentRunner(engine, audio)
    calib_synth_s, calib_audio_s = calibrate(runner)
    conn.send(("ready", warmup_s, calib_synth_s, calib_audio_s))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        conn.send(_answer(runner, request))
