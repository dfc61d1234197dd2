"""The step cost table behind `BatchEngine.step_cost_s`."""

from __future__ import annotations

import pytest

from engine.f5.steps import StepCostTable


def test_bucketed_estimate_is_the_smallest_covering_measured_shape() -> None:
    table = StepCostTable(bucketed=True)
    for (r, f), s in {(1, 256): 0.010, (2, 256): 0.012, (1, 512): 0.015, (2, 512): 0.020}.items():
        table.record("sample", r, f, s)
    assert table.estimate("sample", 1, 200) == 0.010
    assert table.estimate("sample", 2, 300) == 0.020
    assert table.estimate("sample", 2, 256) == 0.012
    # beyond every measured shape: the fit over all points, growing with the work
    assert table.estimate("sample", 4, 512) > 0.020


def test_fitted_estimate_grows_with_items_times_frames() -> None:
    table = StepCostTable()
    table.record("sample", 1, 100, 0.11)
    table.record("sample", 1, 200, 0.21)
    table.record("sample", 2, 200, 0.41)
    assert table.estimate("sample", 1, 150) == pytest.approx(0.16, rel=0.05)
    assert table.estimate("sample", 4, 400) == pytest.approx(1.61, rel=0.05)
    assert table.estimate("vocode", 1, 100) == 0.0  # nothing measured
    table.record("vocode", 1, 160, 0.02)
    assert table.estimate("vocode", 2, 160) == pytest.approx(0.04)


def test_bad_points_and_kinds_are_rejected() -> None:
    table = StepCostTable()
    with pytest.raises(ValueError):
        table.record("sample", 0, 100, 0.1)
    with pytest.raises(ValueError):
        table.record("sample", 1, 100, float("nan"))
    with pytest.raises(ValueError):
        table.estimate("decode", 1, 100)  # type: ignore[arg-type]
