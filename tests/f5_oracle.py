"""Lean import of the reference F5-TTS implementation (PyPI ``f5-tts``), used only as a test oracle.

Importing ``f5_tts.model`` normally pulls in the trainer (wandb, accelerate, datasets, ...). We
register an empty package object for ``f5_tts.model`` whose ``__path__`` is the real folder, so only
the backbone / CFM / utils modules load (F5_FACTS.md section 8).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jieba
import numpy as np
import pytest
import soundfile as sf
import torch


def _no_librosa(*_: Any, **__: Any) -> Any:
    raise RuntimeError("librosa is not installed (the reference's BigVGAN mel needs it)")


def _install_lean_model_package() -> None:
    if "f5_tts.model" in sys.modules:
        return
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("reference f5-tts is not installed (make test installs it)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("f5_tts.model")
    pkg.__path__ = [os.path.join(root, "model")]
    sys.modules["f5_tts.model"] = pkg
    if importlib.util.find_spec("librosa") is None:
        # Only the reference's BigVGAN mel uses librosa (never called here); the GPU check's
        # wheels leave it out (it needs numba), so a stub stands in.
        filters = types.ModuleType("librosa.filters")
        filters.mel = _no_librosa  # type: ignore[attr-defined]
        librosa = types.ModuleType("librosa")
        librosa.__path__ = []
        librosa.filters = filters  # type: ignore[attr-defined]
        sys.modules.update({"librosa": librosa, "librosa.filters": filters})


def reference_module(name: str) -> Any:
    """Import ``f5_tts.<name>`` (e.g. "model.backbones.dit", "model.cfm", "model.utils")."""
    _install_lean_model_package()
    return importlib.import_module(f"f5_tts.{name}")


def import_pydub() -> bool:
    """Import pydub (the reference's audio library, test extra) if it is installed, ignoring its
    import-time warnings: ``audioop`` is deprecated, and ffmpeg is missing (PCM WAV needs none)."""
    if importlib.util.find_spec("pydub") is None:
        return False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "Couldn't find ffmpeg", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid escape sequence", SyntaxWarning)
        warnings.filterwarnings("ignore", "invalid escape sequence", DeprecationWarning)
        try:
            importlib.import_module("pydub")
        except ImportError:  # Python >= 3.13 has no audioop
            return False
    return True


def reference_infer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``f5_tts.infer.utils_infer`` with jieba segmentation and its unused heavy imports
    (transformers, the CFM class; pydub when it is not installed) stubbed out. Use in a fixture:
    ``yield from reference_infer(mp)``; the stub-bound copy is dropped from ``sys.modules``
    afterwards."""
    ref_utils = reference_module("model.utils")
    monkeypatch.setattr(ref_utils, "rjieba", types.SimpleNamespace(cut=jieba.cut))
    for name, attrs in {"pydub": ("AudioSegment", "silence"), "transformers": ("pipeline",)}.items():
        usable = import_pydub() if name == "pydub" else importlib.util.find_spec(name) is not None
        if not usable:
            stub = types.ModuleType(name)
            for attr in attrs:
                setattr(stub, attr, None)
            monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(sys.modules["f5_tts.model"], "CFM", object, raising=False)
    monkeypatch.delitem(sys.modules, "f5_tts.infer.utils_infer", raising=False)
    yield importlib.import_module("f5_tts.infer.utils_infer")
    sys.modules.pop("f5_tts.infer.utils_infer", None)


class SilentVocoder:
    """Stands in for Vocos when only the reference's inputs to the vocoder matter."""

    def decode(self, mel: torch.Tensor) -> torch.Tensor:  # (1, 100, T) -> (1, 256 * T) zeros
        return torch.zeros(1, mel.shape[-1] * 256)


def reference_preprocess(utils_infer: Any, path: str | Path, ref_text: str) -> tuple[np.ndarray, int, str]:
    """The reference's ``preprocess_ref_audio_text`` on a WAV file (needs the real pydub).

    Returns (int16 (m, channels) samples of the WAV it writes, that WAV's rate, its fixed ref_text).
    """
    with warnings.catch_warnings():  # pydub's export leaves its output file to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        out_path, text = utils_infer.preprocess_ref_audio_text(
            str(path), ref_text, show_info=lambda *_: None
        )
    try:
        pcm, rate = sf.read(out_path, dtype="int16", always_2d=True)
    finally:
        os.unlink(out_path)
    return pcm, int(rate), text
