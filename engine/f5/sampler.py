"""Flow-matching sampler of F5-TTS (F5_FACTS.md section 4): Euler steps on an EPSS/sway time grid
with batched classifier-free guidance.

Mel tensors are (batch, frames, 100) log-mel (24 kHz, hop 256). The per-step function
(`engine.f5.batch.BatchSampler._velocity`) takes only tensors and has no host syncs, so it can be
compiled with ``fullgraph=True``; times and CFG strengths are per-row tensors, so changing them
never recompiles. `FlowSampler` is the one-item front of the batching core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.f5.batch import CFG_OFF, BatchSampler
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

_CFG_OFF = CFG_OFF


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

    def grid(self) -> Tensor:
        """(nfe + 1,) float32 CPU time grid of these settings (`time_grid`)."""
        return time_grid(self.nfe, self.sway, self.use_epss)


class FlowSampler:
    """Samples one mel at a time from a `DiT` with Euler steps (the solo path).

    A thin front of `engine.f5.batch.BatchSampler`: one item, ``nfe`` steps. ``compile`` compiles
    only the step function.
    """

    def __init__(
        self,
        model: DiT,
        settings: SamplerSettings = SamplerSettings(),
        compile: bool = False,
        *,
        compile_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``compile_options`` are extra `torch.compile` arguments (e.g. ``mode``, ``backend``)
        over the defaults ``fullgraph=True, dynamic=False``: one specialised graph per shape.
        Changing NFE, time grid or CFG strength never recompiles; switching CFG on/off does (one
        more graph)."""
        self.model = model
        self.settings = settings
        self.batch = BatchSampler(model, compile=compile, compile_options=compile_options)

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
        item = self.batch.new_item(cond_mel, text_ids, n_frames, s.grid(), s.cfg_strength,
                               noise=noise, seed=seed)
        while not item.finished:
            self.batch.step([item])
        return item.result()
