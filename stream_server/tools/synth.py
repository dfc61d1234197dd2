"""``stream-tts synth``: render text to a WAV file offline through the server's own pipeline.

Same chunker, engine and audio post (segment fades and pauses) as a streaming session, without
sockets or encoding: the WAV holds the float32 audio as PCM16 at the engine's sample rate.
``--batch lines.jsonl`` renders many lines through one running batch (`stream_server.tools.synth_batch`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chunker import SentenceChunker
from engine.audio import SegmentShaper
from engine.base import Engine, SynthOptions
from stream_server.config import AppConfig, add_config_flags, load_config, overrides_from_args
from stream_server.errors import ConfigError


@dataclass(frozen=True)
class Rendered:
    audio: np.ndarray  # float32 (n,) at the engine's sample rate
    segments: list[str]
    synth_s: float
    mels: list[np.ndarray]  # per segment (T, 100), only when requested and the engine keeps one


def render(text: str, engine: Engine, config: AppConfig, voice: str, options: SynthOptions,
           *, keep_mel: bool = False) -> Rendered:
    """Chunk ``text``, synthesize every segment, apply the audio post; return the joined audio."""
    chunker = SentenceChunker(config.chunker)
    segments = chunker.push(text) + chunker.flush()
    audio = config.audio
    shaper = SegmentShaper(engine.sample_rate, audio.fade_in_ms, audio.fade_out_ms, audio.pause_ms)
    parts: list[np.ndarray] = []
    mels: list[np.ndarray] = []
    t0 = time.perf_counter()
    for seg in segments:
        for chunk in engine.synthesize(seg.text, voice, options):
            parts.append(shaper.process(chunk))
        parts.append(shaper.finish())
        mel = getattr(engine, "last_mel", None) if keep_mel else None
        if mel is not None:
            mels.append(np.asarray(mel).copy())
    synth_s = time.perf_counter() - t0
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return Rendered(joined.astype(np.float32, copy=False), [s.text for s in segments], synth_s, mels)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", help="text to speak")
    p.add_argument("--text-file", help="UTF-8 file with the text to speak")
    p.add_argument("--voice", help="voice name (default: the engine's default voice)")
    p.add_argument("--out", help="output WAV file (PCM16, engine sample rate)")
    p.add_argument("--seed", type=int, help="initial-noise seed (F5) for reproducible output")
    p.add_argument("--speed", type=float, default=1.0, help="0.5..2.0, >1 is faster")
    p.add_argument("--mel-out", help="write the generated mel (F5 only) as .npy, shape (T, 100)")
    p.add_argument("--batch", help='JSON lines file, one {"id", "text", "voice"?, "seed"?, "speed"?} '
                   "per line: writes OUT_DIR/ID.wav and ID.npy (instead of --text/--out)")
    p.add_argument("--out-dir", help="--batch: folder for ID.wav (and ID.npy)")
    p.add_argument("--mel-out-dir", help="--batch: folder for the ID.npy mels (default: --out-dir)")
    p.add_argument("--stagger-steps", type=int, default=0, metavar="K",
                   help="--batch: one more line joins every K sampler steps (0 = all at once)")
    p.add_argument("--config", help="TOML config file")
    add_config_flags(p)


def _read_text(args: argparse.Namespace) -> str:
    if bool(args.text) == bool(args.text_file):
        raise ConfigError("give exactly one of --text or --text-file")
    if args.text_file:
        try:
            text: str = Path(args.text_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {args.text_file}: {exc.strerror}") from None
    else:
        text = args.text
    if not text.strip():
        raise ConfigError("the text is empty")
    return text


def _check_batch_args(args: argparse.Namespace) -> None:
    if args.text or args.text_file or args.out or args.mel_out:
        raise ConfigError("--batch takes --out-dir (and --mel-out-dir), not --text/--text-file/"
                          "--out/--mel-out")
    if not args.out_dir:
        raise ConfigError("--batch needs --out-dir")
    if args.stagger_steps < 0:
        raise ConfigError("--stagger-steps must be >= 0")


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from engine.factory import create_engine

    if args.batch:
        from stream_server.tools.synth_batch import run_batch

        _check_batch_args(args)
        config = load_config(args.config, overrides_from_args(args))
        engine, _ = create_engine(config.engine)
        return run_batch(args, engine, config)
    if not args.out:
        raise ConfigError("give --out (or --batch with --out-dir)")
    if args.out_dir or args.mel_out_dir or args.stagger_steps:
        raise ConfigError("--out-dir, --mel-out-dir and --stagger-steps go with --batch")
    text = _read_text(args)
    config = load_config(args.config, overrides_from_args(args))
    engine, reason = create_engine(config.engine)
    if args.mel_out and not hasattr(engine, "last_mel"):
        raise ConfigError(f"--mel-out needs an engine that produces a mel (f5); {engine.name} has none")
    voice = args.voice or engine.default_voice
    options = SynthOptions(speed=args.speed, seed=args.seed)
    options.validate()
    result = render(text, engine, config, voice, options, keep_mel=bool(args.mel_out))
    sf.write(args.out, result.audio, engine.sample_rate, subtype="PCM_16")
    if args.mel_out:
        np.save(args.mel_out, np.concatenate(result.mels, axis=0) if result.mels else np.zeros((0, 100)))
    seconds = result.audio.shape[0] / engine.sample_rate
    rtf = result.synth_s / seconds if seconds else 0.0
    print(
        f"wrote {args.out}: {seconds:.2f} s, {len(result.segments)} segment(s), engine {engine.name} "
        f"({reason}), synthesis {result.synth_s:.2f} s, RTF {rtf:.3f}"
    )
    return 0
