"""Configuration of the engine and of the audio post / codec stage (one frozen dataclass each).

Defaults live here only; `stream_server.config` composes these with the other components' configs,
loads TOML and generates CLI flags from the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineConfig:
    engine: Literal["auto", "espeak", "f5"] = "auto"
    device: str = "auto"  # "auto" = cuda:0 when available, else cpu
    # --- eSpeak NG ---
    espeak_default_voice: str = "auto"  # by script; or an eSpeak voice name
    # when a listener waits (first segment of a turn) the first eSpeak call speaks about this long
    # (s, cut at a word); 0 = no early cut (first piece like later ones: up to a clause or ~4 s)
    espeak_first_piece_s: float = 1.2
    # --- F5-TTS ---
    model: Literal["F5TTS_v1_Base", "F5TTS_Base"] = "F5TTS_v1_Base"
    checkpoint: str = ""  # path to model_*.safetensors / .pt; "" = resolve (HF cache, ...)
    vocab: str = ""  # path to vocab.txt; "" = next to the checkpoint, else the HF cache
    vocoder: str = ""  # folder with Vocos config.yaml + pytorch_model.bin; "" = HF cache
    random_weights: bool = False  # build the real-size model with random weights (benchmarks)
    voices_dir: str = "voices"  # NAME.wav + NAME.txt reference clips for F5
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"  # CUDA only; CPU always runs fp32
    compile: bool = True  # torch.compile the backbone step (CUDA only)
    nfe: int = 7
    cfg_strength: float = 2.0
    sway: float = -1.0
    # chunked vocoding: first chunk small for TTFA, later chunks larger (mel frames, 1 frame = 256
    # samples = 10.67 ms at 24 kHz)
    vocoder_first_chunk_frames: int = 24
    vocoder_chunk_frames: int = 96
    vocoder_context_frames: int = 32
    # step-level batching (F5): at most this many segments share one sampler step, and at most
    # this many frames in it (segments x the longest one's total frames, reference included)
    max_batch_rows: int = 16
    max_batch_frames: int = 16384

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_rows <= 256:
            raise ValueError(f"max_batch_rows must be 1..256, got {self.max_batch_rows}")
        if not 4096 <= self.max_batch_frames <= 1_048_576:
            # one segment of the longest duration (4096 frames, 43.7 s) must always fit
            raise ValueError(f"max_batch_frames must be 4096..1048576, got {self.max_batch_frames}")
        if not 0.0 <= self.espeak_first_piece_s <= 10.0:
            raise ValueError(f"espeak_first_piece_s must be 0..10 s, got {self.espeak_first_piece_s}")


@dataclass(frozen=True)
class AudioConfig:
    # seams between vocoder chunks
    crossfade_ms: float = 15.0
    crossfade_curve: Literal["linear", "equal_power"] = "linear"
    # segment envelope
    fade_in_ms: float = 5.0
    fade_out_ms: float = 10.0
    pause_ms: float = 120.0  # silence appended after every segment
    # Opus
    opus_bitrate: int = 32000
    opus_application: Literal["audio", "voip", "restricted_lowdelay"] = "audio"
    # libopus complexity 0..10: 4 costs ~3 ms of CPU per second of audio, 5 ~4.5 ms, 10 ~27 ms
    # (measured, engine/codec.py, docs/PERFORMANCE.md); encoders run on the engine workers
    opus_complexity: int = 4
    # LAME's -q for MP3 (0 best and slowest .. 9): 7 ("fast, ok quality": psychoacoustics without
    # noise shaping) costs ~11 ms of CPU per second of speech at 64 kbit/s, LAME's default 3 ~21 ms,
    # for a log-spectral distance below 8 kHz 0.45 dB worse (docs/PERFORMANCE.md)
    mp3_quality: int = 7
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.opus_complexity <= 10:
            raise ValueError(f"opus_complexity must be 0..10, got {self.opus_complexity}")
        if not 0 <= self.mp3_quality <= 9:
            raise ValueError(f"mp3_quality must be 0..9, got {self.mp3_quality}")
