"""Engine worker processes: CPU engines, the audio post and the encoders on every core.

One ``ProcessLane`` per worker process, each driven by one scheduler thread (``Scheduler`` picks
jobs for it by the same EDF rule as the in-thread path). The lane speaks the request/response
protocol of ``stream_server.engine_worker`` over a pipe with at most one request outstanding, so
nothing queues without bound; the parent thread only pickles requests and unpickles encoded packets
(the pipe wait releases the GIL), and the event loop only forwards packets.

Faults (issue 10): an answer slower than ``watchdog_s`` means the engine hangs: the process is
killed, the running segment fails with ``engine_timeout`` and every other segment started on that
process with ``worker_restarted``; a process that dies (EOF on its pipe) fails them the same way with
``worker_crashed``. The lane forks a replacement at once, before it picks its next job; other lanes go on.

Processes come from the ``forkserver`` context with ``stream_server.engine_worker`` (and the recipe's
module) preloaded, so a replacement forks from a warm, torch-free template in milliseconds rather
than starting an interpreter; nothing is forked from the server process itself (its threads and
event loop must not be copied).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from engine.base import EngineError
from engine.config import AudioConfig
from stream_server.config import AppConfig
from stream_server.engine_worker import EngineRecipe, OpenSpec, worker_main
from stream_server.lanes import Lane, WorkerLost

if TYPE_CHECKING:
    from stream_server.scheduler import _Job

log = logging.getLogger(__name__)

# One step runs engine chunks until this much audio is encoded (or the segment ends): fewer round
# trips than one per 60 ms chunk (each costs a wake-up of the worker and of its lane thread), still
# fine-grained for EDF. A listener waiting for the first audio of its session gets its whole start-up
# cushion (the scheduler's first_audio_s) in that one step: the engine's fast-start piece is
# synthesized by its first chunk anyway, and encoding the rest of the cushion costs little next to a
# second round trip (with one chunk first, every session needed two steps before a later arrival
# got its first audio).
# Not tuned on a quiet machine: 0.24 and 1.0 were tried on an overloaded one (docs/PERFORMANCE.md).
STEP_AUDIO_S = 0.5
STEP_BUDGET_S = 0.02  # ... or until this much wall time is spent in the step
_START_TIMEOUT_S = 120.0  # worker start-up (engine build + warm-up)
_RETRY_S = 1.0  # a failed replacement is retried after this
_PRELOAD = ["stream_server.worker_preload"]


def resolve_workers(workers: int) -> int:
    """``[server] workers``: 0 = one per CPU core."""
    return workers if workers > 0 else max(1, os.cpu_count() or 1)


def recipe_of(engine: object) -> EngineRecipe | None:
    """The engine's ``worker_recipe()`` (CPU engines that a worker process can rebuild), if any."""
    make = getattr(engine, "worker_recipe", None)
    if make is None:
        return None
    target, kwargs = make()
    return EngineRecipe(target, dict(kwargs))


def build_lanes(engine: object, config: AppConfig, on_fault: Callable[[str], None]) -> list[Lane] | None:
    """One ``ProcessLane`` per worker for an engine with a ``worker_recipe`` when ``[server] workers``
    resolves to more than 1; None otherwise (the scheduler's one engine thread)."""
    workers = resolve_workers(config.server.workers)
    recipe = recipe_of(engine)
    if workers <= 1 or recipe is None:
        return None
    watchdog_s = config.server.engine_watchdog_s
    return [ProcessLane(i, recipe, config.audio, watchdog_s=watchdog_s, on_fault=on_fault) for i in range(workers)]


def _context(recipe: EngineRecipe) -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*_PRELOAD, recipe.target.partition(":")[0]])
    return ctx


class RemoteEngineError(EngineError):
    """An engine error raised in a worker process, re-raised here with its wire code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProcessLane:
    """One engine worker process and its pipe; used only by its scheduler thread.

    Args:
        index: lane number (jobs started here are pinned to it).
        recipe: how the worker builds its engine.
        audio: audio post and codec settings.
        watchdog_s: longest wait for one answer before the worker counts as hung.
        on_fault: called with ``"timeout"`` / ``"crash"`` each time a worker is lost (metrics).
    """

    def __init__(self, index: int, recipe: EngineRecipe, audio: AudioConfig, *, watchdog_s: float,
                 on_fault: Callable[[str], None] | None = None) -> None:
        self.index = index
        self.name = f"engine-worker-{index}"
        self.recipe = recipe
        self.audio = audio
        self.watchdog_s = watchdog_s
        self.on_fault = on_fault or (lambda reason: None)
        self.restarts = 0
        self.epoch = 0  # bumped each time the worker is lost: jobs opened before are gone
        self.calibration: tuple[float, float] | None = None  # (synth_s, audio_s) at first start
        self._retry_at = 0.0  # monotonic time of the next replacement attempt after a failed one
        self._ctx = _context(recipe)
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the worker process and wait for its warm-up (raises its start-up error)."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, args=(child, self.recipe, self.audio), name=self.name, daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(_START_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"{self.name} did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            answer = parent.recv()
        except (EOFError, OSError):
            self._kill()
            raise RuntimeError(f"{self.name} exited during start-up") from None
        if answer[0] != "ready":
            self._kill()
            raise RemoteEngineError(answer[1], answer[2])
        log.debug("%s ready (pid %s, warm-up %.2f s)", self.name, proc.pid, answer[1])
        if self.calibration is None and answer[3] > 0:
            self.calibration = (answer[2], answer[3])

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the worker sees EOF and exits
        if self._proc is not None:
            self._proc.join(2.0)
        self._kill()

    def advance(self, job: _Job, first_audio_s: float | None) -> tuple[list[bytes], bool]:
        spec = None
        if job.worker_epoch is None:
            r = job.request
            spec = OpenSpec(r.text, r.voice, r.options, r.format, r.sample_rate, first_audio_s is not None,
                            r.bitrate)
            job.worker_epoch = self.epoch
        elif job.worker_epoch != self.epoch:
            raise RemoteEngineError("worker_restarted", "the engine worker of this segment was lost")
        min_audio_s = STEP_AUDIO_S if first_audio_s is None else first_audio_s
        answer = self._request(("step", job.job_id, spec, min_audio_s, STEP_BUDGET_S))
        if answer[0] == "err":
            raise RemoteEngineError(answer[1], answer[2])
        _, packets, finished, _synth_s = answer
        return packets, finished

    def close_jobs(self, jobs: list[_Job]) -> None:
        ids = [j.job_id for j in jobs if j.worker_epoch == self.epoch]
        if ids and self._conn is not None:
            try:
                self._request(("close", ids))
            except WorkerLost:
                pass  # their state is gone with the worker anyway

    def recover(self) -> None:
        if self._conn is not None or time.monotonic() < self._retry_at:
            return
        try:
            self._replace()
        except WorkerLost:
            self._retry_at = time.monotonic() + _RETRY_S

    def _request(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._conn is None:
            self._replace()
        conn = self._conn
        assert conn is not None
        try:
            conn.send(request)
            if not conn.poll(self.watchdog_s):
                self._lose("timeout")
                raise WorkerLost(
                    "engine_timeout", f"the engine did not answer within {self.watchdog_s:g} s"
                )
            answer: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            self._lose("crash")
            raise WorkerLost("worker_crashed", "the engine worker process died") from None
        return answer

    def _lose(self, reason: str) -> None:
        log.error("%s (pid %s) lost: %s; it is replaced", self.name, self.pid, reason)
        self._kill()
        self.epoch += 1
        self.on_fault(reason)

    def _replace(self) -> None:
        try:
            self.start()
        except Exception as exc:
            log.error("%s could not be replaced: %s", self.name, exc)
            raise WorkerLost("worker_crashed", "no engine worker is available") from None
        self.restarts += 1

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5.0)
