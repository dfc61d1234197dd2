"""Flow-matching sampler of F5-TTS (F5_FACTS.md section 4): Euler steps on an EPSS/sway time grid
with batched classifier-free guidance.

Mel tensors are (batch, frames, 100) log-mel (24 kHz, hop 256). The per-step function
(`FlowSampler._velocity`) takes only tensors and has no host syncs, so it can be compiled with
``fullgraph=True``; the time grid and the CFG strength live on the device as tensors, so changing
them never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.f5.config import N_MELS
from engine.f5.model import DiT

# Empirically pruned step sampling grids, in units of 1/32 (F5_FACTS.md 4.4).
EPSS_TABLES: dict[int, tuple[int, ...]] = {
    5: (0, 2, 4, 8, 16, 32),
    6: (0, 2, 4, 6, 8, 16, 32),
    7: (0, 2, 4, 6, 8, 16, 24, 32),
    10: (0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32),
    12: (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32),
}

_CFG_OFF = 1e-5  # below this CFG strength only the conditional pass runs (as the reference)


def time_grid(nfe: int, sway: float | None = -1.0, use_epss: bool = True) -> Tensor:
    """(nfe + 1,) float32 CPU tensor of ODE times from 0 to 1, computed as the reference does.

    EPSS grid when ``use_epss`` and nfe has a table, else uniform; then sway
    ``t + s * (cos(pi/2 t) - 1 + t)`` unless ``sway`` is None.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    table = EPSS_TABLES.get(nfe) if use_epss else None
    if table is not None:
        t = (1 / 32) * torch.tensor(table, dtype=torch.float32)
    else:
        t = torch.linspace(0, 1, nfe + 1, dtype=torch.float32)
    if sway is not None:
        t = t + sway * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


def initial_noise(
    n_frames: int, seed: int | None, device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """(1, n_frames, 100) standard normal noise, drawn in ``dtype`` on ``device``.

    With a seed the values equal the reference's ``torch.manual_seed(seed)`` followed by
    ``torch.randn(n_frames, 100)`` on the same device and dtype; we use a private
    ``torch.Generator`` seeded the same way (same algorithm, same sequence), so the process-wide
    RNG is left untouched. Without a seed the global RNG is used.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if seed is None:
        return torch.randn(n_frames, N_MELS, device=device, dtype=dtype).unsqueeze(0)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(n_frames, N_MELS, generator=gen, device=device, dtype=dtype).unsqueeze(0)


def min_total_frames(n_ref_frames: int, n_text_tokens: int) -> int:
    """The reference's lower bound on the total duration: max(text tokens, ref frames) + 1."""
    return max(n_text_tokens, n_ref_frames) + 1


@dataclass(frozen=True)
class SamplerSettings:
    nfe: int = 7
    cfg_strength: float = 2.0
    sway: float | None = -1.0
    use_epss: bool = True

    def __post_init__(self) -> None:
        if self.nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {self.nfe}")
        if not math.isfinite(self.cfg_strength) or self.cfg_strength < 0:
            raise ValueError(f"cfg_strength must be finite and >= 0, got {self.cfg_strength}")


class FlowSampler:
    """Samples mels from a `DiT` with Euler steps; ``compile`` compiles only the step function."""

    def __init__(
        self,
        model: DiT,
        settings: SamplerSettings = SamplerSettings(),
        compile: bool = False,
        *,
        compile_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``compile_options`` are extra `torch.compile` arguments (e.g. ``mode``, ``backend``)
        over the defaults ``fullgraph=True, dynamic=False``: one specialised graph per duration
        bucket; the caller buckets and keeps the bucket count under torch._dynamo's recompile
        limit (or raises it). Changing NFE, time grid or CFG strength never recompiles; switching
        CFG on/off does (one more graph)."""
        self.model = model
        self.settings = settings
        self._step: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor] = self._velocity
        if compile:
            options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            options.update(compile_options or {})
            self._step = torch.compile(self._velocity, **options)
        self._grids: dict[tuple[int, float | None, bool, str], tuple[Tensor, Tensor]] = {}

    def _velocity(self, x: Tensor, cond: Tensor, text_emb: Tensor, t: Tensor, cfg: Tensor) -> Tensor:
        """Guided flow at time t: x, cond (b, n, 100); t (); cfg () float32. Returns (b, n, 100)."""
        out = self.model(x, cond, text_emb, t)
        b = x.shape[0]
        if out.shape[0] == b:  # CFG off: text_emb held only conditional rows
            return out.float()
        pred, null = out.float().split(b, dim=0)
        return pred + (pred - null) * cfg

    def _grid(self, s: SamplerSettings, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (s.nfe, s.sway, s.use_epss, str(device))
        if key not in self._grids:
            t = time_grid(s.nfe, s.sway, s.use_epss)
            self._grids[key] = (t[:-1].to(device), (t[1:] - t[:-1]).to(device))
        return self._grids[key]

    @torch.inference_mode()
    def sample(
        self,
        cond_mel: Tensor,
        text_ids: Tensor,
        n_frames: int,
        *,
        noise: Tensor | None = None,
        seed: int | None = None,
        settings: SamplerSettings | None = None,
    ) -> Tensor:
        """Generate a mel continuing the reference.

        cond_mel: (1, n_ref, 100) reference log-mel; text_ids: (1, nt) int64 ids of reference +
        generated text; n_frames: total frames (reference + generated), > n_ref (see
        `min_total_frames` for the reference's lower bound). noise: optional (1, n_frames, 100)
        initial state, else drawn by `initial_noise` with ``seed`` in the model dtype.
        Returns (1, n_frames, 100) float32 on the model's device, with the reference frames
        replaced by ``cond_mel``; the caller slices the reference off.
        """
        s = settings or self.settings
        if cond_mel.dim() != 3 or cond_mel.shape[0] != 1 or cond_mel.shape[2] != N_MELS:
            raise ValueError(f"cond_mel must be (1, n_ref, {N_MELS}), got {tuple(cond_mel.shape)}")
        if text_ids.dim() != 2 or text_ids.shape[0] != 1:
            raise ValueError(f"text_ids must be (1, nt), got {tuple(text_ids.shape)}")
        n_ref = cond_mel.shape[1]
        if n_frames <= n_ref:
            raise ValueError(f"n_frames ({n_frames}) must exceed the reference frames ({n_ref})")
        device = self.model.proj_out.weight.device
        dtype = self.model.dtype

        # reference rounded to the model dtype, as the reference casts cond before sampling
        cond = torch.zeros(1, n_frames, N_MELS, device=device, dtype=dtype)
        cond[:, :n_ref] = cond_mel.to(device=device, dtype=dtype)
        if noise is None:
            noise = initial_noise(n_frames, seed, device, dtype)
        elif noise.shape != (1, n_frames, N_MELS):
            raise ValueError(f"noise must be (1, {n_frames}, {N_MELS}), got {tuple(noise.shape)}")
        x = noise.to(device=device, dtype=torch.float32)  # ODE state kept in fp32

        use_cfg = s.cfg_strength >= _CFG_OFF
        text_emb = self.model.embed_text(text_ids.to(device), n_frames, cfg=use_cfg)
        cfg = torch.tensor(s.cfg_strength, device=device, dtype=torch.float32)
        times, dts = self._grid(s, device)
        for i in range(s.nfe):
            v = self._step(x, cond, text_emb, times[i], cfg)
            x = x + dts[i] * v
        x[:, :n_ref] = cond[:, :n_ref].float()
        return x
