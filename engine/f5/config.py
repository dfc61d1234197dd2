"""F5-TTS model hyperparameters and the fixed mel/audio constants (F5_FACTS.md sections 1 and 6).

These describe the released checkpoints; they are not user settings (those live in
`engine.config.EngineConfig`). The mel constants are shared by F5 and the Vocos vocoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SAMPLE_RATE = 24000  # Hz, model and vocoder rate
HOP_LENGTH = 256  # samples per mel frame (10.67 ms at 24 kHz)
N_FFT = 1024
WIN_LENGTH = 1024
N_MELS = 100


@dataclass(frozen=True)
class F5ModelConfig:
    """Architecture of the DiT backbone. Defaults are F5TTS_v1_Base.

    ``text_mask_padding``: v1 zeroes filler/padding text positions inside the text encoder; v0 does
    not. ``pe_attn_head``: number of leading attention heads that get rotary position embedding;
    None = all heads (v1); 1 = head 0 only (v0).
    """

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    text_dim: int = 512
    text_num_embeds: int = 2545  # vocab size; the embedding table has one more row (filler)
    mel_dim: int = 100
    conv_layers: int = 4
    text_mask_padding: bool = True
    pe_attn_head: int | None = None

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "dim_head", "ff_mult", "text_dim", "text_num_embeds",
                     "mel_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"F5ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_layers < 1:
            # The released models all have a text encoder; conv_layers 0 is a research option we
            # do not implement.
            raise ValueError(f"F5ModelConfig.conv_layers must be >= 1, got {self.conv_layers}")
        if self.dim_head % 2:
            raise ValueError("F5ModelConfig.dim_head must be even (rotary pairs)")
        if self.pe_attn_head is not None and not 1 <= self.pe_attn_head <= self.heads:
            raise ValueError(f"F5ModelConfig.pe_attn_head must be in 1..{self.heads} or None")

    @classmethod
    def named(cls, name: str) -> F5ModelConfig:
        """The config of a released model: "F5TTS_v1_Base", "F5TTS_Base" (v0), "F5TTS_v1_Small"."""
        try:
            return _NAMED[name]
        except KeyError:
            raise ValueError(
                f"unknown F5 model {name!r}; expected one of {sorted(_NAMED)}"
            ) from None


_NAMED: dict[str, F5ModelConfig] = {
    "F5TTS_v1_Base": F5ModelConfig(),
    "F5TTS_Base": F5ModelConfig(text_mask_padding=False, pe_attn_head=1),
    "F5TTS_v1_Small": F5ModelConfig(dim=768, depth=18, heads=12),
}

# Smoke checks (scripts/device_check.sh --smoke) run the whole F5 path on CPU in seconds with a tiny
# architecture: STREAM_TTS_F5_TINY=1 in the environment swaps it in for any model name. Random
# weights only: no checkpoint has this shape.
TINY_MODEL_ENV = "STREAM_TTS_F5_TINY"
_TINY = F5ModelConfig(dim=128, depth=2, heads=4, dim_head=32, text_dim=64)


def tiny_model_requested() -> bool:
    """Whether the environment has ``STREAM_TTS_F5_TINY=1``."""
    return os.environ.get(TINY_MODEL_ENV) == "1"


def model_config_for(name: str) -> F5ModelConfig:
    """``F5ModelConfig.named(name)``, or the tiny smoke-check architecture when the environment
    has ``STREAM_TTS_F5_TINY=1``."""
    if tiny_model_requested():
        return _TINY
    return F5ModelConfig.named(name)
