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

Batched decoding (`ChunkedVocoder.open_stream` + `decode_step`): one call decodes the next chunk of
several streams at once. Their mel windows are padded at the end to the longest and the padded
frames are masked where they could reach a valid sample: zeroed before every convolution of the
backbone and given zero magnitude (and no window-envelope weight) in the iSTFT, so each stream's
chunk equals its solo decode up to float error.

The iSTFT here is written out (irfft + overlap-add + window-envelope division) instead of calling
``torch.istft``, whose NOLA check reads a value back to the host on every call; the equality test
against ``Vocos.decode`` covers it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.audio import CrossFader

# Vocos' receptive field in mel frames, each side (backbone 27 + iSTFT 2).
VOCOS_RECEPTIVE_FRAMES = 29


@dataclass(eq=False)
class VocodeStream:
    """Decoding state of one mel: its chunk boundaries, the next chunk index and its seam joiner."""

    mel: Tensor  # (T, 100) on the vocoder's device
    bounds: list[int]  # chunk boundaries in frames (`ChunkedVocoder.chunk_bounds`)
    fader: CrossFader
    next_chunk: int = 0

    @property
    def n_chunks(self) -> int:
        return len(self.bounds) - 1

    @property
    def chunks_left(self) -> int:
        return self.n_chunks - self.next_chunk

    @property
    def finished(self) -> bool:
        return self.next_chunk >= self.n_chunks


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
        if getattr(self.vocos.backbone, "adanorm", False):
            raise ValueError("ChunkedVocoder needs a Vocos backbone without AdaLayerNorm")

    # ------------------------------------------------------------------ decoding primitives
    def _decode_window(self, mel: Tensor) -> Tensor:
        """mel (1, n, 100) on device -> (hop * (n - 1),) float32 audio on device."""
        x = mel.to(self.dtype).transpose(1, 2)  # (1, 100, n)
        h = self.vocos.backbone(x)  # (1, n, 512)
        spec = self.vocos.head.out(h.float()).transpose(1, 2)  # (1, n_fft + 2, n)
        log_mag, phase = spec.chunk(2, dim=1)  # (1, n_fft/2 + 1, n) each
        mag = torch.exp(log_mag).clamp(max=1e2)  # same safeguard as Vocos' ISTFTHead
        return self._istft(torch.polar(mag, phase))[0]

    def _istft(self, spec: Tensor, keep: Tensor | None = None) -> Tensor:
        """Center-padded iSTFT without host syncs: spec (b, n_fft/2+1, n) complex ->
        (b, hop*(n-1)). ``keep`` (b, 1, n) 0/1 drops padded frames from the window envelope."""
        n = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self._window[None, :, None]
        out_len = self.n_fft + self.hop * (n - 1)
        fold = dict(output_size=(1, out_len), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        audio = F.fold(frames, **fold)[:, 0, 0, :]  # (b, out_len)
        pad = self.n_fft // 2
        win_sq = self._window.square()[None, :, None]  # (1, n_fft, 1)
        if keep is None:
            envelope = F.fold(win_sq.expand(1, self.n_fft, n), **fold)[:, 0, 0, :]  # (1, out_len)
        else:
            envelope = F.fold(win_sq * keep, **fold)[:, 0, 0, :]  # (b, out_len)
            # past a row's last valid frame the envelope is 0: samples nobody reads
            envelope = envelope.clamp(min=1e-8)
        # The trimmed range never touches the zero-envelope samples at the very ends.
        return audio[:, pad : out_len - pad] / envelope[:, pad : out_len - pad]

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

    def open_stream(self, mel: Tensor) -> VocodeStream:
        """Prepare decoding of ``mel`` (1, T, 100) float log-mel (24 kHz / hop 256)."""
        if mel.dim() != 3 or mel.shape[0] != 1:
            raise ValueError(f"mel must have shape (1, T, n_mels), got {tuple(mel.shape)}")
        bounds = self.chunk_bounds(mel.shape[1])
        # A lone chunk needs no seam (and may be shorter than the overlap).
        fader = CrossFader(self.crossfade_samples if len(bounds) > 2 else 0, "linear")
        return VocodeStream(mel[0].to(self.device), bounds, fader)

    def _window_of(self, st: VocodeStream) -> tuple[int, int, int, int]:
        """Next chunk of ``st``: mel window [lo, hi) and its sample span [start, end) (global)."""
        k, bounds, n_frames = st.next_chunk, st.bounds, st.mel.shape[0]
        start = bounds[k] * self.hop
        overlap = self.crossfade_samples if k < st.n_chunks - 1 else 0
        end = bounds[k + 1] * self.hop + overlap
        lo = max(0, bounds[k] - self.context_frames)
        hi = min(n_frames, math.ceil(end / self.hop) + self.context_frames + 1)
        return lo, hi, start, end

    def window_frames(self, st: VocodeStream) -> int:
        """Mel frames (with context) that the next chunk of ``st`` decodes: its size in a step."""
        lo, hi, _, _ = self._window_of(st)
        return hi - lo

    @torch.inference_mode()
    def decode_step(self, streams: Sequence[VocodeStream]) -> list[np.ndarray]:
        """The next chunk of every stream, decoded in one batched call.

        Returns one float32 (n,) array per stream, seams cross-faded; a stream's last chunk
        includes its held-back tail. One device-to-host copy per call.
        """
        if any(st.finished for st in streams):
            raise ValueError("a stream in the step has no chunks left")
        if len({id(st) for st in streams}) != len(streams):
            raise ValueError("a stream appears twice in one step")
        if not streams:
            return []
        spans = [self._window_of(st) for st in streams]
        if len(streams) == 1:
            lo, hi, _, _ = spans[0]
            audio = self._decode_window(streams[0].mel[None, lo:hi])[None]  # (1, n)
        else:
            lengths = [hi - lo for lo, hi, _, _ in spans]
            n_max = max(lengths)
            mel = torch.zeros(len(streams), n_max, streams[0].mel.shape[1], device=self.device)
            for i, (st, (lo, hi, _, _)) in enumerate(zip(streams, spans, strict=True)):
                mel[i, : hi - lo] = st.mel[lo:hi]
            keep = torch.arange(n_max, device=self.device)[None, :] < torch.tensor(
                lengths, device=self.device
            )[:, None]  # (b, n) valid frames
            audio = self._decode_windows_masked(mel, keep)
        pieces = [
            audio[i, start - lo * self.hop : end - lo * self.hop]
            for i, (lo, _, start, end) in enumerate(spans)
        ]
        host = torch.cat(pieces).cpu().numpy().astype(np.float32, copy=False)
        out: list[np.ndarray] = []
        offset = 0
        for st, (_, _, start, end) in zip(streams, spans, strict=True):
            piece = host[offset : offset + end - start]
            offset += end - start
            joined = st.fader.push(piece)
            st.next_chunk += 1
            if st.finished:
                joined = np.concatenate([joined, st.fader.flush()])
            out.append(joined.astype(np.float32, copy=False))
        return out

    def _decode_windows_masked(self, mel: Tensor, keep: Tensor) -> Tensor:
        """mel (b, n, 100) padded at the end, keep (b, n) bool -> (b, hop * (n - 1)) float32; each
        row's valid samples equal `_decode_window` of its valid frames alone."""
        bb = self.vocos.backbone
        k = keep[:, None, :].to(self.dtype)  # (b, 1, n)
        h = bb.embed(mel.to(self.dtype).transpose(1, 2) * k)  # (b, 512, n)
        h = bb.norm(h.transpose(1, 2)).transpose(1, 2)
        for block in bb.convnext:
            y = block.dwconv(h * k).transpose(1, 2)  # padded frames read as zero padding
            y = block.pwconv2(block.act(block.pwconv1(block.norm(y))))
            if block.gamma is not None:
                y = block.gamma * y
            h = h + y.transpose(1, 2)
        feats = bb.final_layer_norm(h.transpose(1, 2))  # (b, n, 512)
        spec = self.vocos.head.out(feats.float()).transpose(1, 2)  # (b, n_fft + 2, n)
        log_mag, phase = spec.chunk(2, dim=1)
        kf = keep[:, None, :].float()
        mag = torch.exp(log_mag).clamp(max=1e2) * kf  # padded frames add nothing
        return self._istft(torch.polar(mag, phase), kf)

    @torch.inference_mode()
    def decode_chunks(self, mel: Tensor) -> Iterator[np.ndarray]:
        """Decode ``mel`` (1, T, 100) float log-mel at 24 kHz / hop 256 into audio chunks.

        Yields float32 arrays (n,) in playback order; their concatenation has ``256 * (T - 1)``
        samples and equals ``decode_full(mel)`` within float error. One device-to-host copy per
        chunk. The solo path of `decode_step`.
        """
        st = self.open_stream(mel)
        while not st.finished:
            chunk = self.decode_step([st])[0]
            if chunk.size:
                yield chunk

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
