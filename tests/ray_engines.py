"""Engine factories that Ray Serve replicas import in tests (``RayOptions.engine_factory``)."""

from __future__ import annotations

from dataclasses import replace

from engine.config import EngineConfig
from engine.f5.engine import F5Engine
from tests.f5_fixtures import small_config


def tiny_f5(cfg: EngineConfig) -> tuple[F5Engine, str]:
    """A small random-weight F5 engine on CPU using ``cfg.voices_dir`` (fast enough for tests)."""
    cfg = replace(cfg, engine="f5", device="cpu", random_weights=True, nfe=5)
    return F5Engine(cfg, model_config=small_config(text_num_embeds=2545)), "tests.ray_engines:tiny_f5"
