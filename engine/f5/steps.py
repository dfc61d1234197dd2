"""What the F5 engine's batching API hands out: the item (`F5Item`) and the step cost table.

`F5Item` implements `engine.base.BatchItem`; its sampler state is an `engine.f5.batch.FlowItem`
until its last Euler step, then a `engine.f5.vocoder.VocodeStream` until its last audio chunk.

`StepCostTable` holds step wall times measured during warm-up, per kind ("sample" / "vocode") and
(items, frames) shape. With static shapes (compiled graphs) an estimate is the measured time of the
smallest measured shape that covers the request (what the step really runs); otherwise it is a
least-squares fit ``a + b * items * frames`` over the measured points (work grows with the padded
frame count; attention's quadratic part is small at these lengths), never below the cheapest point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.base import ItemPhase, StepKind
from engine.f5.batch import FlowItem
from engine.f5.vocoder import VocodeStream


@dataclass(eq=False)
class F5Item:
    """One F5 segment in flight (`engine.base.BatchItem`)."""

    phase: ItemPhase
    n_frames: int  # total frames of its sample (reference + generated)
    ref_frames: int = 0  # reference frames sliced off before vocoding (samples // 256)
    gain: float = 1.0  # output scale (quiet references are restored to their level)
    first_audio: bool = True
    flow: FlowItem | None = None
    stream: VocodeStream | None = None
    mel: np.ndarray | None = None  # (T, 100) float32 generated mel, once sampled
    audio_samples: int = 0  # samples returned so far
    timings: dict[str, float] = field(default_factory=dict)  # frontend_s, prepare_s (open_item)

    @property
    def steps_left(self) -> int:
        return self.flow.steps_left if self.flow is not None else 0

    @property
    def chunks_left(self) -> int:
        return self.stream.chunks_left if self.stream is not None else 0


class StepCostTable:
    """Measured step times; ``estimate`` answers `BatchEngine.step_cost_s`."""

    def __init__(self, *, bucketed: bool = False) -> None:
        self.bucketed = bucketed
        self._points: dict[str, dict[tuple[int, int], float]] = {"sample": {}, "vocode": {}}

    def record(self, kind: StepKind, rows: int, frames: int, seconds: float) -> None:
        if rows < 1 or frames < 1 or not seconds >= 0:
            raise ValueError(f"bad cost point {kind} ({rows}, {frames}): {seconds}")
        self._points[kind][(rows, frames)] = float(seconds)

    def points(self, kind: StepKind) -> dict[tuple[int, int], float]:
        return dict(self._points[kind])

    def estimate(self, kind: StepKind, rows: int, frames: int) -> float:
        """Seconds for one ``kind`` step of ``rows`` items of up to ``frames`` frames; 0.0 when
        nothing was measured."""
        if kind not in self._points:
            raise ValueError(f"unknown step kind {kind!r}")
        pts = self._points[kind]
        if not pts:
            return 0.0
        rows, frames = max(1, rows), max(1, frames)
        if self.bucketed:
            cover = [(r * f, s) for (r, f), s in pts.items() if r >= rows and f >= frames]
            if cover:
                return min(cover)[1]
        work = np.array([r * f for r, f in pts], dtype=np.float64)
        secs = np.array(list(pts.values()), dtype=np.float64)
        w = float(rows * frames)
        if len(set(work.tolist())) < 2:
            return float(secs.mean() * w / work.mean())
        slope, icept = np.polyfit(work, secs, 1)
        slope = max(slope, 0.0)
        return float(max(icept + slope * w, secs.min() if w >= work.min() else 0.0, 0.0))
