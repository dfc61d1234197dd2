"""The flow sampler equals the reference `CFM.sample` (time grids, noise, full NFE runs)."""

from __future__ import annotations

import pytest
import torch

from engine.f5.loader import build_model
from engine.f5.model import DiT
from engine.f5.sampler import (
    EPSS_TABLES,
    FlowSampler,
    SamplerSettings,
    initial_noise,
    min_total_frames,
    time_grid,
)
from tests.f5_fixtures import oracle, reference_cfm, reference_dit, small_config

TOL = 1e-3


@pytest.mark.parametrize("use_epss", [True, False])
@pytest.mark.parametrize("sway", [-1.0, None, 0.5])
def test_time_grid_equals_the_reference_for_every_nfe(use_epss: bool, sway: float | None) -> None:
    get_epss_timesteps = oracle("model.utils").get_epss_timesteps
    for nfe in range(1, 33):
        if use_epss:
            expected = get_epss_timesteps(nfe, device="cpu", dtype=torch.float32)
        else:
            expected = torch.linspace(0, 1, nfe + 1, dtype=torch.float32)
        if sway is not None:
            expected = expected + sway * (torch.cos(torch.pi / 2 * expected) - 1 + expected)
        got = time_grid(nfe, sway, use_epss)
        assert got.dtype == torch.float32 and got.shape == (nfe + 1,)
        assert torch.equal(got, expected), nfe


def test_epss_nfe7_grid_has_the_documented_values() -> None:
    assert set(EPSS_TABLES) == {5, 6, 7, 10, 12, 16}
    expected = torch.tensor([0, 0.0048, 0.0192, 0.0431, 0.0761, 0.2929, 0.6173, 1.0])
    assert torch.allclose(time_grid(7), expected, atol=1e-4)


def test_seeded_noise_equals_global_seed_then_randn_and_leaves_the_global_rng() -> None:
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    got = initial_noise(50, seed=99, device="cpu", dtype=torch.float32)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(99)
    assert torch.equal(got, torch.randn(50, 100).unsqueeze(0))


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        SamplerSettings(nfe=0)
    with pytest.raises(ValueError):
        SamplerSettings(cfg_strength=float("nan"))
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.fixture(scope="module", params=["v1", "v0"])
def pair(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, DiT]:
    cfg = small_config(request.param)
    ref = reference_dit(cfg, seed=11)
    return reference_cfm(ref), build_model(cfg, ref.state_dict())


def _prompt(n_ref: int, nt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n_ref, 100, generator=g), torch.randint(0, 80, (1, nt), generator=g)


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(),  # NFE 7, EPSS, sway -1, CFG 2: the product default
        SamplerSettings(nfe=16, cfg_strength=1.5),
        SamplerSettings(nfe=9, sway=None, use_epss=False),  # uniform grid (9 has no EPSS table)
        SamplerSettings(nfe=5, cfg_strength=0.0),  # CFG off: conditional pass only
    ],
    ids=["nfe7", "nfe16", "uniform9", "nocfg"],
)
def test_sample_equals_reference_cfm(pair, settings: SamplerSettings) -> None:
    cfm, ours = pair
    cond, text = _prompt(n_ref=30, nt=55, seed=4)
    n_frames = 96
    with torch.inference_mode():
        expected, _ = cfm.sample(
            cond=cond, text=text, duration=n_frames, steps=settings.nfe,
            cfg_strength=settings.cfg_strength, sway_sampling_coef=settings.sway,
            seed=2024, use_epss=settings.use_epss,
        )
    got = FlowSampler(ours, settings).sample(cond, text, n_frames, seed=2024)
    assert got.shape == (1, n_frames, 100) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= TOL


def test_reference_frames_are_the_condition_and_explicit_noise_equals_the_seed(pair) -> None:
    _, ours = pair
    cond, text = _prompt(n_ref=20, nt=30, seed=8)
    sampler = FlowSampler(ours)
    seeded = sampler.sample(cond, text, 60, seed=5)
    noise = initial_noise(60, 5, "cpu", torch.float32)
    explicit = sampler.sample(cond, text, 60, noise=noise)
    assert torch.equal(seeded, explicit)
    assert torch.equal(seeded[:, :20], cond)
    other = sampler.sample(cond, text, 60, seed=6)
    assert (other[:, 20:] - seeded[:, 20:]).abs().max().item() > 1e-2


def test_bad_inputs_raise_value_errors(pair) -> None:
    _, ours = pair
    cond, text = _prompt(n_ref=20, nt=30, seed=8)
    sampler = FlowSampler(ours)
    with pytest.raises(ValueError, match="exceed"):
        sampler.sample(cond, text, 20, seed=1)
    with pytest.raises(ValueError, match="cond_mel"):
        sampler.sample(cond[0], text, 40, seed=1)
    with pytest.raises(ValueError, match="text_ids"):
        sampler.sample(cond, text[0], 40, seed=1)
    with pytest.raises(ValueError, match="noise"):
        sampler.sample(cond, text, 40, noise=torch.zeros(1, 39, 100))
    assert min_total_frames(20, 30) == 31 and min_total_frames(40, 30) == 41


def test_step_is_one_graph_that_never_recompiles_across_requests() -> None:
    # fullgraph=True raises on any graph break (host sync, data-dependent branch); the counting
    # backend skips code generation so this stays quick on CPU (inductor itself: test_gpu.py)
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    cfg = small_config("v1", depth=1)
    model = build_model(cfg, None, seed=3)
    eager = FlowSampler(model)
    compiled = FlowSampler(model, compile=True, compile_options={"backend": counter})
    cond, text = _prompt(n_ref=8, nt=12, seed=1)
    for seed, settings in [(1, SamplerSettings()), (2, SamplerSettings(nfe=16, cfg_strength=3.0)),
                           (3, SamplerSettings(nfe=6, sway=None))]:
        got = compiled.sample(cond, text, 32, seed=seed, settings=settings)
        want = eager.sample(cond, text, 32, seed=seed, settings=settings)
        assert (got - want).abs().max().item() <= 1e-5
    assert counter.frame_count == 1  # one graph for all three requests
    assert counter.op_count > 0
