"""Pick and build the engine named by the config, and say why (shown in the server's ready line).

- ``espeak``: eSpeak NG on the CPU.
- ``f5``: F5-TTS; its errors propagate (``WeightsNotFoundError`` with the files to fetch, ...).
  ``random_weights`` builds the real-size model with random weights (benchmarks).
- ``auto``: F5 when its weights resolve AND a CUDA device is available, else eSpeak (F5 on a CPU
  is far slower than real time).
"""

from __future__ import annotations

import torch

from engine.base import Engine, WeightsNotFoundError
from engine.config import EngineConfig


def create_engine(cfg: EngineConfig) -> tuple[Engine, str]:
    """Build the engine for ``cfg``; returns (engine, human-readable reason for the choice)."""
    if cfg.engine == "espeak":
        return _espeak(cfg), "requested with --engine espeak"
    if cfg.engine == "f5":
        return _f5(cfg, None), "requested with --engine f5"
    if cfg.engine != "auto":
        raise ValueError(f"unknown engine {cfg.engine!r}; expected auto, espeak or f5")

    device_ok = cfg.device.startswith("cuda") if cfg.device != "auto" else torch.cuda.is_available()
    if not device_ok:
        where = "no CUDA device" if cfg.device == "auto" else f"device {cfg.device} is not CUDA"
        return _espeak(cfg), f"auto: eSpeak ({where}; F5 needs a GPU for real time)"
    from engine.f5.weights import resolve_weights

    try:
        weights = resolve_weights(cfg)
    except WeightsNotFoundError as exc:
        # first missing file only: the reason goes into a one-line log message
        lines = [ln.strip(" -") for ln in str(exc).splitlines()]
        missing = lines[1] if len(lines) > 1 else lines[0]
        return _espeak(cfg), f"auto: eSpeak (F5 weights not found: {missing}; see `stream-tts download`)"
    return _f5(cfg, weights), "auto: F5 (weights found and a CUDA device is available)"


def _espeak(cfg: EngineConfig) -> Engine:
    from engine.espeak import EspeakEngine

    return EspeakEngine(cfg)


def _f5(cfg: EngineConfig, weights: object) -> Engine:
    from engine.f5.engine import F5Engine
    from engine.f5.weights import ResolvedWeights

    assert weights is None or isinstance(weights, ResolvedWeights)
    return F5Engine(cfg, weights=weights)
