"""F5 engine warm-up: compile and capture every step shape (CUDA), measure the step cost table.

Compiled on CUDA: the sampler step is compiled once (dynamic shapes) and one CUDA graph is captured
per reachable (items bucket, frames bucket) shape, largest first, with progress and the graph
memory in the log; each capture's replay time goes into the cost table. Otherwise (CPU, eager) a
few cheap shapes are timed and the table fits them (`engine.f5.steps.StepCostTable`).
Vocoder steps are timed for 1 and 2 (CUDA: up to ``max_batch_rows``) streams.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from engine.f5 import frontend as frontend_mod
from engine.f5.batch import FlowItem, reachable_shapes
from engine.f5.config import N_MELS
from engine.f5.sampler import time_grid

if TYPE_CHECKING:
    from engine.f5.engine import F5Engine

log = logging.getLogger(__name__)

# (items, frames) timed on CPU / uncompiled, after one untimed (1, 96) step; small, because a
# full-size step on a CPU takes seconds (the fit extrapolates by items x frames)
_EAGER_POINTS = ((1, 48), (1, 96))


def _dummy_items(engine: F5Engine, rows: int, frames: int) -> list[FlowItem]:
    cond = torch.zeros(1, min(32, frames - 1), N_MELS)
    ids = torch.zeros(1, 8, dtype=torch.long)
    grid = time_grid(32)  # many steps: one item serves every timed step
    return [engine.batch.new_item(cond, ids, frames, grid, 2.0, seed=i) for i in range(rows)]


def _time_sample_step(engine: F5Engine, rows: int, frames: int, repeats: int = 1) -> float:
    items = _dummy_items(engine, rows, frames)
    times = []
    for _ in range(repeats):
        engine._sync()
        t0 = time.perf_counter()
        engine.batch.step(items)
        engine._sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _time_vocode(engine: F5Engine, rows: int) -> tuple[int, float]:
    """Seconds of one vocode step of ``rows`` streams at a later (full-size) chunk."""
    voc = engine.vocoder
    n = voc.first_chunk_frames + 2 * voc.chunk_frames + 2
    streams = [voc.open_stream(torch.zeros(1, n, N_MELS, device=engine.device) - 5.0)
               for _ in range(rows)]
    voc.decode_step(streams)  # the first chunk (also warms the vocoder up)
    frames = voc.window_frames(streams[0])
    engine._sync()
    t0 = time.perf_counter()
    voc.decode_step(streams)
    engine._sync()
    return frames, time.perf_counter() - t0


def run_warmup(engine: F5Engine) -> float:
    t0 = time.perf_counter()
    frontend_mod.warmup()
    if engine.compiled and engine.buckets:
        _capture_graphs(engine)
    else:
        _time_sample_step(engine, 1, 96)  # first call: lazy initialisation
        for rows, frames in _EAGER_POINTS:
            if rows <= engine.max_batch_rows:
                engine.costs.record("sample", rows, frames, _time_sample_step(engine, rows, frames))
    vocode_rows = [1, 2] if not engine.compiled else sorted({1, 2, 4, engine.max_batch_rows})
    for rows in vocode_rows:
        if rows <= engine.max_batch_rows:
            frames, seconds = _time_vocode(engine, rows)
            engine.costs.record("vocode", rows, frames, seconds)
    seconds = time.perf_counter() - t0
    log.info("f5 warm-up: done in %.1f s (sample step 1 x 256 frames ~%.1f ms)",
             seconds, 1000 * engine.step_cost_s(1, 256, "sample"))
    return seconds


def _capture_graphs(engine: F5Engine) -> None:
    from engine.f5.graphs import CudaGraphRunner

    shapes = reachable_shapes(engine.row_buckets, engine.buckets, engine.max_batch_frames)
    log.info("f5 warm-up: compiling the sampler step and capturing %d CUDA graphs "
             "(items buckets %s, %d frame buckets up to %d)", len(shapes), engine.row_buckets,
             len(engine.buckets), engine.buckets[-1])
    tc = time.perf_counter()
    r0, f0 = shapes[-1]  # smallest: compile once with dynamic shapes
    _time_sample_step(engine, r0, f0)
    _time_sample_step(engine, min(2, engine.max_batch_rows), engine.buckets[0])
    log.info("f5 warm-up: compiled in %.1f s", time.perf_counter() - tc)

    def record(_: int, rows: int, frames: int, seconds: float) -> None:
        engine.costs.record("sample", rows, frames, seconds)

    with torch.inference_mode():  # as the sampler steps run: the compiled guards stay valid
        runner = CudaGraphRunner(
            engine.batch.velocity, shapes, text_dim=engine.model_config.text_dim,
            dtype=engine.model.dtype, device=torch.device(engine.device),
        )
        runner.capture_all(record)
    engine.batch.runner = runner
    engine.graph_bytes = runner.graph_bytes
