"""Seam continuity of the cross-fader and the shape of the per-segment envelope."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import CrossFader, SegmentShaper, crossfade_weights

SR = 24000


def sine_sweep(n: int, f0: float = 50.0, f1: float = 6000.0, sr: int = SR) -> np.ndarray:
    """Linear chirp from f0 to f1 Hz, float32 (n,), amplitude 0.8."""
    t = np.arange(n) / sr
    dur = n / sr
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / dur * t**2)
    return (0.8 * np.sin(phase)).astype(np.float32)


def cut_overlapping(x: np.ndarray, sizes: list[int], overlap: int) -> list[np.ndarray]:
    """Cut x into chunks of the given hop sizes, each extended by `overlap` into the next."""
    chunks, start = [], 0
    for size in sizes:
        end = min(start + size + overlap, x.shape[0])
        chunks.append(x[start:end])
        start += size
        if end == x.shape[0]:
            break
    if start < x.shape[0] - overlap:
        chunks.append(x[start:])
    return chunks


def join(fader: CrossFader, chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([fader.push(c) for c in chunks] + [fader.flush()])


@pytest.mark.parametrize("curve", ["linear", "equal_power"])
def test_crossfade_weights_shape_and_sum(curve: str) -> None:
    out, inn = crossfade_weights(360, curve)  # type: ignore[arg-type]
    assert out.shape == inn.shape == (360,)
    assert np.all(np.diff(inn) > 0) and np.all(np.diff(out) < 0)
    if curve == "linear":
        np.testing.assert_allclose(out + inn, 1.0, atol=1e-15)
    else:
        np.testing.assert_allclose(out**2 + inn**2, 1.0, atol=1e-12)


def test_unknown_curve_rejected() -> None:
    with pytest.raises(ValueError, match="curve"):
        crossfade_weights(10, "cubic")  # type: ignore[arg-type]


@pytest.mark.parametrize("overlap", [0, 1, 240, 360])
def test_linear_crossfade_rebuilds_sweep_exactly(overlap: int) -> None:
    x = sine_sweep(SR)
    sizes = [577, 2304, 2304, 4000, 9000, 2304]  # uneven, like first-small-then-large vocoding
    chunks = cut_overlapping(x, sizes, overlap)
    y = join(CrossFader(overlap, "linear"), chunks)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-6)


@pytest.mark.parametrize("curve", ["linear", "equal_power"])
def test_no_seam_jump_larger_than_signal_step(curve: str) -> None:
    x = sine_sweep(SR)
    overlap = 360  # 15 ms
    hop = 2000
    y = join(CrossFader(overlap, curve), cut_overlapping(x, [hop] * 20, overlap))  # type: ignore[arg-type]
    assert y.shape == x.shape
    max_step = np.max(np.abs(np.diff(x)))
    if curve == "equal_power":
        # on correlated (identical) material the cos/sin weights sum to up to sqrt(2): a smooth gain
        # bump, not a click; the bound scales accordingly
        max_step *= np.sqrt(2)
    steps = np.abs(np.diff(y))
    # every seam region: the join ends at k*hop + overlap
    for k in range(1, 12):
        lo, hi = k * hop - 2, k * hop + overlap + 2
        assert steps[lo:hi].max() <= max_step * 1.0001, f"jump at seam {k}"


def test_equal_power_keeps_uncorrelated_loudness() -> None:
    rng = np.random.default_rng(0)
    overlap = 2400
    a = rng.standard_normal(overlap * 3).astype(np.float32)
    b = rng.standard_normal(overlap * 3).astype(np.float32)
    f = CrossFader(overlap, "equal_power")
    f.push(a)
    mixed = f.push(b)[:overlap]
    ratio = np.sqrt(np.mean(mixed.astype(np.float64) ** 2))
    assert 0.9 < ratio < 1.1  # linear would dip to ~0.82 in the middle


def test_crossfader_rejects_short_chunk_and_2d() -> None:
    f = CrossFader(100)
    with pytest.raises(ValueError, match="shorter than the overlap"):
        f.push(np.zeros(50, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        f.push(np.zeros((2, 200), np.float32))
    with pytest.raises(ValueError):
        CrossFader(-1)


def test_crossfader_flush_resets() -> None:
    f = CrossFader(10)
    assert f.push(np.ones(30, np.float32)).shape == (20,)
    assert f.flush().shape == (10,)
    assert f.flush().shape == (0,)
    # a new stream starts without cross-fading against the old tail
    np.testing.assert_array_equal(f.push(np.full(30, 2.0, np.float32)), 2.0)


def shape_segment(shaper: SegmentShaper, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, start = [], 0
    for s in sizes:
        out.append(shaper.process(x[start : start + s]))
        start += s
    out.append(shaper.process(x[start:]))
    out.append(shaper.finish())
    return np.concatenate(out)


def test_shaper_envelope() -> None:
    shaper = SegmentShaper(SR, fade_in_ms=5, fade_out_ms=10, pause_ms=120)
    x = np.ones(SR // 2, dtype=np.float32)
    y = shape_segment(shaper, x, [17, 50, 3000, 1])  # fade-in spans several tiny chunks
    n_in, n_out, n_pause = 120, 240, 2880
    assert y.dtype == np.float32
    assert y.shape[0] == x.shape[0] + n_pause
    assert abs(y[0]) < 1e-6
    speech = y[: x.shape[0]]
    assert abs(speech[-1]) < 1e-6
    assert np.all(np.diff(speech[:n_in]) >= 0)
    assert np.all(np.diff(speech[-n_out:]) <= 0)
    np.testing.assert_array_equal(speech[n_in:-n_out], 1.0)  # untouched in between
    np.testing.assert_array_equal(y[x.shape[0] :], 0.0)


def test_shaper_is_chunking_invariant_and_reusable() -> None:
    x = sine_sweep(6000)
    a = shape_segment(SegmentShaper(SR, 5, 10, 50), x, [])
    shaper = SegmentShaper(SR, 5, 10, 50)
    b = shape_segment(shaper, x, [1, 7, 100, 239, 2000])
    np.testing.assert_allclose(a, b, atol=1e-7)
    c = shape_segment(shaper, x, [3000])  # second segment gets its own fade-in
    np.testing.assert_allclose(a, c, atol=1e-7)


def test_shaper_short_segment_still_ends_at_zero() -> None:
    shaper = SegmentShaper(SR, 5, 10, 0)
    y = np.concatenate([shaper.process(np.ones(100, np.float32)), shaper.finish()])
    assert y.shape == (100,)
    assert abs(y[0]) < 1e-6 and abs(y[-1]) < 1e-6
    assert np.all(np.abs(y) <= 1.0)
