"""Prometheus metrics of one app, in a per-app registry (tests build many apps in one process)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

# Server TTFA: tens of ms on CPU with eSpeak; hundreds with F5 under load.
_TTFA_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
_RTF_BUCKETS = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


class ServerMetrics:
    """TTFA / RTF histograms, sessions, segments, audio and errors.

    Implements ``stream_server.session.SessionMetrics``.
    """

    def __init__(self, replica: str = "") -> None:
        """``replica``: when set, every sample carries a ``replica`` label (several servers)."""
        self.replica = replica
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttfa = Histogram(
            "stream_tts_ttfa_seconds",
            "Server time to first audio per turn: text completing the first segment -> first frame written",
            buckets=_TTFA_BUCKETS_S, registry=r,
        )
        self.segment_rtf = Histogram(
            "stream_tts_segment_rtf", "Real-time factor per segment (synthesis time / audio time)",
            buckets=_RTF_BUCKETS, registry=r,
        )
        self.active_sessions = Gauge("stream_tts_active_sessions", "Open WebSocket sessions", registry=r)
        self.sessions = Counter("stream_tts_sessions", "Sessions accepted", registry=r)
        self.rejected_sessions = Counter(
            "stream_tts_rejected_sessions", "Sessions refused with 1013 (max_sessions)", registry=r
        )
        self.segments = Counter("stream_tts_segments", "Segments synthesized", registry=r)
        self.audio_seconds = Counter("stream_tts_audio_seconds", "Seconds of audio synthesized", registry=r)
        self.synth_seconds = Counter(
            "stream_tts_synth_seconds", "Engine-thread seconds spent synthesizing", registry=r
        )
        self.errors = Counter("stream_tts_errors", "Errors sent to clients", ["code"], registry=r)
        self.engine_faults = Counter(
            "stream_tts_engine_faults",
            "Engine faults contained by the worker (exception: a segment failed; oom: out of memory, "
            "retried smaller or failed; worker: a step bug caught)",
            ["kind"], registry=r,
        )
        self.batch_rows = Histogram(
            "stream_tts_batch_rows", "Items per engine step of a batching engine", ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )
        # reliability (docs/RELIABILITY.md); live gauges (queues, outboxes, tasks) in live_metrics
        self.refusals = Counter(
            "stream_tts_refusals", "Connections or sessions refused or cut before they started, by reason",
            ["reason"], registry=r,
        )
        self.process = ProcessCollector(registry=r)  # process_resident_memory_bytes, _open_fds, ...

    def observe_ttfa(self, seconds: float) -> None:
        self.ttfa.observe(seconds)

    def observe_segment(self, audio_s: float, synth_s: float) -> None:
        self.segments.inc()
        self.audio_seconds.inc(audio_s)
        self.synth_seconds.inc(synth_s)
        if audio_s > 0:
            self.segment_rtf.observe(synth_s / audio_s)

    def observe_error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def observe_engine_fault(self, kind: str) -> None:
        self.engine_faults.labels(kind=kind).inc()

    def observe_step(self, kind: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(kind=kind).observe(rows)

    def observe_refusal(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.collector())

    def collector(self) -> CollectorRegistry | _Labelled:
        """What to expose: the registry, seen through the ``replica`` label when one is set."""
        if not self.replica:
            return self.registry
        return _Labelled(self.registry, {"replica": self.replica})


class _Labelled:
    """A registry view that adds constant labels to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self.registry = registry
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [
                Sample(s.name, {**s.labels, **self.labels}, s.value, s.timestamp, s.exemplar)
                for s in metric.samples
            ]
            yield out
