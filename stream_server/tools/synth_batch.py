"""``stream-tts synth --batch lines.jsonl``: render many lines offline through one running batch.

Each line of the file is a JSON object ``{"id", "text", "voice"?, "seed"?, "speed"?}``. Every line
goes through the same chunker, engine and audio post as ``synth --text`` and is written as
``OUT_DIR/ID.wav`` (PCM16) and ``MEL_DIR/ID.npy`` (the generated mel, (T, 100), like --mel-out).

With a batching engine (F5) the lines' segments share sampler and vocoder steps: lines join in
file order, one new line every ``stagger`` sampler steps (0 = all at once), within the engine's
``max_batch_rows`` / ``max_batch_frames``. Results do not depend on the stagger (the engine's
batches are exact). Other engines render the lines one after another.

Every line is checked before anything is synthesized; problems are reported together with their
line numbers as a `ConfigError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chunker import SentenceChunker
from engine.audio import SegmentShaper
from engine.base import BatchEngine, BatchItem, Engine, EngineError, SynthOptions
from stream_server.config import AppConfig
from stream_server.errors import ConfigError

_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_KEYS = {"id", "text", "voice", "seed", "speed"}


@dataclass(frozen=True)
class BatchLine:
    id: str
    text: str
    voice: str
    options: SynthOptions


@dataclass
class _LineState:
    line: BatchLine
    items: list[BatchItem] = field(default_factory=list)
    chunks: dict[int, list[np.ndarray]] = field(default_factory=dict)  # segment -> audio chunks


def parse_lines(raw: str, *, voices: set[str], default_voice: str,
                defaults: SynthOptions) -> list[BatchLine]:
    """Parse and check a JSON-lines batch file; raise ConfigError listing every bad line."""
    lines: list[BatchLine] = []
    errors: list[str] = []
    seen: set[str] = set()
    for no, text in enumerate(raw.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = _parse_line(text, voices, default_voice, defaults)
        except ValueError as exc:
            errors.append(f"line {no}: {exc}")
            continue
        if line.id in seen:
            errors.append(f"line {no}: duplicate id {line.id!r}")
            continue
        seen.add(line.id)
        lines.append(line)
    if errors:
        shown = "\n  ".join(errors[:20]) + ("\n  ..." if len(errors) > 20 else "")
        raise ConfigError(f"{len(errors)} bad line(s) in the batch file:\n  {shown}")
    if not lines:
        raise ConfigError("the batch file has no lines")
    return lines


def _parse_line(text: str, voices: set[str], default_voice: str,
                defaults: SynthOptions) -> BatchLine:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
    ident, body = obj.get("id"), obj.get("text")
    if not isinstance(ident, str) or not ident:
        raise ValueError('"id" must be a non-empty string')
    if not _ID_RE.fullmatch(ident):
        raise ValueError(f'"id" {ident!r} is not a safe file name (letters, digits, . _ -; '
                         "not starting with '.'; at most 128)")
    if not isinstance(body, str) or not body.strip():
        raise ValueError('"text" must be a non-empty string')
    voice = obj.get("voice", default_voice)
    if not isinstance(voice, str) or voice not in voices:
        raise ValueError(f"unknown voice {voice!r}")
    seed = obj.get("seed", defaults.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError('"seed" must be an integer')
    speed = obj.get("speed", defaults.speed)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)):
        raise ValueError('"speed" must be a number')
    options = SynthOptions(speed=float(speed), seed=seed, nfe=defaults.nfe,
                           cfg_strength=defaults.cfg_strength)
    try:
        options.validate()
    except EngineError as exc:
        raise ValueError(str(exc)) from None
    return BatchLine(ident, body, voice, options)


def _segments(text: str, config: AppConfig) -> list[str]:
    chunker = SentenceChunker(config.chunker)
    return [s.text for s in chunker.push(text) + chunker.flush()]


def _pick(items: Sequence[BatchItem], max_rows: int, max_frames: int) -> list[BatchItem]:
    """Oldest first, within the engine's limits (one item always fits)."""
    chosen: list[BatchItem] = []
    longest = 0
    for it in items:
        n = max(longest, it.n_frames)
        if len(chosen) >= max_rows:
            break
        if chosen and (len(chosen) + 1) * n > max_frames:
            continue
        chosen.append(it)
        longest = n
    return chosen


def synthesize_batch(engine: BatchEngine, lines: Sequence[BatchLine], config: AppConfig,
                     stagger: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Run every line through the engine's steps; returns (audio, segment mels) per line."""
    if stagger < 0:
        raise ConfigError("--stagger-steps must be >= 0")
    states: list[_LineState] = []
    pending = list(lines)
    steps = 0
    next_join = 0
    try:
        while pending or any(it.phase != "done" for st in states for it in st.items):
            while pending and (stagger == 0 or steps >= next_join):
                line = pending.pop(0)
                st = _LineState(line)
                for seg in _segments(line.text, config):
                    st.items.append(engine.open_item(seg, line.voice, line.options))
                    st.chunks[len(st.items) - 1] = []
                states.append(st)
                next_join = steps + stagger
                if stagger:
                    break
            sampling = [it for st in states for it in st.items if it.phase == "sampling"]
            if sampling:
                engine.sample_step(_pick(sampling, engine.max_batch_rows, engine.max_batch_frames))
                steps += 1
            elif pending:
                next_join = steps  # nothing to wait for: the next line joins now
            vocoding = [(st, k, it) for st in states for k, it in enumerate(st.items)
                        if it.phase == "vocoding"]
            for lo in range(0, len(vocoding), engine.max_batch_rows):
                group = vocoding[lo : lo + engine.max_batch_rows]
                chunks = engine.vocode_step([it for _, _, it in group])
                for (st, k, _), chunk in zip(group, chunks, strict=True):
                    st.chunks[k].append(chunk)
    finally:
        for st in states:
            for it in st.items:
                engine.close_item(it)
    out = []
    for st in states:
        parts = [st.chunks[k] for k in range(len(st.items))]
        found = (getattr(it, "mel", None) for it in st.items)  # (T, 100) per segment, F5 only
        mels = [np.asarray(m) for m in found if m is not None]
        out.append((_shape(parts, engine, config), mels))
    return out


def _shape(segments: list[list[np.ndarray]], engine: Engine, config: AppConfig) -> np.ndarray:
    audio = config.audio
    shaper = SegmentShaper(engine.sample_rate, audio.fade_in_ms, audio.fade_out_ms, audio.pause_ms)
    parts: list[np.ndarray] = []
    for chunks in segments:
        parts.extend(shaper.process(c) for c in chunks)
        parts.append(shaper.finish())
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return joined.astype(np.float32, copy=False)


def run_batch(args: Any, engine: Engine, config: AppConfig) -> int:
    """The ``--batch`` mode of ``synth``: read, check, render, write; prints one summary line."""
    import time

    import soundfile as sf

    from stream_server.tools.synth import render

    if not args.out_dir:
        raise ConfigError("--batch needs --out-dir")
    try:
        raw = Path(args.batch).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {args.batch}: {exc}") from None
    defaults = SynthOptions(speed=args.speed, seed=args.seed)
    voices = {v.name for v in engine.voices()}
    lines = parse_lines(raw, voices=voices, default_voice=args.voice or engine.default_voice,
                        defaults=defaults)
    out_dir = Path(args.out_dir)
    mel_dir = Path(args.mel_out_dir) if args.mel_out_dir else out_dir
    for d in (out_dir, mel_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {d}: {exc.strerror}") from None
    t0 = time.perf_counter()
    if isinstance(engine, BatchEngine):
        results = synthesize_batch(engine, lines, config, args.stagger_steps)
    else:
        results = []
        for line in lines:
            r = render(line.text, engine, config, line.voice, line.options, keep_mel=True)
            results.append((r.audio, r.mels))
    synth_s = time.perf_counter() - t0
    total_s = 0.0
    for line, (audio, mels) in zip(lines, results, strict=True):
        sf.write(out_dir / f"{line.id}.wav", audio, engine.sample_rate, subtype="PCM_16")
        if mels:
            np.save(mel_dir / f"{line.id}.npy", np.concatenate(mels, axis=0).astype(np.float32))
        total_s += audio.shape[0] / engine.sample_rate
    rtf = synth_s / total_s if total_s else 0.0
    print(f"wrote {len(lines)} line(s) to {out_dir}: {total_s:.2f} s of audio, engine {engine.name}, "
          f"synthesis {synth_s:.2f} s, RTF {rtf:.3f}")
    return 0
