"""``stream-tts bench-engine --streams 1,4,8,16``: many streams through the server's own worker.

Each level starts N streams, all at once or ``--stagger-ms`` apart. A stream sends the benchmark text
(cut by the server's chunker) like a session does: all of it on arrival, at most two segments at
the worker at a time (``session.SUBMIT_AHEAD``), the next one as one finishes. Streams go through
the very worker the server runs (``batch_worker.make_scheduler``: the batch worker and its policy
for a batching engine, the chunk worker otherwise), with the server's audio post and encoding, but no
sockets: a stream's audio counts as written the moment it is made.

Reported per level: first-audio latency (arrival -> first audio chunk out of the worker) p50/p95,
aggregate audio seconds per wall second (all streams' audio / the level's wall time), per-stream RTF
(arrival -> last audio, over the stream's audio seconds; < 1 keeps ahead of real time), underruns
of a listener that plays from its first audio, and for batching engines the mean items per sampler
step. ``--compare-unbatched`` runs every level a second time with one item per step (the same
worker and arrivals, ``max_rows=1``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from engine.base import Engine, SynthOptions
from engine.config import AudioConfig
from stream_server.batch_policy import BatchPolicy, StepKind
from stream_server.batch_worker import BatchEngine, make_scheduler
from stream_server.scheduler import SegmentAudio, SegmentFinished, SynthRequest, WorkerEvent
from stream_server.session import SUBMIT_AHEAD
from stream_server.tools.bench_report import percentile, simulate_playback

_TIMEOUT_S = 3600.0


@dataclass
class _Stream:
    index: int
    segments: list[str]
    arrival_s: float = math.nan
    first_audio_s: float = math.nan
    last_audio_s: float = math.nan
    audio_s: float = 0.0
    next_index: int = 0
    in_flight: int = 0
    finished: int = 0
    errors: list[str] = field(default_factory=list)
    frames: list[tuple[float, float]] = field(default_factory=list)  # (arrival, seconds) per event
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def run_level(
    engine: Engine,
    n_streams: int,
    segments: list[str],
    voice: str,
    options: SynthOptions,
    *,
    stagger_s: float = 0.0,
    max_rows: int | None = None,
    policy: BatchPolicy | None = None,
    audio: AudioConfig | None = None,
    fmt: str = "pcm_s16le",
) -> dict[str, Any]:
    """One level: ``n_streams`` streams of ``segments``; returns its summary (see the module doc)."""
    audio = audio or AudioConfig()
    rows: list[int] = []

    def on_step(kind: StepKind, n: int, seconds: float) -> None:
        if kind == "sample":
            rows.append(n)

    sched = make_scheduler(
        engine, audio, max_jobs=SUBMIT_AHEAD * n_streams + 8, max_ahead_s=1e9,
        policy=policy or BatchPolicy(), max_rows=max_rows, on_step=on_step,
    )
    sched.start(asyncio.get_running_loop())
    streams = [_Stream(i, list(segments)) for i in range(n_streams)]
    try:
        t0 = time.monotonic()
        for s in streams:
            delay = t0 + s.index * stagger_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            _start(sched, s, voice, options, fmt)
        async with asyncio.timeout(_TIMEOUT_S):
            for s in streams:
                await s.done.wait()
        wall_s = max(s.last_audio_s for s in streams) - t0 if streams else 0.0
    finally:
        await asyncio.to_thread(sched.stop)
    return _summarize(n_streams, streams, wall_s, rows)


def _start(sched: Any, s: _Stream, voice: str, options: SynthOptions, fmt: str) -> None:
    s.arrival_s = time.monotonic()
    holder: list[Any] = []

    def pump() -> None:
        while s.next_index < len(s.segments) and s.in_flight < SUBMIT_AHEAD:
            req = SynthRequest(0, s.next_index, s.segments[s.next_index], voice, options, fmt, 24000)
            s.next_index += 1
            s.in_flight += 1
            sched.submit(holder[0], req, s.arrival_s)

    def sink(event: WorkerEvent) -> None:
        now = time.monotonic()
        if isinstance(event, SegmentAudio):
            if math.isnan(s.first_audio_s):
                s.first_audio_s = now
            s.last_audio_s = now
            s.audio_s += event.audio_s
            s.frames.append((now, event.audio_s))
            sched.note_written(holder[0], event.audio_s)
            return
        s.in_flight -= 1
        s.finished += 1
        if not isinstance(event, SegmentFinished):
            s.errors.append(event.code)
        if s.finished == len(s.segments):
            s.done.set()
        else:
            pump()

    holder.append(sched.open_channel(f"bench-{s.index}", sink))
    pump()


def _summarize(n: int, streams: list[_Stream], wall_s: float, rows: list[int]) -> dict[str, Any]:
    first_ms = [(s.first_audio_s - s.arrival_s) * 1000 for s in streams if not math.isnan(s.first_audio_s)]
    rtfs = [(s.last_audio_s - s.arrival_s) / s.audio_s for s in streams if s.audio_s > 0]
    underruns = 0
    for s in streams:
        if s.frames:
            underruns += simulate_playback([a for a, _ in s.frames], [d for _, d in s.frames]).underruns
    total_audio = sum(s.audio_s for s in streams)
    return {
        "streams": n,
        "first_audio_ms_p50": percentile(first_ms, 50),
        "first_audio_ms_p95": percentile(first_ms, 95),
        "audio_s": total_audio,
        "wall_s": wall_s,
        "aggregate_x_realtime": total_audio / wall_s if wall_s > 0 else math.nan,
        "stream_rtf_p50": percentile(rtfs, 50),
        "stream_rtf_max": max(rtfs) if rtfs else math.nan,
        "underruns": underruns,
        "errors": sum(len(s.errors) for s in streams),
        "mean_rows_per_sample_step": sum(rows) / len(rows) if rows else math.nan,
    }


def run_levels(
    engine: Engine,
    levels: list[int],
    segments: list[str],
    voice: str,
    options: SynthOptions,
    *,
    stagger_s: float = 0.0,
    compare_unbatched: bool = False,
    policy: BatchPolicy | None = None,
) -> list[dict[str, Any]]:
    """Every level (and its one-at-a-time twin with ``compare_unbatched``), printed as it ends."""
    batching = isinstance(engine, BatchEngine)
    modes: list[tuple[str, int | None]] = [("batched" if batching else "chunked", None)]
    if compare_unbatched and batching:
        modes.append(("unbatched", 1))
    out = []
    print(f"{'streams':>7} {'mode':>9} {'first p50':>10} {'first p95':>10} {'x realtime':>10} "
          f"{'RTF p50':>8} {'RTF max':>8} {'underruns':>9} {'rows/step':>9} {'errors':>6}")
    for n in levels:
        for mode, max_rows in modes:
            level = asyncio.run(run_level(engine, n, segments, voice, options, stagger_s=stagger_s,
                                          max_rows=max_rows, policy=policy))
            level["mode"] = mode
            out.append(level)
            print(f"{n:>7} {mode:>9} {level['first_audio_ms_p50']:>8.0f}ms {level['first_audio_ms_p95']:>8.0f}ms "
                  f"{level['aggregate_x_realtime']:>10.2f} {level['stream_rtf_p50']:>8.3f} "
                  f"{level['stream_rtf_max']:>8.3f} {level['underruns']:>9} "
                  f"{level['mean_rows_per_sample_step']:>9.2f} {level['errors']:>6}", flush=True)
    return out


def parse_streams(spec: str) -> list[int]:
    """``"1,4,8,16"`` -> [1, 4, 8, 16]; ValueError on anything else."""
    try:
        levels = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--streams must be comma-separated integers, got {spec!r}") from None
    if not levels or any(n < 1 or n > 1000 for n in levels):
        raise ValueError(f"--streams values must be 1..1000, got {spec!r}")
    return levels


def run_from_args(args: Any, engine: Engine, segments: list[str], voice: str, extra: dict[str, Any]) -> int:
    """The ``bench-engine --streams`` path (engine built and warmed up by ``bench_engine.run``)."""
    import sys

    from stream_server.tools.bench_report import write_json

    try:
        levels = parse_streams(args.streams)
    except ValueError as exc:
        print(f"bench-engine: {exc}", file=sys.stderr)
        return 2
    if args.stagger_ms < 0:
        print("bench-engine: --stagger-ms must be >= 0", file=sys.stderr)
        return 2
    options = SynthOptions(seed=args.seed, nfe=args.nfe if engine.name == "f5" else None)
    batching = isinstance(engine, BatchEngine)
    worker = "chunk"
    if isinstance(engine, BatchEngine):
        worker = f"batch (max {engine.max_batch_rows} rows, {engine.max_batch_frames} frames)"
    print(f"streams {levels}, stagger {args.stagger_ms:g} ms, worker: {worker}")
    if args.compare_unbatched and not batching:
        print("bench-engine: --compare-unbatched needs a batching engine; this one runs one chunk at a time")
    results = run_levels(engine, levels, segments, voice, options, stagger_s=args.stagger_ms / 1000.0,
                         compare_unbatched=args.compare_unbatched)
    if args.json:
        config = {"engine": engine.name, "device": engine.device, "nfe": args.nfe,
                  "segments": len(segments), "stagger_ms": args.stagger_ms, "batching": batching, **extra}
        costs = getattr(engine, "costs", None)  # F5: the step cost table measured in warm-up
        if costs is not None and hasattr(costs, "points"):
            config["step_cost_s"] = {kind: [[r, f, s] for (r, f), s in sorted(costs.points(kind).items())]
                                     for kind in ("sample", "vocode")}
        write_json(args.json, config, results)
    return 0
