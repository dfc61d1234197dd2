"""Chunked Vocos decoding: mel frames in, 24 kHz float32 audio chunks out, first chunk early.

Vocos is local in time: a waveform sample depends on mel frames within about +-29 frames (27 from
the backbone's convolutions, 2 from the iSTFT overlap-add; F5_FACTS.md section 6). So a span of
output samples can be decoded from a window of mel frames that extends ``context_frames`` (>= 29)
beyond it on both sides, and the trimmed result equals the full-sequence decode up to float error.
Consecutive chunks overlap by ``crossfade_samples`` and are joined with ``engine.audio.CrossFader``
(linear weights that sum to 1, so identical overlaps join exactly).

Hop grid: frame ``t`` is centred on sample ``t * 256``; a window of mel frames ``[f0, f1)`` decodes
to samples ``[f0 * 256, (f1 - 1) * 256)`` of the full signal (center-padded iSTFT, like Vocos).
The full decode of ``T`` frames has ``256 * (T - 1)`` samples.

The iSTFT here is written out (irfft + overlap-add + window-envelope division) instead of calling
``torch.istft``, whose NOLA check reads a value back to the host on every call; the equality test
against ``Vocos.decode`` covers it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.audio import CrossFader

# Vocos' receptive field in mel frames, each side (backbone 27 + iSTFT 2).
VOCOS_RECEPTIVE_FRAMES = 29


class ChunkedVocoder:
    """Decode a log-mel spectrogram with Vocos in chunks.

    Args:
        vocos: a ``vocos.Vocos`` with the mel feature setup of charactr/vocos-mel-24khz
            (backbone + ``ISTFTHead`` with n_fft 1024, hop 256, center padding).
        first_chunk_frames: mel frames (1 frame = 256 samples = 10.67 ms) in the first chunk; small
            so the first audio is ready early.
        chunk_frames: mel frames in every later chunk.
        context_frames: extra mel frames decoded on each side of a chunk (>= 29).
        crossfade_samples: samples by which consecutive chunks overlap (joined linearly).
        device: where Vocos runs.
        dtype: compute dtype of the backbone (fp32 matches the reference; the head is always fp32).
    """

    def __init__(
        self,
        vocos: Any,
        *,
        first_chunk_frames: int = 24,
        chunk_frames: int = 96,
        context_frames: int = 32,
        crossfade_samples: int = 360,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError("first_chunk_frames and chunk_frames must be >= 1")
        if context_frames < VOCOS_RECEPTIVE_FRAMES:
            raise ValueError(
                f"context_frames must be >= {VOCOS_RECEPTIVE_FRAMES} (Vocos receptive field), "
                f"got {context_frames}"
            )
        istft = vocos.head.istft
        self.hop = int(istft.hop_length)
        self.n_fft = int(istft.n_fft)
        if getattr(istft, "padding", "center") != "center":
            raise ValueError("ChunkedVocoder needs a Vocos head with center padding")
        if not 0 <= crossfade_samples < min(first_chunk_frames, chunk_frames) * self.hop:
            raise ValueError("crossfade_samples must be >= 0 and shorter than a chunk")
        self.vocos = vocos.to(device).eval()
        if dtype != torch.float32:
            # Only the backbone runs in reduced precision; the head and iSTFT stay fp32.
            self.vocos.backbone.to(dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.crossfade_samples = crossfade_samples
        self._window = istft.window.detach().to(self.device, torch.float32)  # (n_fft,)

    # ------------------------------------------------------------------ decoding primitives
    def _decode_window(self, mel: Tensor) -> Tensor:
        """mel (1, n, 100) on device -> (hop * (n - 1),) float32 audio on device."""
        x = mel.to(self.dtype).transpose(1, 2)  # (1, 100, n)
        h = self.vocos.backbone(x)  # (1, n, 512)
        spec = self.vocos.head.out(h.float()).transpose(1, 2)  # (1, n_fft + 2, n)
        log_mag, phase = spec.chunk(2, dim=1)  # (1, n_fft/2 + 1, n) each
        mag = torch.exp(log_mag).clamp(max=1e2)  # same safeguard as Vocos' ISTFTHead
        return self._istft(torch.polar(mag, phase))[0]

    def _istft(self, spec: Tensor) -> Tensor:
        """Center-padded iSTFT without host syncs: spec (1, n_fft/2+1, n) complex -> (1, hop*(n-1))."""
        n = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self._window[None, :, None]
        out_len = self.n_fft + self.hop * (n - 1)
        fold = dict(output_size=(1, out_len), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        audio = F.fold(frames, **fold)[:, 0, 0, :]  # (1, out_len)
        win_sq = self._window.square()[None, :, None].expand(1, self.n_fft, n)
        envelope = F.fold(win_sq, **fold)[0, 0, 0, :]  # (out_len,)
        pad = self.n_fft // 2
        # The trimmed range never touches the zero-envelope samples at the very ends.
        return audio[:, pad : out_len - pad] / envelope[pad : out_len - pad]

    # ------------------------------------------------------------------ public API
    def chunk_bounds(self, n_frames: int) -> list[int]:
        """Chunk boundaries in mel frames on the hop grid: [0, b1, ..., n_frames - 1].

        Chunk k covers samples ``[256 * b_k, 256 * b_{k+1})`` (plus the cross-fade overlap). A tail
        too short to carry the overlap is merged into the previous chunk.
        """
        last = n_frames - 1
        if last <= 0:
            return [0]
        bounds = [0]
        step = self.first_chunk_frames
        min_tail_samples = 2 * self.crossfade_samples
        while bounds[-1] + step < last and (last - bounds[-1] - step) * self.hop > min_tail_samples:
            bounds.append(bounds[-1] + step)
            step = self.chunk_frames
        bounds.append(last)
        return bounds

    @torch.inference_mode()
    def decode_chunks(self, mel: Tensor) -> Iterator[np.ndarray]:
        """Decode ``mel`` (1, T, 100) float log-mel at 24 kHz / hop 256 into audio chunks.

        Yields float32 arrays (n,) in playback order; their concatenation has ``256 * (T - 1)``
        samples and equals ``decode_full(mel)`` within float error. One device-to-host copy per
        chunk.
        """
        if mel.dim() != 3 or mel.shape[0] != 1:
            raise ValueError(f"mel must have shape (1, T, n_mels), got {tuple(mel.shape)}")
        n_frames = mel.shape[1]
        bounds = self.chunk_bounds(n_frames)
        if len(bounds) < 2:
            return
        mel = mel.to(self.device)
        n_chunks = len(bounds) - 1
        # A lone chunk needs no seam (and may be shorter than the overlap).
        fader = CrossFader(self.crossfade_samples if n_chunks > 1 else 0, "linear")
        for k in range(n_chunks):
            start = bounds[k] * self.hop
            overlap = self.crossfade_samples if k < n_chunks - 1 else 0
            end = bounds[k + 1] * self.hop + overlap
            lo = max(0, bounds[k] - self.context_frames)
            hi = min(n_frames, math.ceil(end / self.hop) + self.context_frames + 1)
            audio = self._decode_window(mel[:, lo:hi])  # global samples from lo * hop
            piece = audio[start - lo * self.hop : end - lo * self.hop]
            joined = fader.push(piece.cpu().numpy().astype(np.float32, copy=False))
            if joined.size:
                yield joined
        tail = fader.flush()
        if tail.size:
            yield tail.astype(np.float32, copy=False)

    @torch.inference_mode()
    def decode_full(self, mel: Tensor) -> np.ndarray:
        """Reference path: Vocos' own backbone + ``ISTFTHead`` (``torch.istft``) on the whole mel.

        mel (1, T, 100) -> float32 (256 * (T - 1),). In fp32 this is exactly ``Vocos.decode``.
        """
        features = mel.to(self.device, self.dtype).transpose(1, 2)  # (1, 100, T)
        audio = self.vocos.head(self.vocos.backbone(features).float())  # (1, 256 * (T - 1))
        return audio[0].cpu().numpy().astype(np.float32, copy=False)


def random_vocos(seed: int = 0) -> Any:
    """The charactr/vocos-mel-24khz architecture with random weights (for ``--random-weights``).

    Same hyperparameters as the released config.yaml (F5_FACTS.md section 6), built in code so that
    benchmarks need no files; fp32, eval mode, the global RNG untouched.
    """
    from vocos import Vocos
    from vocos.feature_extractors import MelSpectrogramFeatures
    from vocos.heads import ISTFTHead
    from vocos.models import VocosBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Vocos(
            feature_extractor=MelSpectrogramFeatures(
                sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100, padding="center"
            ),
            backbone=VocosBackbone(input_channels=100, dim=512, intermediate_dim=1536, num_layers=8),
            head=ISTFTHead(dim=512, n_fft=1024, hop_length=256, padding="center"),
        )
    return model.eval().requires_grad_(False)
