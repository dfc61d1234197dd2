"""Gauges read at scrape time (queues, outboxes, tasks, threads) and the event-loop lag monitor.

``install(hub)`` registers a collector on the hub's registry that reads the live state when
``/metrics`` is scraped (on the event loop, so nothing here needs a lock of its own), and returns
the ``LoopLagMonitor`` that the app's lifespan starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream_server.connection import Connection, Hub

_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    """Sleeps ``interval_s`` again and again; how late each wake-up is = event-loop lag.

    ``last_s``: the latest lag; ``max_s``: the largest since the previous scrape (reset by
    ``take_max``); every sample goes to the ``stream_tts_event_loop_lag_seconds`` histogram.
    """

    def __init__(self, histogram: Histogram, interval_s: float = 0.1) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.last_s = 0.0
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def take_max(self) -> float:
        value, self.max_s = self.max_s, self.last_s
        return value

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - t0 - self.interval_s)
            self.last_s = lag
            self.max_s = max(self.max_s, lag)
            self.histogram.observe(lag)


class LiveCollector(Collector):
    """Gauges computed from the hub when ``/metrics`` is scraped."""

    def __init__(self, hub: Hub, lag: LoopLagMonitor) -> None:
        self.hub = hub
        self.lag = lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hub = self.hub
        # per-session gauges cover /v1/stream sessions (other APIs keep their own state)
        conns = [c for c in hub.connections if isinstance(c, Connection)]
        sched = hub.scheduler

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("stream_tts_queued_jobs", "Segments queued or in synthesis at the scheduler",
                    sched.job_count() if sched is not None else 0)
        yield gauge("stream_tts_inflight_segments", "Segments handed to the scheduler, not finished",
                    sum(c.session.utterance.in_flight for c in conns))
        yield gauge("stream_tts_backlog_segments", "Segments waiting in sessions for a scheduler slot",
                    sum(len(c.session.utterance.backlog) for c in conns))
        yield gauge("stream_tts_outbox_bytes", "Audio bytes queued in session outboxes, not yet sent",
                    sum(c.outbox.audio_bytes for c in conns))
        yield gauge("stream_tts_outbox_items", "Messages and frames queued in session outboxes",
                    sum(len(c.outbox) for c in conns))
        yield gauge("stream_tts_scheduler_channels", "Sessions known to the scheduler",
                    sched.channel_count() if sched is not None else 0)
        yield gauge("stream_tts_event_loop_lag_seconds_max",
                    "Largest event-loop lag since the previous scrape", self.lag.take_max())
        with contextlib.suppress(RuntimeError):  # no running loop: scraped from another thread
            yield gauge("stream_tts_asyncio_tasks", "asyncio tasks alive on the server's event loop",
                        len(asyncio.all_tasks()))
        yield gauge("stream_tts_threads", "Python threads alive in the server process",
                    threading.active_count())
        yield gauge("stream_tts_draining", "1 while the server drains (SIGTERM/SIGINT received)",
                    1 if hub.draining or hub.shutting_down else 0)


def install(hub: Hub) -> LoopLagMonitor:
    """Register the live gauges and the lag histogram on the hub's registry."""
    registry = hub.metrics.registry
    histogram = Histogram(
        "stream_tts_event_loop_lag_seconds",
        "How late the event loop wakes a 100 ms sleep (sampled continuously)",
        buckets=_LAG_BUCKETS_S, registry=registry,
    )
    lag = LoopLagMonitor(histogram)
    registry.register(LiveCollector(hub, lag))
    return lag
