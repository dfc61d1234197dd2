"""Where the scheduler's jobs run: a ``Lane`` advances one job at a time for one scheduler thread.

- ``ThreadLane``: today's path; the engine, the audio post and the encoders run on the scheduler's
  own worker thread (``[server] workers = 1``, and every engine without a ``worker_recipe``, e.g.
  F5 on its device).
- ``stream_server.process_pool.ProcessLane``: one engine worker process per lane, so CPU engines use
  every core (``workers`` > 1).

A job that a lane has started is pinned to it (its generator, shaper and encoder live there) until
it finishes, fails or is cancelled; the scheduler never steps one job on two lanes at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from engine.audio import SegmentShaper
from engine.base import Engine
from engine.codec import make_encoder
from engine.config import AudioConfig

if TYPE_CHECKING:
    from stream_server.scheduler import _Job

log = logging.getLogger(__name__)


class WorkerLost(Exception):
    """The lane lost its worker (hung past the watchdog, or crashed): every job pinned to it failed.

    ``code`` is the stable wire code of the job that was running (``engine_timeout``,
    ``worker_crashed``); the lane replaces its worker before its next step.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Lane(Protocol):
    index: int
    name: str  # the name of the scheduler thread that drives it

    def start(self) -> None:
        """Ready the lane (a process lane starts and warms up its worker); blocking."""

    def advance(self, job: _Job, first_audio_s: float | None) -> tuple[list[bytes], bool]:
        """Advance ``job`` by about one engine chunk: (encoded packets, segment finished).

        ``first_audio_s`` is set when the job's listener waits for the first audio of its stretch of
        speech (the engine's fast start): a lane that makes several chunks per step makes about this
        much audio in this step; None for every other step.

        Raises ``EngineError`` (this job failed; the lane has released its state) or ``WorkerLost``
        (every job pinned here failed).
        """
        ...

    def close_jobs(self, jobs: list[_Job]) -> None:
        """Drop the state of cancelled jobs pinned to this lane."""

    def recover(self) -> None:
        """Between jobs: replace a lost worker now (never raises; retried later on failure)."""

    def stop(self) -> None:
        """Release the lane's resources (called by its thread on the way out)."""


class ThreadLane:
    """The engine, audio post and encoders on the scheduler's worker thread."""

    name = "engine-worker"

    def __init__(self, engine: Engine, audio: AudioConfig, index: int = 0) -> None:
        self.engine = engine
        self.audio = audio
        self.index = index

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def recover(self) -> None:
        pass

    def advance(self, job: _Job, first_audio_s: float | None) -> tuple[list[bytes], bool]:
        req = job.request
        if job.gen is None:
            a, rate = self.audio, self.engine.sample_rate
            job.encoder = make_encoder(req.format, req.sample_rate, a, rate, bitrate=req.bitrate)
            job.shaper = SegmentShaper(rate, a.fade_in_ms, a.fade_out_ms, a.pause_ms)
            job.gen = iter(self.engine.synthesize(req.text, req.voice, req.options, fast_start=first_audio_s is not None))
        assert job.shaper is not None
        try:
            chunk = next(job.gen)
        except StopIteration:
            tail = job.encoder.encode(job.shaper.finish())
            job.gen = None
            return tail + job.encoder.flush(), True
        except BaseException:
            close_generator(job)
            raise
        return job.encoder.encode(job.shaper.process(chunk)), False

    def close_jobs(self, jobs: list[_Job]) -> None:
        for job in jobs:
            close_generator(job)


def close_generator(job: _Job) -> None:
    """Close an in-thread job's engine generator (engines release per-request state in a finally)."""
    gen, job.gen = job.gen, None
    if gen is not None and hasattr(gen, "close"):
        try:
            gen.close()
        except Exception:
            log.exception("engine generator raised on close")
