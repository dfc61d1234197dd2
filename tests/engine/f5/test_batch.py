"""Step-level batching: every item equals the same request sampled alone (<= 1e-4, fp32, CPU),
whatever joins, leaves, lengths, NFE, grids and CFG strengths share the steps."""

from __future__ import annotations

import random

import pytest
import torch

from engine.f5.batch import BatchSampler, FlowItem, reachable_shapes, row_buckets
from engine.f5.loader import build_model
from engine.f5.model import DiT
from engine.f5.sampler import FlowSampler, SamplerSettings
from tests.f5_fixtures import randomize_, small_config

TOL = 1e-4

# (n_ref, n_text_tokens, n_frames, settings, seed): mixed lengths, NFE, grids, sway and CFG
SPECS = [
    (20, 30, 64, SamplerSettings(), 1),
    (31, 50, 117, SamplerSettings(nfe=10, cfg_strength=1.5), 2),
    (12, 20, 40, SamplerSettings(nfe=5, cfg_strength=0.0), 3),
    (25, 70, 96, SamplerSettings(nfe=9, sway=None, use_epss=False), 4),
    (40, 45, 130, SamplerSettings(nfe=6, sway=0.5, cfg_strength=3.0), 5),
    (8, 10, 33, SamplerSettings(nfe=7, cfg_strength=0.0, sway=None), 6),
]


@pytest.fixture(scope="module", params=["v1", "v0"])
def model(request: pytest.FixtureRequest) -> DiT:
    cfg = small_config(request.param)
    return build_model(cfg, randomize_(DiT(cfg), seed=5).state_dict())


_SOLO: dict[int, list[torch.Tensor]] = {}


def _inputs(spec: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    n_ref, nt, _, _, seed = spec
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(1, n_ref, 100, generator=g), torch.randint(0, 80, (1, nt), generator=g)


def _solo(model: DiT) -> list[torch.Tensor]:
    if id(model) in _SOLO:
        return _SOLO[id(model)]
    sampler = FlowSampler(model)
    out = []
    for spec in SPECS:
        cond, text = _inputs(spec)
        out.append(sampler.sample(cond, text, spec[2], seed=spec[4], settings=spec[3]))
    _SOLO[id(model)] = out
    return out


def _open(batch: BatchSampler, spec: tuple) -> FlowItem:
    cond, text = _inputs(spec)
    s: SamplerSettings = spec[3]
    return batch.new_item(cond, text, spec[2], s.grid(), s.cfg_strength, seed=spec[4])


def _run_schedule(batch: BatchSampler, rng: random.Random, stagger: bool) -> list[torch.Tensor]:
    """Items join in random groups between steps; random subsets sit out steps; items leave
    as they finish. Returns each item's result in SPECS order."""
    pending = list(range(len(SPECS)))
    rng.shuffle(pending)
    active: dict[int, FlowItem] = {}
    results: dict[int, torch.Tensor] = {}
    while pending or active:
        for _ in range(rng.randint(0, 2) if stagger and active else len(pending)):
            if pending:
                k = pending.pop()
                active[k] = _open(batch, SPECS[k])
        chosen = [it for it in active.values() if not stagger or rng.random() < 0.75]
        if not chosen:
            chosen = [next(iter(active.values()))]
        batch.step(chosen)
        for k, it in list(active.items()):
            if it.finished:
                results[k] = it.result()
                del active[k]
    return [results[k] for k in range(len(SPECS))]


def test_random_join_leave_schedules_equal_solo_sampling(model: DiT) -> None:
    solo = _solo(model)
    got = _run_schedule(BatchSampler(model), random.Random(0), stagger=True)
    for k, (a, b) in enumerate(zip(got, solo, strict=True)):
        assert a.shape == b.shape == (1, SPECS[k][2], 100)
        assert (a - b).abs().max().item() <= TOL, k


def test_all_at_once_with_bucketed_static_shapes_equals_solo(model: DiT) -> None:
    solo = _solo(model)
    batch = BatchSampler(model, frame_buckets=[48, 96, 160], row_buckets=[1, 2, 4, 8])
    got = _run_schedule(batch, random.Random(3), stagger=False)
    for k, (a, b) in enumerate(zip(got, solo, strict=True)):
        assert a.shape == b.shape  # padded to a bucket inside, never in the result
        assert (a - b).abs().max().item() <= TOL, k


def test_bucketed_solo_item_keeps_its_exact_duration(model: DiT) -> None:
    batch = BatchSampler(model, frame_buckets=[64, 128], row_buckets=[1, 2])
    spec = SPECS[3]  # 96 frames, padded to the 128 bucket inside each step
    item = _open(batch, spec)
    assert batch.batch_shape([item]) == (1, 128)
    while not item.finished:
        batch.step([item])
    want = _solo(model)[3]
    assert item.result().shape == (1, 96, 100)
    assert (item.result() - want).abs().max().item() <= TOL


def test_masking_matters_unmasked_padding_would_leak(model: DiT) -> None:
    # the same padded pass without the mask changes the short row: the test above can fail
    x = torch.randn(2, 50, 100)
    cond = torch.zeros(2, 50, 100)
    text = torch.randn(2, 50, model.cfg.text_dim)
    t = torch.tensor([0.3, 0.6])
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.inference_mode():
        masked = model.forward_rows(x, cond, text, t, mask)[1, :30]
        alone = model.forward_rows(x[1:, :30], cond[1:, :30], text[1:, :30], t[1:])[0]
        unmasked = model.forward_rows(x, cond, text, t)[1, :30]
    assert (masked - alone).abs().max().item() <= 1e-5
    assert (unmasked - alone).abs().max().item() > 1e-3


def test_step_rejects_finished_and_duplicate_items(model: DiT) -> None:
    batch = BatchSampler(model)
    item = _open(batch, SPECS[2])
    with pytest.raises(ValueError, match="twice"):
        batch.step([item, item])
    while not item.finished:
        batch.step([item])
    with pytest.raises(ValueError, match="no sampler steps"):
        batch.step([item])
    with pytest.raises(RuntimeError):
        _open(batch, SPECS[2]).result()


def test_row_buckets_and_reachable_shapes() -> None:
    assert row_buckets(1) == [1]
    assert row_buckets(16) == [1, 2, 4, 8, 16]
    assert row_buckets(12) == [1, 2, 4, 8, 12]
    shapes = reachable_shapes([1, 2, 4], [100, 200, 400], max_batch_frames=500)
    # the smallest batch padding to (r, f) has (previous r) + 1 items of (previous f) + 1 frames:
    # (4, 200) <- 3 x 101 = 303 fits, (4, 400) <- 3 x 201 = 603 does not
    assert set(shapes) == {(1, 100), (1, 200), (1, 400), (2, 100), (2, 200), (2, 400), (4, 100),
                           (4, 200)}
    assert shapes[0] == (1, 400) or shapes[0][0] * shapes[0][1] >= 400  # largest first


def test_batched_steps_compile_once_per_bucket_shape() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    cfg = small_config("v1", depth=1)
    model = build_model(cfg, None, seed=3)
    batch = BatchSampler(model, compile=True, compile_options={"backend": counter},
                         frame_buckets=[64, 128], row_buckets=[1, 2, 4])
    for k in range(2):
        items = [_open(batch, spec) for spec in SPECS[:3]]  # 3 items -> bucket (4, 128)
        while any(not it.finished for it in items):
            batch.step([it for it in items if not it.finished])
        if k == 0:
            first = counter.frame_count
    assert counter.frame_count == first  # the second round reuses every graph
    assert 1 <= first <= 6  # one per (rows, frames) bucket met, never one per item or step
