"""F5Engine's batching API: items sharing sampler and vocoder steps equal solo synthesis, exact
durations with bucket padding, the step cost table."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from engine.base import BatchEngine, InvalidOptionError, SynthOptions, UnknownVoiceError
from engine.config import EngineConfig
from engine.f5.engine import F5Engine
from engine.f5.frontend import estimate_frames
from engine.f5.sampler import min_total_frames
from engine.f5.steps import F5Item
from engine.f5.weights import ResolvedWeights
from tests.engine.f5.test_engine import files  # noqa: F401  (module fixture)
from tests.f5_fixtures import small_config

REQUESTS = [
    ("Hello world, a small test.", "alice", SynthOptions(seed=1)),
    ("Another line, rather longer than the first one.", "quiet5", SynthOptions(seed=2, speed=1.3, nfe=5)),
    ("Short one.", "alice", SynthOptions(seed=3, cfg_strength=0.0)),
    ("Third, with ten steps.", "alice", SynthOptions(seed=4, nfe=10, cfg_strength=1.0)),
]


def _engine(files: tuple[ResolvedWeights, Path], **kw: object) -> F5Engine:  # noqa: F811
    weights, voices = files
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(voices), nfe=7,
                       vocoder_first_chunk_frames=8, vocoder_chunk_frames=24, max_batch_rows=4)
    return F5Engine(cfg, model_config=small_config(text_num_embeds=2545), weights=weights, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(files: tuple[ResolvedWeights, Path]) -> F5Engine:  # noqa: F811
    return _engine(files)


@pytest.fixture(scope="module")
def solo(engine: F5Engine) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for text, voice, opts in REQUESTS:
        audio = np.concatenate(list(engine.synthesize(text, voice, opts)))
        assert engine.last_mel is not None
        out.append((audio, engine.last_mel.copy()))
    return out


def _run_batched(engine: F5Engine, rng: random.Random) -> list[tuple[np.ndarray, np.ndarray]]:
    """Items join one by one at random steps; random subsets take sampler or vocoder steps."""
    pending = list(range(len(REQUESTS)))
    items: dict[int, F5Item] = {}
    chunks: dict[int, list[np.ndarray]] = {}
    while pending or any(it.phase != "done" for it in items.values()):
        if pending and (not items or rng.random() < 0.5):
            k = pending.pop(0)
            text, voice, opts = REQUESTS[k]
            items[k] = engine.open_item(text, voice, opts)
            chunks[k] = []
        sampling = [k for k, it in items.items() if it.phase == "sampling"]
        vocoding = [k for k, it in items.items() if it.phase == "vocoding"]
        if sampling and (not vocoding or rng.random() < 0.6):
            chosen = [k for k in sampling if rng.random() < 0.8] or sampling[:1]
            engine.sample_step([items[k] for k in chosen])
        elif vocoding:
            chosen = [k for k in vocoding if rng.random() < 0.8] or vocoding[:1]
            for k, c in zip(chosen, engine.vocode_step([items[k] for k in chosen]), strict=True):
                assert c.dtype == np.float32 and c.ndim == 1
                chunks[k].append(c)
                assert not items[k].first_audio
    out = []
    for k in range(len(REQUESTS)):
        mel = items[k].mel
        assert mel is not None
        out.append((np.concatenate(chunks[k]), mel))
    return out


def test_is_a_batch_engine(engine: F5Engine) -> None:
    assert isinstance(engine, BatchEngine)
    assert (engine.max_batch_rows, engine.max_batch_frames) == (4, 16384)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_items_equal_solo_synthesis(engine: F5Engine, solo, seed: int) -> None:
    got = _run_batched(engine, random.Random(seed))
    for k, ((audio, mel), (want_audio, want_mel)) in enumerate(zip(got, solo, strict=True)):
        assert mel.shape == want_mel.shape and audio.shape == want_audio.shape, k
        assert np.abs(mel - want_mel).max() <= 1e-4, k
        assert np.abs(audio - want_audio).max() <= 1e-4, k


def test_bucket_padding_keeps_the_reference_duration(
    files: tuple[ResolvedWeights, Path], solo  # noqa: F811
) -> None:
    eng = _engine(files, static_shapes=True)
    assert eng.buckets and eng.row_buckets == [1, 2, 4]
    got = _run_batched(eng, random.Random(5))
    for k, (text, voice, opts) in enumerate(REQUESTS):
        ref = eng._reference(voice)
        n_ids = len(eng.frontend.ids(ref.voice.text + text))
        rule = max(estimate_frames(ref.ref_frames, ref.voice.text, text, opts.speed),
                   min_total_frames(ref.mel.shape[1], n_ids))
        assert rule not in eng.buckets  # a bucket would hide rounding
        mel, audio = got[k][1], got[k][0]
        assert mel.shape == (rule - ref.ref_frames, 100)
        assert np.abs(mel - solo[k][1]).max() <= 1e-4
        assert np.abs(audio - solo[k][0]).max() <= 1e-4


def test_open_item_validates_and_empty_text_is_done(engine: F5Engine) -> None:
    with pytest.raises(UnknownVoiceError):
        engine.open_item("Hi.", "nobody", SynthOptions())
    with pytest.raises(InvalidOptionError):
        engine.open_item("Hi.", "alice", SynthOptions(nfe=9))
    item = engine.open_item("   ", "alice", SynthOptions())
    assert item.phase == "done" and item.steps_left == 0
    with pytest.raises(ValueError, match="phase"):
        engine.sample_step([item])


def test_closed_item_leaves_and_close_is_idempotent(engine: F5Engine, solo) -> None:
    a = engine.open_item(*REQUESTS[0])
    b = engine.open_item(*REQUESTS[2])
    assert a.steps_left == 7 and a.phase == "sampling" and a.first_audio
    engine.sample_step([a, b])
    engine.close_item(b)
    engine.close_item(b)
    assert b.phase == "done" and b.flow is None
    while a.phase == "sampling":
        engine.sample_step([a])
    assert a.mel is not None and np.abs(a.mel - solo[0][1]).max() <= 1e-4


def test_warmup_measures_the_step_cost_table(files: tuple[ResolvedWeights, Path]) -> None:  # noqa: F811
    eng = _engine(files)
    assert eng.step_cost_s(1, 200, "sample") == 0.0  # nothing measured yet
    assert eng.warmup() > 0
    small = eng.step_cost_s(1, 100, "sample")
    big = eng.step_cost_s(4, 400, "sample")
    assert 0 < small <= big
    assert eng.step_cost_s(2, 80, "vocode") > 0
    assert eng.costs.points("sample") and eng.costs.points("vocode")
