"""Log-mel front end shared by F5-TTS and Vocos (F5_FACTS.md section 6). Tensors only, no I/O."""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from engine.f5.config import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH

LOG_FLOOR = 1e-5  # F5's clamp before log (Vocos' own extractor uses 1e-7; F5 never uses it)


class LogMelSpectrogram(nn.Module):
    """Magnitude mel spectrogram (HTK scale, no filter norm, centred STFT) then natural log.

    forward: (b, samples) float32 waveform at 24 kHz -> (b, frames, 100) float32 log-mel with
    frames = 1 + samples // 256.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=N_FFT,
            win_length=WIN_LENGTH,
            hop_length=HOP_LENGTH,
            n_mels=N_MELS,
            power=1,
            center=True,
            normalized=False,
            norm=None,
            mel_scale="htk",
        )

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() != 2:
            raise ValueError(f"wave must be (batch, samples), got shape {tuple(wave.shape)}")
        if wave.shape[1] <= N_FFT // 2:
            # centre padding reflects 512 samples, which needs more input than that
            raise ValueError(f"wave is too short: {wave.shape[1]} samples (need > {N_FFT // 2})")
        if not wave.is_floating_point():
            raise ValueError(f"wave must be a float tensor, got {wave.dtype}")
        mel = self.mel(wave.float())  # (b, 100, frames)
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).transpose(1, 2)
