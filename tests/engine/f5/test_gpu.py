"""CUDA-only checks of the F5 core: low-precision error bounds, compile without recompiles, noise.

All tests carry the ``gpu`` marker and skip without CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.f5.loader import build_model
from engine.f5.sampler import FlowSampler, SamplerSettings, initial_noise
from tests.f5_fixtures import reference_cfm, reference_dit, small_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    # inductor's first import touches torch.jit.script_method, which torch itself deprecates
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

CUDA = "cuda"


def _config():
    # bigger than the CPU tests so fp16 accumulation error is representative, still quick
    return small_config("v1", dim=512, depth=4, heads=8, dim_head=64, text_dim=256)


@pytest.fixture(scope="module")
def reference():
    return reference_dit(_config(), seed=21)


def _prompt(nt: int = 80, n_ref: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, n_ref, 100, generator=g), torch.randint(0, 80, (1, nt), generator=g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_sample_stays_close_to_fp32(reference, dtype: torch.dtype) -> None:
    cond, text = _prompt()
    fp32 = FlowSampler(build_model(_config(), reference.state_dict(), device=CUDA))
    low = FlowSampler(build_model(_config(), reference.state_dict(), device=CUDA, dtype=dtype))
    noise = initial_noise(200, 3, CUDA, torch.float32)
    want = fp32.sample(cond, text, 200, noise=noise)[:, 60:]
    got = low.sample(cond, text, 200, noise=noise)[:, 60:]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    rel = ((got - want).abs().mean() / want.abs().mean()).item()
    assert rel <= (0.01 if dtype == torch.float16 else 0.03), rel


def test_fp32_cuda_sample_equals_the_reference(reference) -> None:
    cfm = reference_cfm(copy.deepcopy(reference)).to(CUDA)  # the shared fixture stays on CPU
    cond, text = _prompt()
    with torch.inference_mode():
        want, _ = cfm.sample(cond=cond.to(CUDA), text=text.to(CUDA), duration=200, steps=7,
                             cfg_strength=2.0, sway_sampling_coef=-1.0, seed=9, use_epss=True)
    ours = FlowSampler(build_model(_config(), reference.state_dict(), device=CUDA))
    got = ours.sample(cond, text, 200, seed=9)
    assert (got - want).abs().max().item() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_seeded_cuda_noise_equals_the_reference_draw(dtype: torch.dtype) -> None:
    got = initial_noise(150, 77, CUDA, dtype)
    torch.manual_seed(77)
    assert torch.equal(got, torch.randn(150, 100, device=CUDA, dtype=dtype).unsqueeze(0))


def test_compiled_sampler_does_not_recompile_after_warmup(reference) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    model = build_model(_config(), reference.state_dict(), device=CUDA, dtype=torch.float16)
    eager = FlowSampler(model)
    compiled = FlowSampler(model, compile=True, compile_options={"backend": counter})
    cond, text = _prompt()
    compiled.sample(cond, text, 256, seed=0)  # warm-up: the one bucket of this test
    warm_frames = counter.frame_count
    assert warm_frames == 1
    requests = [(1, SamplerSettings()), (2, SamplerSettings(nfe=16, cfg_strength=1.0)),
                (3, SamplerSettings(nfe=5, sway=None))]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, settings in requests:
            got = compiled.sample(cond, text, 256, seed=seed, settings=settings)
            want = eager.sample(cond, text, 256, seed=seed, settings=settings)
            rel = ((got - want).abs().mean() / want.abs().mean()).item()
            assert rel <= 5e-3, rel
    assert counter.frame_count == warm_frames


def test_batched_steps_replay_cuda_graphs_without_recompiling(reference) -> None:
    """Compile once (dynamic shapes), capture one CUDA graph per (items, frames) bucket, then run
    batched steps with joins and leaves: no recompilation, each item close to its eager solo."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from engine.f5.batch import BatchSampler, reachable_shapes
    from engine.f5.graphs import CudaGraphRunner

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    model = build_model(_config(), reference.state_dict(), device=CUDA, dtype=torch.float16)
    frames, rows = [128, 256], [1, 2, 4]
    batch = BatchSampler(model, compile=True, compile_options={"backend": counter, "dynamic": True},
                         frame_buckets=frames, row_buckets=rows)
    shapes = reachable_shapes(rows, frames, max_batch_frames=1024)
    costs: list[float] = []
    with torch.inference_mode():  # the mode the sampler steps run in (no guard change later)
        runner = CudaGraphRunner(batch.velocity, shapes, text_dim=_config().text_dim,
                                 dtype=torch.float16, device=torch.device(CUDA))
        runner.capture_all(lambda i, r, f, s: costs.append(s))
    assert len(costs) == len(shapes) and all(c > 0 for c in costs)
    assert runner.graph_bytes >= 0
    batch.runner = runner
    warm_frames = counter.frame_count
    assert 1 <= warm_frames <= 3  # one dynamic graph (+ the size-1 specialisation)
    eager = FlowSampler(model)
    cond, text = _prompt()
    specs = [(200, 1, SamplerSettings()), (150, 2, SamplerSettings(nfe=16, cfg_strength=1.0)),
             (90, 3, SamplerSettings(nfe=5, sway=None)), (230, 4, SamplerSettings(cfg_strength=0.0))]
    with torch._dynamo.config.patch(error_on_recompile=True):
        items = []
        for n, seed, s in specs:  # one joins per step
            items.append(batch.new_item(cond, text, n, s.grid(), s.cfg_strength, seed=seed))
            batch.step([it for it in items if not it.finished])
        while any(not it.finished for it in items):
            batch.step([it for it in items if not it.finished])
    assert counter.frame_count == warm_frames
    for it, (n, seed, s) in zip(items, specs, strict=True):
        want = eager.sample(cond, text, n, seed=seed, settings=s)
        got = it.result()
        rel = ((got - want).abs().mean() / want.abs().mean()).item()
        assert rel <= 5e-3, rel
