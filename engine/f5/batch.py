"""Step-level continuous batching of the F5 flow sampler (issue 8, items 1-3).

A `FlowItem` is one segment in flight: its condition mel, its text features (computed once, alone,
at its exact length), its ODE state and its own time grid and position on it. `BatchSampler.step`
runs ONE backbone pass for any set of items: the conditional rows of all items, then the
unconditional (CFG) rows of the guided ones, each row at its own time ``t``; then every item takes
its own Euler step ``x += dt * v``. Items with different lengths, NFE, grids (sway, EPSS), CFG
strengths or speeds share a pass, and items join and leave between passes.

Exactness: rows are padded at the end to the batch length and `DiT.forward_rows` masks the padded
frames (attention keys, conv position embedding), so each item's result equals the same request
sampled alone within float rounding (<= 1e-4 in fp32; tests/engine/f5/test_batch.py). A batch of
one item with no padding runs exactly the unmasked solo computation.

Static shapes (compiled / CUDA graphs): with ``frame_buckets`` and ``row_buckets`` the batch is
padded up to the next (items, frames) bucket, with the same masking, so a segment's duration is the
reference's exact rule while the compiled graphs see a few fixed shapes. Padded rows have zero
inputs, a full mask, time 0 and are discarded. In this mode every item carries CFG rows (an item
with CFG off gets weight 0, which gives exactly its conditional prediction), so the row count is
always twice the item bucket. ``runner`` (see `engine.f5.graphs`) may replay captured CUDA graphs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from engine.f5.config import N_MELS
from engine.f5.model import DiT

CFG_OFF = 1e-5  # below this CFG strength only the conditional pass runs (as the reference)

VelocityFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None], Tensor]


class StepRunner(Protocol):
    """Runs the guided velocity on padded bucket shapes (e.g. by replaying a CUDA graph)."""

    def has(self, rows: int, frames: int) -> bool: ...

    def run(self, x: Tensor, cond: Tensor, text_emb: Tensor, t: Tensor, cfg: Tensor,
            mask: Tensor | None) -> Tensor: ...


@dataclass(eq=False)
class FlowItem:
    """Sampler state of one segment (identity semantics: each object is one item).

    Attributes:
        n_frames: total frames (reference + generated) of its sample.
        n_ref: reference (condition) frames.
        cond: (n_frames, 100) condition mel in the model dtype, zero beyond ``n_ref``.
        text_emb: (2, n_frames, text_dim) [conditional; text-dropped] rows, or (1, ...) when the
            item runs without CFG rows; model dtype.
        x: (n_frames, 100) float32 ODE state.
        times, dts: its time grid: ``t_i`` and ``t_{i+1} - t_i`` (float32 values) for i < nfe.
        cfg_strength: its guidance weight.
        step: index of the next Euler step.
    """

    n_frames: int
    n_ref: int
    cond: Tensor
    text_emb: Tensor
    x: Tensor
    times: tuple[float, ...]
    dts: tuple[float, ...]
    cfg_strength: float
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return len(self.times)

    @property
    def steps_left(self) -> int:
        return self.nfe - self.step

    @property
    def finished(self) -> bool:
        return self.step >= self.nfe

    @property
    def guided(self) -> bool:
        return self.text_emb.shape[0] == 2

    def result(self) -> Tensor:
        """(1, n_frames, 100) float32: the final state with the reference frames restored."""
        if not self.finished:
            raise RuntimeError(f"item has {self.steps_left} sampler steps left")
        out = self.x.clone()
        out[: self.n_ref] = self.cond[: self.n_ref].float()
        return out.unsqueeze(0)


def bucket_for(buckets: Sequence[int], n: int) -> int | None:
    """The smallest bucket >= n, or None when n is above the largest."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else None


def row_buckets(max_rows: int) -> list[int]:
    """Item-count buckets: powers of two below ``max_rows``, then ``max_rows`` itself."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    out = [1]
    while out[-1] * 2 < max_rows:
        out.append(out[-1] * 2)
    if out[-1] != max_rows:
        out.append(max_rows)
    return out


def reachable_shapes(rows: Sequence[int], frames: Sequence[int], max_batch_frames: int
                     ) -> list[tuple[int, int]]:
    """(item bucket, frame bucket) pairs some batch within ``max_batch_frames`` pads to.

    A batch of ``b`` items of at most ``n`` frames is allowed when ``b * n <= max_batch_frames``
    (one item is always allowed) and pads to (bucket(b), bucket(n)); the smallest batch that pads
    to (r, f) has previous-bucket + 1 items and frames. Largest first (capture order).
    """
    out = []
    for i, r in enumerate(rows):
        b_min = rows[i - 1] + 1 if i else 1
        for j, f in enumerate(frames):
            n_min = frames[j - 1] + 1 if j else 1
            if b_min == 1 or b_min * n_min <= max_batch_frames:
                out.append((r, f))
    return sorted(out, key=lambda rf: (rf[0] * rf[1], rf), reverse=True)


class BatchSampler:
    """Runs Euler steps for any set of `FlowItem`s, one backbone pass per step.

    Args:
        model: the DiT.
        compile: ``torch.compile`` the velocity function (``fullgraph=True, dynamic=False`` and
            ``compile_options`` on top).
        frame_buckets, row_buckets: static shapes (sorted); None = exact shapes (eager).
        runner: replays captured graphs for bucket shapes it ``has`` (set by the engine).
    """

    def __init__(
        self,
        model: DiT,
        *,
        compile: bool = False,
        compile_options: Mapping[str, Any] | None = None,
        frame_buckets: Sequence[int] | None = None,
        row_buckets: Sequence[int] | None = None,
    ) -> None:
        if (frame_buckets is None) != (row_buckets is None):
            raise ValueError("give both frame_buckets and row_buckets, or neither")
        self.model = model
        self.frame_buckets = sorted(frame_buckets) if frame_buckets else None
        self.row_buckets = sorted(row_buckets) if row_buckets else None
        self.velocity: VelocityFn = self._velocity
        if compile:
            options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            options.update(compile_options or {})
            self.velocity = torch.compile(self._velocity, **options)
        self.runner: StepRunner | None = None
        self.device = model.proj_out.weight.device
        self._rows_cache: tuple[Any, list[FlowItem], tuple[Tensor, Tensor, Tensor | None]] | None = None

    @property
    def static_shapes(self) -> bool:
        return self.frame_buckets is not None

    # ------------------------------------------------------------------ items
    @torch.inference_mode()
    def new_item(
        self,
        cond_mel: Tensor,
        text_ids: Tensor,
        n_frames: int,
        times: Tensor,
        cfg_strength: float,
        *,
        noise: Tensor | None = None,
        seed: int | None = None,
    ) -> FlowItem:
        """Prepare an item: condition, text features (alone, at ``n_frames``) and initial noise.

        cond_mel: (1, n_ref, 100) reference log-mel; text_ids: (1, nt) int64 ids of reference +
        generated text; n_frames > n_ref total frames; times: (nfe + 1,) float32 grid from 0 to 1;
        noise: (1, n_frames, 100) initial state, else drawn with ``seed`` in the model dtype (the
        reference's draw). Raises ValueError on bad shapes.
        """
        from engine.f5.sampler import initial_noise

        if cond_mel.dim() != 3 or cond_mel.shape[0] != 1 or cond_mel.shape[2] != N_MELS:
            raise ValueError(f"cond_mel must be (1, n_ref, {N_MELS}), got {tuple(cond_mel.shape)}")
        if text_ids.dim() != 2 or text_ids.shape[0] != 1:
            raise ValueError(f"text_ids must be (1, nt), got {tuple(text_ids.shape)}")
        n_ref = cond_mel.shape[1]
        if n_frames <= n_ref:
            raise ValueError(f"n_frames ({n_frames}) must exceed the reference frames ({n_ref})")
        if self.frame_buckets is not None and n_frames > self.frame_buckets[-1]:
            raise ValueError(f"n_frames ({n_frames}) is above the largest bucket "
                             f"({self.frame_buckets[-1]})")
        if times.dim() != 1 or times.shape[0] < 2:
            raise ValueError("times must be a (nfe + 1,) grid")
        device, dtype = self.device, self.model.dtype
        # reference rounded to the model dtype, as the reference casts cond before sampling
        cond = torch.zeros(n_frames, N_MELS, device=device, dtype=dtype)
        cond[:n_ref] = cond_mel[0].to(device=device, dtype=dtype)
        if noise is None:
            noise = initial_noise(n_frames, seed, device, dtype)
        elif noise.shape != (1, n_frames, N_MELS):
            raise ValueError(f"noise must be (1, {n_frames}, {N_MELS}), got {tuple(noise.shape)}")
        x = noise[0].to(device=device, dtype=torch.float32)  # ODE state kept in fp32
        cfg_rows = cfg_strength >= CFG_OFF or self.static_shapes
        text_emb = self.model.embed_text(text_ids.to(device), n_frames, cfg=cfg_rows)
        t = times.to("cpu", torch.float32)
        dts = t[1:] - t[:-1]  # float32, as the reference's grid differences
        return FlowItem(
            n_frames=n_frames, n_ref=n_ref, cond=cond, text_emb=text_emb, x=x,
            times=tuple(t[:-1].tolist()), dts=tuple(dts.tolist()),
            cfg_strength=float(cfg_strength),
        )

    # ------------------------------------------------------------------ one step
    def _velocity(self, x: Tensor, cond: Tensor, text_emb: Tensor, t: Tensor, cfg: Tensor,
                  mask: Tensor | None) -> Tensor:
        """Guided flow of b items: x, cond (b, n, 100) (x fp32); text_emb (b + g, n, d) with the
        uncond rows of the first g items last; t, cfg (b,) fp32; mask None or (b, n) bool.
        Returns (b, n, 100) float32."""
        b = x.shape[0]
        g = text_emb.shape[0] - b  # static: a shape, not a value
        rows_x = torch.cat((x, x[:g]), dim=0)
        rows_cond = torch.cat((cond, torch.zeros_like(cond[:g])), dim=0)
        rows_t = torch.cat((t, t[:g]), dim=0)
        rows_mask = None if mask is None else torch.cat((mask, mask[:g]), dim=0)
        out = self.model.forward_rows(rows_x, rows_cond, text_emb, rows_t, rows_mask).float()
        pred = out[:b]
        if g == 0:
            return pred
        guided = pred[:g] + (pred[:g] - out[b:]) * cfg[:g, None, None]
        if g == b:
            return guided
        return torch.cat((guided, pred[g:]), dim=0)

    def batch_shape(self, items: Sequence[FlowItem]) -> tuple[int, int]:
        """(items, frames) the step over ``items`` runs at, after bucketing."""
        b, n = len(items), max(it.n_frames for it in items)
        if self.frame_buckets is None or self.row_buckets is None:
            return b, n
        rb, fb = bucket_for(self.row_buckets, b), bucket_for(self.frame_buckets, n)
        return (rb or b), (fb or n)

    def _constant_rows(self, order: list[FlowItem], bp: int, npad: int, g: int, padded: bool
                       ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Padded cond (bp, npad, 100), text rows and mask of ``order``: what does not change
        from step to step; reused while the same items share steps at the same shape (the cache
        holds the items, so their ids cannot be reused meanwhile)."""
        key = (tuple(id(it) for it in order), bp, npad)
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[2]
        device, dtype = self.device, self.model.dtype
        b = len(order)
        cond = torch.zeros(bp, npad, N_MELS, device=device, dtype=dtype)
        n_text = bp + (bp if self.static_shapes else g)
        text = torch.zeros(n_text, npad, order[0].text_emb.shape[-1], device=device, dtype=dtype)
        mask: Tensor | None = None
        if padded or self.static_shapes:
            mask = torch.ones(bp, npad, device=device, dtype=torch.bool)
        for i, it in enumerate(order):
            m = it.n_frames
            cond[i, :m] = it.cond
            text[i, :m] = it.text_emb[0]
            if it.guided:
                text[bp + i if self.static_shapes else b + i, :m] = it.text_emb[1]
            if mask is not None:
                mask[i, m:] = False
        self._rows_cache = (key, list(order), (cond, text, mask))
        return cond, text, mask

    def forget(self) -> None:
        """Drop the cached rows of the last batch (frees their memory)."""
        self._rows_cache = None

    @torch.inference_mode()
    def step(self, items: Sequence[FlowItem]) -> None:
        """One backbone pass for ``items``: each advances one Euler step at its own t and dt."""
        if not items:
            return
        if len({id(it) for it in items}) != len(items):
            raise ValueError("an item appears twice in one step")
        for it in items:
            if it.finished:
                raise ValueError("an item in the step has no sampler steps left")
        # guided items first: their uncond rows follow all conditional rows, in the same order
        order = sorted(items, key=lambda it: not it.guided)
        g = sum(it.guided for it in order)
        b = len(order)
        bp, npad = self.batch_shape(order)
        device = self.device
        padded = bp != b or any(it.n_frames != npad for it in order)
        mask: Tensor | None = None
        if not padded and b == 1:
            it = order[0]
            x, cond, text = it.x.unsqueeze(0), it.cond.unsqueeze(0), it.text_emb
            if self.static_shapes:  # one graph per shape: always with a mask
                mask = torch.ones(1, npad, device=device, dtype=torch.bool)
        else:
            x = torch.zeros(bp, npad, N_MELS, device=device, dtype=torch.float32)
            for i, it in enumerate(order):
                x[i, : it.n_frames] = it.x
            cond, text, mask = self._constant_rows(order, bp, npad, g, padded)
        pad_rows = bp - b
        t = torch.tensor([it.times[it.step] for it in order] + [0.0] * pad_rows, dtype=torch.float32)
        cfg = torch.tensor([it.cfg_strength for it in order] + [0.0] * pad_rows, dtype=torch.float32)
        dt = torch.tensor([it.dts[it.step] for it in order] + [0.0] * pad_rows, dtype=torch.float32)
        t, cfg, dt = t.to(device), cfg.to(device), dt.to(device)
        runner = self.runner
        if runner is not None and self.static_shapes and runner.has(bp, npad):
            v = runner.run(x, cond, text, t, cfg, mask)
        else:
            v = self.velocity(x, cond, text, t, cfg, mask)
        new_x = x + dt[:, None, None] * v  # (bp, npad, 100) float32
        for i, it in enumerate(order):
            # own storage when batched: the batch tensor is freed when the step ends
            it.x = new_x[i, : it.n_frames].clone() if (padded or b > 1) else new_x[0]
            it.step += 1
