"""Which items go into a batching engine's next step: the pure, sans-I/O half of batch scheduling.

The batch worker (``stream_server.batch_worker``) and ``stream-tts bench-engine`` describe every
item that could advance now as a ``Candidate`` and call ``choose_step``; it returns one ``StepPlan``:
a sampler step or a vocoder step and the items it advances. No clock, no threads, no engine: the
time and the engine's measured cost table come in as arguments, so every decision is unit-tested.

The rules, in order:

1. **Earliest deadline first.** The most urgent candidate (earliest deadline, ties by ``order``)
   always runs, and its kind (sample / vocode) is the kind of the step. A listener waiting for
   first audio has the arrival time of its text as deadline (already past); a listener that is
   playing has the moment its buffer runs dry; a segment made ahead of playback has a later one.
2. **Batch only what the cost table says is nearly free.** Other candidates of the same kind join
   in deadline order while the step stays within ``max_rows`` items and, for sampler steps,
   ``max_frames`` padded frames (rows x the longest item). Each joins only if the step's estimated
   cost grows by at most ``max_marginal_ratio`` of what the item would cost alone. On a CPU, where a
   forward costs about rows x frames, nothing joins and the urgent item runs alone (nobody waits for
   a big batch); on a GPU a few more rows cost little and whole groups advance together.
3. **Segments made ahead ride along only when it costs the urgent ones (almost) nothing.** While the
   step carries an urgent item (its deadline is within its remaining solo work plus
   ``urgent_margin_s``), a non-urgent one joins only if it adds at most ``ride_along_ratio`` of the
   step's current cost. With no urgent item in the step, rule 2 alone applies.
4. A step is never empty and never waits: the scheduler is work-conserving, and an item that arrives
   during a step joins at the next one (continuous batching).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.base import StepKind

# (rows, frames, kind) -> estimated seconds of one step; the engine's ``step_cost_s``
CostFn = Callable[[int, int, StepKind], float]


@dataclass(frozen=True)
class Candidate:
    """One item that could advance in the next step.

    Attributes:
        key: the caller's handle for the item (returned in ``StepPlan.keys``).
        kind: "sample" (its next sampler step) or "vocode" (its next vocoder chunk).
        frames: its size for the cost table: total frames (sample) or the chunk's frames (vocode).
        deadline_s: when it is needed, on the caller's clock (see rule 1).
        order: tie-break between equal deadlines (lower first: the session opened first).
        steps_left: sampler steps still to run (sampling items; 0 for vocoding ones).
    """

    key: int
    kind: StepKind
    frames: int
    deadline_s: float
    order: int = 0
    steps_left: int = 0


@dataclass(frozen=True)
class BatchLimits:
    """Hard limits of one step (the engine's ``max_batch_rows`` / ``max_batch_frames``, or lower
    after an out-of-memory)."""

    max_rows: int
    max_frames: int

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_frames < 1:
            raise ValueError(f"batch limits must be >= 1, got {self.max_rows} rows, {self.max_frames} frames")


@dataclass(frozen=True)
class BatchPolicy:
    """The knobs of rules 2 and 3 (see the module docstring). ``max_marginal_ratio=0`` never batches
    unless a row is free; ``max_rows=1`` in ``BatchLimits`` is one-at-a-time."""

    max_marginal_ratio: float = 0.5
    ride_along_ratio: float = 0.1
    urgent_margin_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("max_marginal_ratio", "ride_along_ratio", "urgent_margin_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class StepPlan:
    """The next step: its kind, the keys of the items it advances (most urgent first), and its
    estimated cost from the table."""

    kind: StepKind
    keys: tuple[int, ...]
    padded_frames: int  # rows x longest item (the sampler's padded batch size)
    est_cost_s: float


def remaining_work_s(c: Candidate, cost: CostFn) -> float:
    """What the item still costs if it ran alone: its sampler steps, then one vocoder chunk."""
    if c.kind == "sample":
        return c.steps_left * cost(1, c.frames, "sample")
    return cost(1, c.frames, "vocode")


def is_urgent(c: Candidate, now_s: float, cost: CostFn, policy: BatchPolicy) -> bool:
    """Its deadline falls within its remaining solo work plus the margin."""
    return c.deadline_s - now_s <= remaining_work_s(c, cost) + policy.urgent_margin_s


def choose_step(
    candidates: Sequence[Candidate],
    limits: BatchLimits,
    cost: CostFn,
    now_s: float,
    policy: BatchPolicy | None = None,
) -> StepPlan | None:
    """The next step for ``candidates`` (None when there are none); see the module docstring."""
    if not candidates:
        return None
    policy = policy or BatchPolicy()
    ordered = sorted(candidates, key=lambda c: (c.deadline_s, c.order))
    head = ordered[0]
    kind = head.kind
    batch = [head]
    longest = head.frames
    step_cost = cost(1, head.frames, kind)
    carries_urgent = is_urgent(head, now_s, cost, policy)
    for c in ordered[1:]:
        if len(batch) >= limits.max_rows:
            break
        if c.kind != kind:
            continue
        new_longest = max(longest, c.frames)
        if kind == "sample" and (len(batch) + 1) * new_longest > limits.max_frames:
            continue  # a shorter item further on may still fit
        new_cost = cost(len(batch) + 1, new_longest, kind)
        delta = new_cost - step_cost
        if delta > policy.max_marginal_ratio * cost(1, c.frames, kind):
            continue
        urgent = is_urgent(c, now_s, cost, policy)
        if carries_urgent and not urgent and delta > policy.ride_along_ratio * step_cost:
            continue
        batch.append(c)
        longest, step_cost = new_longest, new_cost
        carries_urgent = carries_urgent or urgent
    return StepPlan(kind, tuple(c.key for c in batch), len(batch) * longest, step_cost)


class OomBackoff:
    """Batch limits after out-of-memory errors: each one halves the rows and padded frames of the
    step that failed (or the current caps, if lower); every ``recovery_steps`` clean steps double
    them again, and once both reach the engine's limits the backoff ends."""

    def __init__(self, max_rows: int, max_frames: int, recovery_steps: int = 64) -> None:
        self.max_rows = max_rows
        self.max_frames = max_frames
        self.recovery_steps = recovery_steps
        self.rows: int | None = None  # current caps; None = no backoff
        self.frames: int | None = None
        self._clean = 0

    def limits(self) -> BatchLimits:
        rows = min(self.max_rows, self.rows or self.max_rows)
        frames = min(self.max_frames, self.frames or self.max_frames)
        return BatchLimits(max(1, rows), max(1, frames))

    def out_of_memory(self, rows: int, frames: int) -> BatchLimits:
        """A step of ``rows`` items and ``frames`` padded frames ran out of memory."""
        self.rows = max(1, min(self.rows or rows, rows) // 2)
        self.frames = max(1, min(self.frames or frames, frames) // 2)
        self._clean = 0
        return self.limits()

    def clean_step(self) -> None:
        if self.rows is None or self.frames is None:
            return
        self._clean += 1
        if self._clean >= self.recovery_steps:
            self._clean = 0
            self.rows *= 2
            self.frames *= 2
            if self.rows >= self.max_rows and self.frames >= self.max_frames:
                self.rows = self.frames = None


def linear_cost(per_row_frame_s: float, overhead_s: float = 0.0) -> CostFn:
    """A cost table where a step costs ``overhead + rows x frames x per_row_frame`` (a CPU-like
    device; tests and fakes use it)."""

    def cost(rows: int, frames: int, kind: StepKind) -> float:
        return overhead_s + rows * frames * per_row_frame_s

    return cost
