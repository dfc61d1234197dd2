"""All F5-TTS / Vocos weight file I/O: checkpoints, vocab, vocoder (F5_FACTS.md sections 3, 6).

Checkpoints are adapted once here (prefix stripping, strict key/shape check, q/k/v fusion, dtype
cast) so the model code never juggles keys or dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.base import CheckpointError, WeightsNotFoundError
from engine.f5.config import F5ModelConfig
from engine.f5.model import DiT

if TYPE_CHECKING:
    import vocos

_EMA_PREFIX = "ema_model."
_DIT_PREFIX = "transformer."
_IGNORED_KEYS = frozenset({"initted", "step"})
_IGNORED_PREFIXES = ("mel_spec.",)  # old files carry the mel filterbank/window; we rebuild them
_MAX_NAMED = 8
# kept in fp32 at any dtype: RoPE angles (positions > 2048 are not exact in fp16) and the text
# encoder (runs once per sample; its GRN sums over the whole sequence)
_FP32_CHILDREN = frozenset({"rotary_embed", "text_embed"})  # how many offending keys an error message lists


def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def load_f5_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an official F5-TTS checkpoint and return the DiT state dict (keys without prefixes).

    Accepts ``.safetensors`` (bare ``ema_model.*`` tensors plus ``initted``/``step``) and legacy
    ``.pt``/``.pth``/``.ckpt`` (a dict with ``ema_model_state_dict``; read with
    ``weights_only=True``). Ignores ``initted``, ``step`` and ``ema_model.mel_spec.*``.
    Raises WeightsNotFoundError if the file is missing, CheckpointError if it is not an F5
    checkpoint (naming the offending keys).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"F5-TTS checkpoint not found: {path}")
    raw: Mapping[str, object]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
            inner = obj.get("ema_model_state_dict", obj)
            if not isinstance(inner, dict):
                raise CheckpointError(f"{path}: 'ema_model_state_dict' is not a dict")
            raw = inner
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, pickle refused by weights_only, ...
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc

    out: dict[str, Tensor] = {}
    foreign: list[str] = []
    for key, value in raw.items():
        name = key[len(_EMA_PREFIX):] if key.startswith(_EMA_PREFIX) else key
        if name in _IGNORED_KEYS or name.startswith(_IGNORED_PREFIXES):
            continue
        if not name.startswith(_DIT_PREFIX) or not isinstance(value, Tensor):
            foreign.append(key)
            continue
        out[name[len(_DIT_PREFIX):]] = value
    if foreign:
        raise CheckpointError(f"{path}: unexpected keys (not an F5-TTS EMA model): {_names(foreign)}")
    if not out:
        raise CheckpointError(f"{path}: no 'ema_model.transformer.*' tensors found")
    return out


def expected_shapes(cfg: F5ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape of a DiT with this config (computed without allocating weights)."""
    with torch.device("meta"):
        model = DiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(cfg: F5ModelConfig, state_dict: Mapping[str, Tensor]) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_names(misshaped)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config; " + "; ".join(problems))


def build_model(
    cfg: F5ModelConfig,
    state_dict: Mapping[str, Tensor] | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    fuse_qkv: bool | None = None,
) -> DiT:
    """Build an inference-ready DiT: strict load, q/k/v fused, cast, on ``device``, eval mode.

    ``state_dict`` None builds random weights from ``seed`` (for ``--random-weights`` benchmarks)
    without touching the global RNG. Casting to ``dtype`` leaves the RoPE ``inv_freq`` and the
    text encoder (run once per sample) in fp32; every per-step matmul runs in ``dtype``.
    ``fuse_qkv`` None = fuse the q/k/v projections into one matmul on accelerators only (on CPU
    three matmuls measured ~10 % faster than the fused one: the 3x wider output leaves the cache).
    """
    if state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DiT(cfg)
    else:
        check_state_dict(cfg, state_dict)
        with torch.device("meta"):
            model = DiT(cfg)
        # assign=True adopts the loaded tensors instead of copying into meta storage
        model.load_state_dict(
            {k: v.float() for k, v in state_dict.items()}, strict=True, assign=True
        )
    if fuse_qkv if fuse_qkv is not None else torch.device(device).type != "cpu":
        model.fuse_qkv()
    model.to(device=device)
    for name, child in model.named_children():
        if name not in _FP32_CHILDREN:
            child.to(dtype=dtype)
    model.eval().requires_grad_(False)
    return model


def load_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt -> {token: id}; one token per line, line index = id (only the newline stripped).

    Index 0 must be the single space token (the reference asserts this). CRLF files read the same.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"F5-TTS vocab not found: {path}")
    vocab: dict[str, int] = {}
    # text mode splits lines on \n, \r\n and \r only (str.splitlines would also split on
    # characters such as U+2028 that could be tokens)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line[:-1] if line.endswith("\n") else line] = i
    if vocab.get(" ") != 0:
        raise CheckpointError(f"{path}: the first vocab line must be a single space")
    return vocab


def load_vocos(folder: str | Path, device: torch.device | str = "cpu") -> vocos.Vocos:
    """Vocos from ``folder/config.yaml`` + ``folder/pytorch_model.bin``, strict, fp32, eval mode."""
    from vocos import Vocos

    folder = Path(folder)
    config, weights = folder / "config.yaml", folder / "pytorch_model.bin"
    missing = [p.name for p in (config, weights) if not p.is_file()]
    if missing:
        raise WeightsNotFoundError(
            f"Vocos files missing in {folder}: {', '.join(missing)} "
            "(download them from the Hugging Face repo charactr/vocos-mel-24khz)"
        )
    try:
        model = Vocos.from_hparams(str(config))
    except Exception as exc:
        raise CheckpointError(f"{config}: not a valid Vocos config: {exc}") from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise CheckpointError(f"{weights}: does not match {config.name}: {exc}") from exc
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
