"""CUDA graphs for the batched F5 sampler step: one graph per (items bucket, frames bucket).

`CudaGraphRunner` owns flat static input buffers sized for the largest captured shape; a shape's
inputs are contiguous views at the start of those buffers, so every graph reads fixed addresses.
All graphs share one memory pool and are captured largest first (the small ones reuse its memory),
as vLLM does. A graph's output is only valid until the next replay of any graph: the caller
consumes it (the Euler update) right away.

Build and capture under ``torch.inference_mode()`` (as the sampler's steps run), so a compiled
velocity sees the same grad mode and tensor kinds at capture and in service.

The captured function is the sampler's velocity (usually ``torch.compile``d with dynamic shapes, so
one compilation serves every bucket and each graph is just a capture). CUDA only; the CPU tests
cover the bucketing and padding logic through `engine.f5.batch.BatchSampler` with static shapes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from engine.f5.config import N_MELS

log = logging.getLogger(__name__)

Velocity = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]


class CudaGraphRunner:
    """Captures and replays ``velocity(x, cond, text, t, cfg, mask)`` at fixed shapes.

    Shapes: x (r, f, 100) fp32; cond (r, f, 100) and text (2r, f, text_dim) in ``dtype``;
    t, cfg (r,) fp32; mask (r, f) bool.
    """

    def __init__(self, velocity: Velocity, shapes: Sequence[tuple[int, int]], *, text_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        if not shapes:
            raise ValueError("no shapes to capture")
        self.velocity = velocity
        self.device = device
        self.shapes = sorted(set(shapes), key=lambda rf: (rf[0] * rf[1], rf), reverse=True)
        cells = max(r * f for r, f in self.shapes)
        rows = max(r for r, _ in self.shapes)
        self._x = torch.zeros(cells * N_MELS, device=device, dtype=torch.float32)
        self._cond = torch.zeros(cells * N_MELS, device=device, dtype=dtype)
        self._text = torch.zeros(2 * cells * text_dim, device=device, dtype=dtype)
        self._t = torch.zeros(rows, device=device, dtype=torch.float32)
        self._cfg = torch.zeros(rows, device=device, dtype=torch.float32)
        self._mask = torch.ones(cells, device=device, dtype=torch.bool)
        self.text_dim = text_dim
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.graph_bytes = 0

    def _views(self, r: int, f: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        n = r * f
        return (
            self._x[: n * N_MELS].view(r, f, N_MELS),
            self._cond[: n * N_MELS].view(r, f, N_MELS),
            self._text[: 2 * n * self.text_dim].view(2 * r, f, self.text_dim),
            self._t[:r],
            self._cfg[:r],
            self._mask[:n].view(r, f),
        )

    def has(self, rows: int, frames: int) -> bool:
        return (rows, frames) in self._graphs

    def capture_all(self, on_shape: Callable[[int, int, int, float], None] | None = None) -> float:
        """Capture every shape (largest first), logging progress; returns seconds spent.

        ``on_shape(index, rows, frames, replay_s)`` gets the median of 3 timed replays per shape
        (the step cost table)."""
        t0 = time.perf_counter()
        free_before = torch.cuda.mem_get_info(self.device)[0]
        total = len(self.shapes)
        for i, (r, f) in enumerate(self.shapes, start=1):
            ts = time.perf_counter()
            views = self._views(r, f)
            views[5].fill_(True)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # compile / autotune outside the capture
                for _ in range(2):
                    self.velocity(*views)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.velocity(*views)
            self._graphs[(r, f)] = (graph, out)
            times = []
            for _ in range(3):
                torch.cuda.synchronize(self.device)
                tr = time.perf_counter()
                graph.replay()
                torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - tr)
            replay_s = sorted(times)[1]
            log.info("f5 warm-up: capturing %d/%d (items %d x frames %d) in %.2f s, step %.1f ms",
                     i, total, r, f, time.perf_counter() - ts, 1000 * replay_s)
            if on_shape is not None:
                on_shape(i, r, f, replay_s)
        self.graph_bytes = max(0, free_before - torch.cuda.mem_get_info(self.device)[0])
        seconds = time.perf_counter() - t0
        log.info("f5 warm-up: captured %d CUDA graphs in %.1f s, graph memory %.2f GiB",
                 total, seconds, self.graph_bytes / 2**30)
        return seconds

    def run(self, x: Tensor, cond: Tensor, text: Tensor, t: Tensor, cfg: Tensor,
            mask: Tensor | None) -> Tensor:
        """Copy the inputs into the static buffers of their shape and replay its graph.

        Returns the graph's output tensor (r, f, 100) fp32: read it before the next replay."""
        r, f = x.shape[0], x.shape[1]
        graph, out = self._graphs[(r, f)]
        vx, vc, vt, vtime, vcfg, vmask = self._views(r, f)
        vx.copy_(x)
        vc.copy_(cond)
        vt.copy_(text)
        vtime.copy_(t)
        vcfg.copy_(cfg)
        if mask is None:
            vmask.fill_(True)
        else:
            vmask.copy_(mask)
        graph.replay()
        return out


def configure_compile_cache(n_shapes: int) -> None:
    """Keep compiled kernels on disk (fast restarts) and allow a graph per step shape."""
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "stream-tts" / "inductor")
    )
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    needed = n_shapes + 8  # + headroom for the CFG-off path and guard re-specialisations
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, needed)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * needed
    )
