"""``stream-tts bench-engine``: time the engine alone (no server), optionally against the reference.

Per run the text is cut into segments by the same chunker the server uses; each segment is
synthesized and its chunks consumed. Reported (medians over runs): per-stage time (frontend,
backbone steps, vocoder), RTF (synthesis time / audio time), first-segment TTFA (time from the
call to the first vocoded chunk of the first segment), and warm-up / compile time.

``--compare-reference`` runs the reference F5-TTS (PyPI ``f5-tts``, imported lean, without its
trainer) with the same weights, reference clip, text, total frames and NFE in this process, and
prints the speed ratio ours / reference (lower is better).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from chunker import ChunkerConfig, SentenceChunker
from engine.base import SynthOptions
from engine.config import EngineConfig

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, then takes a short nap in the sun."
# eSpeak reads this to make a synthetic reference clip; it is cut to --ref-seconds.
REF_TEXT = (
    "Some call me nature, others call me mother nature. I have been here for over four and a half "
    "billion years, twenty two thousand five hundred times longer than you."
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["f5", "espeak"], default="f5")
    p.add_argument("--model", default=EngineConfig.model, choices=["F5TTS_v1_Base", "F5TTS_Base"])
    p.add_argument("--checkpoint", default="", help="model_*.safetensors / .pt (default: resolve)")
    p.add_argument("--vocab", default="")
    p.add_argument("--vocoder", default="", help="Vocos folder (config.yaml + pytorch_model.bin)")
    p.add_argument("--random-weights", action="store_true", help="real-size model, random weights")
    p.add_argument("--nfe", type=int, default=EngineConfig.nfe)
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=EngineConfig.dtype)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=EngineConfig.compile,
                   help="torch.compile the backbone step (CUDA only)")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", default=None, help="text to speak (default: a short sentence)")
    p.add_argument("--text-file", default=None, help="UTF-8 file with the text to speak")
    p.add_argument("--voice", default=None, help="voice from --voices-dir (default: synthetic)")
    p.add_argument("--voices-dir", default=None)
    p.add_argument("--ref-seconds", type=float, default=5.0, help="synthetic reference length")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-reference", action="store_true")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--streams", default="", help="concurrent streams through the server's worker, "
                   "e.g. 1,4,8,16 (see stream_server/tools/bench_streams.py); omit for the single-stream bench")
    p.add_argument("--stagger-ms", type=float, default=0.0,
                   help="with --streams: start streams this far apart (0 = all at once)")
    p.add_argument("--compare-unbatched", action="store_true",
                   help="with --streams: also run each level one item per step (same arrivals)")


def _segments(args: argparse.Namespace) -> list[str]:
    if args.text_file:
        text = Path(args.text_file).read_text(encoding="utf-8")
    else:
        text = args.text or DEFAULT_TEXT
    chunker = SentenceChunker(ChunkerConfig())
    segments = [s.text for s in chunker.push(text) + chunker.flush()]
    if not segments:
        raise SystemExit("bench-engine: the text is empty")
    return segments


def _synthetic_voice(folder: Path, seconds: float) -> str:
    """Write voice ``bench`` (eSpeak reading REF_TEXT, cut to ``seconds``) into ``folder``."""
    text = REF_TEXT
    try:
        from engine.espeak import EspeakEngine

        espeak = EspeakEngine(EngineConfig())
        audio = np.concatenate(list(espeak.synthesize(text, espeak.default_voice, SynthOptions())))
        n = int(seconds * 24000)
        if audio.size > n:
            # keep the transcript roughly in proportion to the audio that is kept
            text = text[: max(10, round(len(text) * n / audio.size))].rsplit(" ", 1)[0]
            audio = audio[:n]
    except Exception:  # no eSpeak: a voiced-like tone with a proportional transcript
        t = np.arange(int(seconds * 24000)) / 24000
        audio = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2)
        text = REF_TEXT[: max(10, int(15 * seconds))].rsplit(" ", 1)[0]
    sf.write(folder / "bench.wav", audio.astype(np.float32), 24000, subtype="FLOAT")
    (folder / "bench.txt").write_text(text + ".", encoding="utf-8")
    return "bench"


class ReferenceUnavailable(Exception):
    pass


def _random_state_dict(model: str, seed: int) -> dict[str, torch.Tensor]:
    """Random DiT weights in the checkpoint key layout (before our q/k/v fusion)."""
    from engine.f5.config import model_config_for
    from engine.f5.model import DiT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiT(model_config_for(model)).state_dict()


def _reference_modules() -> tuple[Any, Any, Any]:
    """Import the reference's dit, cfm and utils modules without its trainer dependencies."""
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceUnavailable(
            "the reference F5-TTS is not installed; install it with "
            "`pip install --no-deps f5-tts==1.1.22 x-transformers torchdiffeq librosa rjieba`"
        )
    if "f5_tts.model" not in sys.modules:
        # an empty package object for f5_tts.model, so its __init__ (the trainer) never runs
        pkg = types.ModuleType("f5_tts.model")
        pkg.__path__ = [os.path.join(list(spec.submodule_search_locations)[0], "model")]
        sys.modules["f5_tts.model"] = pkg
    _stub_librosa_if_missing()
    try:
        return tuple(  # type: ignore[return-value]
            importlib.import_module(f"f5_tts.model.{name}")
            for name in ("backbones.dit", "cfm", "utils")
        )
    except ImportError as exc:
        raise ReferenceUnavailable(f"the reference F5-TTS cannot be imported: {exc}") from exc


def _stub_librosa_if_missing() -> None:
    """The reference imports ``librosa.filters.mel`` for its BigVGAN mel only; the Vocos path never
    calls it. Where librosa is not installed (the GPU check carries no numba/llvmlite), a stub
    module stands in and raises if it is ever called."""
    if "librosa" in sys.modules or importlib.util.find_spec("librosa") is not None:
        return

    def mel(*_: Any, **__: Any) -> Any:
        raise ReferenceUnavailable("librosa is not installed (the reference's BigVGAN mel needs it)")

    filters = types.ModuleType("librosa.filters")
    filters.mel = mel  # type: ignore[attr-defined]
    librosa = types.ModuleType("librosa")
    librosa.__path__ = []
    librosa.filters = filters  # type: ignore[attr-defined]
    sys.modules.update({"librosa": librosa, "librosa.filters": filters})


class ReferenceF5:
    """The reference CFM + Vocos decode with our engine's weights, device, dtype and voice."""

    def __init__(self, engine: Any, state_dict: dict[str, torch.Tensor] | None) -> None:
        from engine.f5.loader import load_f5_state_dict
        from engine.f5.weights import resolve_weights

        dit_mod, cfm_mod, utils = _reference_modules()
        self.engine = engine
        self.to_pinyin = utils.convert_char_to_pinyin
        mc = engine.model_config
        dit = dit_mod.DiT(
            dim=mc.dim, depth=mc.depth, heads=mc.heads, dim_head=mc.dim_head, ff_mult=mc.ff_mult,
            mel_dim=mc.mel_dim, text_num_embeds=mc.text_num_embeds, text_dim=mc.text_dim,
            text_mask_padding=mc.text_mask_padding, conv_layers=mc.conv_layers,
            pe_attn_head=mc.pe_attn_head, qk_norm=None, attn_backend="torch",
            attn_mask_enabled=False,
        )
        if state_dict is None:
            state_dict = load_f5_state_dict(resolve_weights(engine.cfg).checkpoint)
        dit.load_state_dict(state_dict, strict=True)
        mel_kwargs = dict(n_fft=1024, hop_length=256, win_length=1024, n_mel_channels=100,
                          target_sample_rate=24000, mel_spec_type="vocos")
        cfm = cfm_mod.CFM(transformer=dit, mel_spec_kwargs=mel_kwargs,
                          vocab_char_map=engine.frontend.vocab)
        # like the reference's load_checkpoint: the whole model in the engine's dtype
        self.cfm = cfm.to(engine.device, engine.dtype).eval()
        self.vocos = engine.vocoder.vocos

    def _sync(self) -> None:
        if str(self.engine.device).startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, segments: list[str], voice: str, seed: int, nfe: int) -> dict[str, float]:
        from engine.f5.frontend import estimate_frames

        ref = self.engine._reference(voice)
        audio = torch.from_numpy(np.array(ref.voice.audio)).unsqueeze(0).to(self.engine.device)
        cfg = self.engine.cfg
        stages = {"frontend_s": 0.0, "backbone_s": 0.0, "vocoder_s": 0.0}
        audio_s = 0.0
        t_start = time.perf_counter()
        for text in segments:
            t0 = time.perf_counter()
            tokens = self.to_pinyin([ref.voice.text + text])
            duration = estimate_frames(ref.ref_frames, ref.voice.text, text)
            t1 = time.perf_counter()
            out, _ = self.cfm.sample(
                cond=audio, text=tokens, duration=duration, steps=nfe,
                cfg_strength=cfg.cfg_strength, sway_sampling_coef=cfg.sway, seed=seed,
            )
            self._sync()
            t2 = time.perf_counter()
            mel = out.float()[:, ref.ref_frames :, :].permute(0, 2, 1)
            wave = self.vocos.decode(mel).cpu().numpy()
            t3 = time.perf_counter()
            stages["frontend_s"] += t1 - t0
            stages["backbone_s"] += t2 - t1
            stages["vocoder_s"] += t3 - t2
            audio_s += wave.shape[-1] / 24000
        total_s = time.perf_counter() - t_start
        return {**stages, "total_s": total_s, "audio_s": audio_s, "ttfa_s": float("nan"),
                "rtf": total_s / audio_s if audio_s else float("nan")}


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _run_ours(engine: Any, segments: list[str], voice: str, seed: int, nfe: int) -> dict[str, float]:
    stages = {"frontend_s": 0.0, "backbone_s": 0.0, "vocoder_s": 0.0}
    audio_s = 0.0
    ttfa_s = float("nan")
    t0 = time.perf_counter()
    for i, text in enumerate(segments):
        options = SynthOptions(seed=seed, nfe=nfe if engine.name == "f5" else None)
        for chunk in engine.synthesize(text, voice, options, fast_start=i == 0):
            if i == 0 and ttfa_s != ttfa_s:  # NaN check: first chunk of the first segment
                ttfa_s = time.perf_counter() - t0
            audio_s += chunk.size / engine.sample_rate
        stats = getattr(engine, "last_stats", None)
        if stats is not None:
            for key in stages:
                stages[key] += getattr(stats, key)
    total_s = time.perf_counter() - t0
    return {**stages, "total_s": total_s, "audio_s": audio_s, "ttfa_s": ttfa_s,
            "rtf": total_s / audio_s if audio_s else float("nan")}


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        print("bench-engine: --runs must be >= 1", file=sys.stderr)
        return 2
    segments = _segments(args)
    tmp = tempfile.TemporaryDirectory(prefix="bench-engine-")
    voices_dir = Path(args.voices_dir) if args.voices_dir else Path(tmp.name)
    cfg = EngineConfig(
        engine=args.engine, device=args.device, model=args.model, checkpoint=args.checkpoint,
        vocab=args.vocab, vocoder=args.vocoder, random_weights=args.random_weights,
        voices_dir=str(voices_dir), dtype=args.dtype, compile=args.compile, nfe=args.nfe,
    )
    t_build = time.perf_counter()
    state_dict = None
    if args.engine == "espeak":
        from engine.espeak import EspeakEngine

        engine: Any = EspeakEngine(cfg)
        voice = args.voice or engine.default_voice
    else:
        from engine.f5.engine import F5Engine

        voice = args.voice or _synthetic_voice(voices_dir, args.ref_seconds)
        if args.random_weights and args.compare_reference:
            # one set of random weights in the official key layout, shared with the reference
            state_dict = _random_state_dict(args.model, args.seed)
        engine = F5Engine(cfg, state_dict=state_dict)
    build_s = time.perf_counter() - t_build
    warmup_s = engine.warmup()
    print(f"engine {engine.name} on {engine.device}: built in {build_s:.1f} s, "
          f"warm-up {warmup_s:.1f} s{' (compile included)' if getattr(engine, 'compiled', False) else ''}")
    print(f"{len(segments)} segment(s); voice {voice!r}; nfe {args.nfe}; runs {args.runs}")
    if args.streams:
        from stream_server.tools import bench_streams

        code = bench_streams.run_from_args(args, engine, segments, voice,
                                           {"build_s": build_s, "warmup_s": warmup_s})
        tmp.cleanup()
        return code

    reference = None
    if args.compare_reference:
        if args.engine != "f5":
            print("bench-engine: --compare-reference needs --engine f5", file=sys.stderr)
            return 2
        try:
            reference = ReferenceF5(engine, state_dict)
        except ReferenceUnavailable as exc:
            print(f"bench-engine: {exc}", file=sys.stderr)
            return 1
        reference.run(segments[:1], voice, args.seed, args.nfe)  # its own warm-up

    ours: list[dict[str, float]] = []
    refs: list[dict[str, float]] = []
    for i in range(args.runs):
        # interleaved, and the order flipped every run, so background load and warm caches
        # affect both sides alike
        if reference is not None and i % 2 == 1:
            refs.append(reference.run(segments, voice, args.seed, args.nfe))
        ours.append(_run_ours(engine, segments, voice, args.seed, args.nfe))
        if reference is not None and i % 2 == 0:
            refs.append(reference.run(segments, voice, args.seed, args.nfe))
        line = f"run {i + 1}: ours {ours[-1]['total_s']:.3f} s (RTF {ours[-1]['rtf']:.3f}, " \
               f"TTFA {ours[-1]['ttfa_s'] * 1000:.0f} ms)"
        if refs:
            line += f"; reference {refs[-1]['total_s']:.3f} s " \
                    f"(ratio {ours[-1]['total_s'] / refs[-1]['total_s']:.3f})"
        print(line, flush=True)

    summary: dict[str, Any] = {
        "engine": engine.name, "device": engine.device, "nfe": args.nfe, "dtype": str(
            getattr(engine, "dtype", "")).replace("torch.", ""),
        "compiled": bool(getattr(engine, "compiled", False)), "runs": args.runs,
        "segments": len(segments), "build_s": build_s, "warmup_s": warmup_s,
        "ours": {k: _median([r[k] for r in ours]) for k in ours[0]},
    }
    o = summary["ours"]
    print(f"median: frontend {o['frontend_s'] * 1000:.1f} ms | backbone {o['backbone_s']:.3f} s | "
          f"vocoder {o['vocoder_s']:.3f} s | total {o['total_s']:.3f} s for {o['audio_s']:.2f} s audio"
          f" | RTF {o['rtf']:.3f} | first-segment TTFA {o['ttfa_s'] * 1000:.0f} ms")
    if refs:
        r = {k: _median([x[k] for x in refs]) for k in refs[0]}
        summary["reference"] = r
        summary["ratio_total"] = o["total_s"] / r["total_s"]
        summary["ratio_backbone"] = o["backbone_s"] / r["backbone_s"]
        # best of runs: on a shared machine background load only ever adds time
        summary["ratio_total_min"] = min(x["total_s"] for x in ours) / min(x["total_s"] for x in refs)
        print(f"reference median: frontend {r['frontend_s'] * 1000:.1f} ms | backbone "
              f"{r['backbone_s']:.3f} s | vocoder {r['vocoder_s']:.3f} s | total {r['total_s']:.3f} s")
        print(f"speed ratio ours/reference: total {summary['ratio_total']:.3f}, "
              f"backbone {summary['ratio_backbone']:.3f}; best-of-runs {summary['ratio_total_min']:.3f} "
              "(<= 1.0 means ours is not slower)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.cleanup()
    return 0

