"""Chunked Vocos decoding equals a full-sequence decode (issue 3: <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.f5.vocoder import ChunkedVocoder
from tests.f5_fixtures import VOCOS_CONFIG_YAML


@pytest.fixture(scope="module")
def vocos(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """The real-size charactr/vocos-mel-24khz architecture with random weights."""
    from vocos import Vocos

    path: Path = tmp_path_factory.mktemp("vocos") / "config.yaml"
    path.write_text(VOCOS_CONFIG_YAML)
    torch.manual_seed(0)
    model = Vocos.from_hparams(str(path)).eval()
    with torch.no_grad():
        # Layer-scale gammas start at 1/num_layers; make every block matter so context bugs show.
        for block in model.backbone.convnext:
            block.gamma.normal_(0.0, 0.5)
    return model


def _mel(n_frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n_frames, 100, generator=g) * 2.0 - 4.0  # log-mel-like range


@pytest.mark.parametrize("n_frames", [2, 10, 25, 150, 317])
def test_chunks_equal_full_decode(vocos: torch.nn.Module, n_frames: int) -> None:
    voc = ChunkedVocoder(vocos)
    mel = _mel(n_frames, seed=n_frames)
    full = voc.decode_full(mel)
    chunks = list(voc.decode_chunks(mel))
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    joined = np.concatenate(chunks)
    assert full.shape == (256 * (n_frames - 1),)
    assert joined.shape == full.shape
    assert np.abs(joined - full).max() <= 1e-4
    assert np.abs(full).max() > 1e-3  # a silent decode would make the comparison vacuous


def test_first_chunk_is_small_and_later_chunks_larger(vocos: torch.nn.Module) -> None:
    voc = ChunkedVocoder(vocos, first_chunk_frames=24, chunk_frames=96, crossfade_samples=360)
    sizes = [c.shape[0] for c in voc.decode_chunks(_mel(400, seed=1))]
    assert len(sizes) >= 4
    assert sizes[0] == 24 * 256  # the overlap is held back for the cross-fade
    assert all(s == 96 * 256 for s in sizes[1:-2])


def test_equality_holds_for_other_chunk_sizes(vocos: torch.nn.Module) -> None:
    voc = ChunkedVocoder(vocos, first_chunk_frames=5, chunk_frames=13, context_frames=40,
                         crossfade_samples=100)
    mel = _mel(60, seed=3)
    joined = np.concatenate(list(voc.decode_chunks(mel)))
    assert np.abs(joined - voc.decode_full(mel)).max() <= 1e-4


def test_single_frame_gives_no_audio(vocos: torch.nn.Module) -> None:
    assert list(ChunkedVocoder(vocos).decode_chunks(_mel(1, seed=0))) == []


def test_too_little_context_is_rejected(vocos: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="context_frames"):
        ChunkedVocoder(vocos, context_frames=8)


def test_bad_mel_shape_is_rejected(vocos: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="shape"):
        list(ChunkedVocoder(vocos).decode_chunks(torch.zeros(100, 20)))


def test_batched_steps_equal_each_solo_decode(vocos: torch.nn.Module) -> None:
    # streams of different lengths (one lone chunk, edges, full chunks) join at different steps
    voc = ChunkedVocoder(vocos, first_chunk_frames=8, chunk_frames=20, crossfade_samples=120)
    mels = [_mel(n, seed=n) for n in (150, 9, 61, 97)]
    solo = [np.concatenate(list(voc.decode_chunks(m))) for m in mels]
    streams = {0: voc.open_stream(mels[0])}
    out: dict[int, list[np.ndarray]] = {0: []}
    joins = {1: 1, 2: 1, 3: 3}  # stream -> step at which it joins
    step = 0
    while streams or len(out) < len(mels):
        for k, at in joins.items():
            if at == step:
                streams[k] = voc.open_stream(mels[k])
                out[k] = []
        active = list(streams)
        chunks = voc.decode_step([streams[k] for k in active])
        assert len(chunks) == len(active)
        for k, c in zip(active, chunks, strict=True):
            assert c.dtype == np.float32 and c.ndim == 1
            out[k].append(c)
            if streams[k].finished:
                del streams[k]
        step += 1
    for k, want in enumerate(solo):
        got = np.concatenate(out[k])
        assert got.shape == want.shape == (256 * (mels[k].shape[1] - 1),)
        assert np.abs(got - want).max() <= 1e-4, k


def test_decode_step_rejects_finished_and_duplicate_streams(vocos: torch.nn.Module) -> None:
    voc = ChunkedVocoder(vocos)
    st = voc.open_stream(_mel(20, seed=1))
    with pytest.raises(ValueError, match="twice"):
        voc.decode_step([st, st])
    voc.decode_step([st])
    assert st.finished
    with pytest.raises(ValueError, match="no chunks"):
        voc.decode_step([st])
