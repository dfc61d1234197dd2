"""The batch step policy: deadline order, limits, and batching only where the cost table pays."""

from __future__ import annotations

import pytest

from stream_server.batch_policy import (
    BatchLimits,
    BatchPolicy,
    Candidate,
    OomBackoff,
    choose_step,
    is_urgent,
    linear_cost,
)
from tests.stream_server.batch_fakes import cpu_like_cost, gpu_like_cost

WIDE = BatchLimits(max_rows=64, max_frames=1_000_000)
NOW = 100.0


def sample(key: int, deadline: float, frames: int = 300, order: int = 0, steps: int = 7) -> Candidate:
    return Candidate(key, "sample", frames, deadline, order, steps)


def vocode(key: int, deadline: float, frames: int = 24, order: int = 0) -> Candidate:
    return Candidate(key, "vocode", frames, deadline, order)


def test_no_candidates_no_step() -> None:
    assert choose_step([], WIDE, gpu_like_cost, NOW) is None


def test_the_most_urgent_item_always_runs_and_sets_the_kind() -> None:
    cands = [sample(0, NOW + 5), vocode(1, NOW - 1), sample(2, NOW + 1)]
    plan = choose_step(cands, WIDE, gpu_like_cost, NOW)
    assert plan is not None and plan.kind == "vocode" and plan.keys[0] == 1
    assert set(plan.keys) == {1}  # nothing else vocodes


def test_equal_deadlines_go_by_order() -> None:
    cands = [sample(0, NOW, order=3), sample(1, NOW, order=1)]
    plan = choose_step(cands, BatchLimits(1, 10_000), gpu_like_cost, NOW)
    assert plan is not None and plan.keys == (1,)


def test_on_a_gpu_like_device_waiting_listeners_share_one_step() -> None:
    cands = [sample(k, NOW - 0.1 * k, order=k) for k in range(16)]
    plan = choose_step(cands, WIDE, gpu_like_cost, NOW)
    assert plan is not None and plan.kind == "sample"
    assert sorted(plan.keys) == list(range(16))
    assert plan.keys[0] == 15  # earliest deadline first
    assert plan.padded_frames == 16 * 300


def test_on_a_cpu_like_device_nobody_waits_for_a_batch() -> None:
    cands = [sample(k, NOW - 0.1 * k, order=k) for k in range(16)]
    plan = choose_step(cands, WIDE, cpu_like_cost, NOW)
    assert plan is not None and plan.keys == (15,)
    assert plan.est_cost_s == pytest.approx(cpu_like_cost(1, 300, "sample"))


def test_an_item_joins_only_when_its_marginal_cost_is_below_the_ratio() -> None:
    # a step costs 1 + 0.6 per extra row: each extra row adds 60 % of a solo step (1.6 / 1)
    def cost(rows: int, frames: int, kind: str) -> float:
        return 1.0 + 0.6 * (rows - 1)

    cands = [sample(0, NOW), sample(1, NOW, order=1)]
    assert choose_step(cands, WIDE, cost, NOW, BatchPolicy(max_marginal_ratio=0.5)).keys == (0,)  # type: ignore[union-attr]
    assert choose_step(cands, WIDE, cost, NOW, BatchPolicy(max_marginal_ratio=0.7)).keys == (0, 1)  # type: ignore[union-attr]


def test_row_limit_is_respected() -> None:
    cands = [sample(k, NOW, order=k) for k in range(10)]
    plan = choose_step(cands, BatchLimits(4, 1_000_000), gpu_like_cost, NOW)
    assert plan is not None and plan.keys == (0, 1, 2, 3)


def test_frame_limit_counts_padding_and_skips_to_items_that_fit() -> None:
    # 2 x 500 padded = 1000 fits, adding the 900-frame item would pad 3 x 900 = 2700 > 1200
    cands = [sample(0, NOW, 500), sample(1, NOW, 900, order=1), sample(2, NOW, 400, order=2)]
    plan = choose_step(cands, BatchLimits(8, 1200), gpu_like_cost, NOW)
    assert plan is not None and plan.keys == (0, 2) and plan.padded_frames == 1000


def test_a_single_item_over_the_frame_limit_still_runs_alone() -> None:
    plan = choose_step([sample(0, NOW, 5000), sample(1, NOW, 100, order=1)], BatchLimits(8, 1000), gpu_like_cost, NOW)
    assert plan is not None and plan.keys == (0,)


def test_a_long_item_that_pads_everyone_is_left_out_when_it_costs_too_much() -> None:
    # cost grows with padded frames: a 4000-frame item makes two 200-frame rows cost like 3 x 4000
    cost = linear_cost(1e-4, overhead_s=0.05)
    cands = [sample(0, NOW, 200), sample(1, NOW, 200, order=1), sample(2, NOW, 4000, order=2)]
    plan = choose_step(cands, WIDE, cost, NOW, BatchPolicy(max_marginal_ratio=0.9))
    assert plan is not None and 2 not in plan.keys


def test_ahead_segments_ride_along_with_urgent_ones_only_when_nearly_free() -> None:
    urgent = sample(0, NOW - 0.5)  # a listener waiting for first audio
    ahead = sample(1, NOW + 30.0, order=1)  # made ahead of playback

    def cheap(rows: int, frames: int, kind: str) -> float:  # +5 % per row
        return 0.1 * (1 + 0.05 * (rows - 1))

    def moderate(rows: int, frames: int, kind: str) -> float:  # +30 % per row
        return 0.1 * (1 + 0.3 * (rows - 1))

    assert choose_step([urgent, ahead], WIDE, cheap, NOW).keys == (0, 1)  # type: ignore[union-attr]
    assert choose_step([urgent, ahead], WIDE, moderate, NOW).keys == (0,)  # type: ignore[union-attr]
    # without an urgent item the same moderate cost is worth it (rule 2 only)
    later = sample(2, NOW + 20.0, order=2)
    assert choose_step([later, ahead], WIDE, moderate, NOW).keys == (2, 1)  # type: ignore[union-attr]


def test_urgency_uses_remaining_work_from_the_cost_table() -> None:
    cost = linear_cost(1e-3)  # 300 frames -> 0.3 s a step
    policy = BatchPolicy(urgent_margin_s=0.1)
    # 7 steps x 0.3 s = 2.1 s of work: a deadline 2.0 s away is urgent, 3 s away is not
    assert is_urgent(sample(0, NOW + 2.0), NOW, cost, policy)
    assert not is_urgent(sample(0, NOW + 3.0), NOW, cost, policy)
    assert is_urgent(vocode(0, NOW + 0.1), NOW, cost, policy)


def test_a_listener_waiting_for_first_audio_runs_before_segments_made_ahead() -> None:
    playing = [sample(k, NOW + 3.0 + k, order=k) for k in range(3)]
    waiting = sample(9, NOW - 0.05, order=9)
    plan = choose_step([*playing, waiting], BatchLimits(1, 10_000), gpu_like_cost, NOW)
    assert plan is not None and plan.keys == (9,)


def test_one_at_a_time_limits_give_pure_edf() -> None:
    cands = [sample(0, NOW + 1), vocode(1, NOW + 0.5), sample(2, NOW + 0.2)]
    order = []
    remaining = list(cands)
    while remaining:
        plan = choose_step(remaining, BatchLimits(1, 1_000_000), gpu_like_cost, NOW)
        assert plan is not None and len(plan.keys) == 1
        order.append(plan.keys[0])
        remaining = [c for c in remaining if c.key != plan.keys[0]]
    assert order == [2, 1, 0]


def test_bad_limits_and_policies_are_rejected() -> None:
    with pytest.raises(ValueError):
        BatchLimits(0, 100)
    with pytest.raises(ValueError):
        BatchPolicy(max_marginal_ratio=-1)


def test_oom_backoff_halves_the_limits_and_grows_them_back_after_clean_steps() -> None:
    backoff = OomBackoff(max_rows=8, max_frames=100_000, recovery_steps=3)
    assert backoff.limits() == BatchLimits(8, 100_000)
    assert backoff.out_of_memory(8, 8 * 400) == BatchLimits(4, 1600)  # the failed step, halved
    assert backoff.out_of_memory(4, 4 * 300) == BatchLimits(2, 600)  # again, below the caps
    backoff.clean_step()
    backoff.clean_step()
    assert backoff.limits() == BatchLimits(2, 600)  # not yet
    backoff.clean_step()
    assert backoff.limits() == BatchLimits(4, 1200)
    for _ in range(3):
        backoff.clean_step()
    assert backoff.limits() == BatchLimits(8, 2400)  # rows back; padded frames keep growing
    for _ in range(3 * 6):
        backoff.clean_step()
    assert backoff.limits() == BatchLimits(8, 100_000) and backoff.rows is None  # backoff over
