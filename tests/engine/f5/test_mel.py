"""Our log-mel front end equals the reference F5 `MelSpec` (vocos type)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.f5.config import HOP_LENGTH, N_MELS, SAMPLE_RATE
from engine.f5.mel import LogMelSpectrogram
from tests.f5_fixtures import oracle


def _waves() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = SAMPLE_RATE // 2 + 123  # not a multiple of the hop
    t = torch.arange(n) / SAMPLE_RATE
    tone = 0.5 * torch.sin(2 * math.pi * 220.0 * t) + 0.1 * torch.sin(2 * math.pi * 3100.0 * t)
    noise = 0.05 * torch.randn(n, generator=g)
    silence = torch.zeros(n)  # exercises the log floor
    return torch.stack((tone, noise, silence))


def test_mel_equals_the_reference_melspec() -> None:
    ref = oracle("model.modules").MelSpec(mel_spec_type="vocos")
    wave = _waves()
    expected = ref(wave).transpose(1, 2)
    got = LogMelSpectrogram()(wave)
    assert got.shape == expected.shape == (3, 1 + wave.shape[1] // HOP_LENGTH, N_MELS)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-5


def test_silence_sits_on_the_log_floor() -> None:
    got = LogMelSpectrogram()(torch.zeros(1, 4000))
    assert torch.allclose(got, torch.full_like(got, math.log(1e-5)))


@pytest.mark.parametrize(
    "wave", [torch.zeros(4000), torch.zeros(1, 1, 4000), torch.zeros(1, 100), torch.zeros(1, 4000, dtype=torch.int16)]
)
def test_bad_input_raises_value_error(wave: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        LogMelSpectrogram()(wave)
