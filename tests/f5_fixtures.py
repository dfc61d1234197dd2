"""Test helpers: reference F5-TTS models with random weights, and files in the official layouts.

- `reference_dit(cfg, seed)`: the reference (oracle) DiT with the same hyperparameters as our
  `F5ModelConfig`, every tensor randomised (the reference zero-inits AdaLN and output layers, which
  would hide bugs).
- `write_safetensors_checkpoint`, `write_pt_checkpoint`: DiT state dict -> official file layouts.
- `write_vocab`: the 2545-token vocab (read from the installed reference package at test time).
- `write_vocos_folder`: charactr/vocos-mel-24khz `config.yaml` + random `pytorch_model.bin`.
- `small_config(...)`: a reduced config that keeps every architectural feature.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.f5.config import F5ModelConfig
from tests.f5_oracle import reference_module

VOCOS_CONFIG_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args:
    sample_rate: 24000
    n_fft: 1024
    hop_length: 256
    n_mels: 100
    padding: center

backbone:
  class_path: vocos.models.VocosBackbone
  init_args:
    input_channels: 100
    dim: 512
    intermediate_dim: 1536
    num_layers: 8

head:
  class_path: vocos.heads.ISTFTHead
  init_args:
    dim: 512
    n_fft: 1024
    hop_length: 256
    padding: center
"""


def oracle(name: str) -> Any:
    """`tests.f5_oracle.reference_module`, ignoring x-transformers' import-time deprecation
    warning (``torch.jit.script`` in its attend module), which pytest would turn into an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        return reference_module(name)


def small_config(version: str = "v1", **overrides: Any) -> F5ModelConfig:
    """A reduced config (fast on CPU) with v1 or v0 (text mask off, RoPE on head 0) settings."""
    base = F5ModelConfig(dim=128, depth=2, heads=4, dim_head=32, text_dim=64, text_num_embeds=80)
    if version == "v0":
        base = replace(base, text_mask_padding=False, pe_attn_head=1)
    elif version != "v1":
        raise ValueError(version)
    return replace(base, **overrides)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter non-trivial random values, scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("text_embed.text_embed.weight"):
            std = 1.0  # embedding rows, like nn.Embedding's default
        elif p.dim() >= 2:
            std = 1.0 / math.sqrt(p[0].numel())  # fan-in
        else:
            std = 0.1  # biases, norms, GRN gamma/beta
        p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def reference_dit(cfg: F5ModelConfig, seed: int = 0) -> nn.Module:
    """The reference DiT for ``cfg`` in eval mode, fp32, all parameters random (seeded)."""
    dit_mod = oracle("model.backbones.dit")
    model = dit_mod.DiT(
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        dim_head=cfg.dim_head,
        ff_mult=cfg.ff_mult,
        mel_dim=cfg.mel_dim,
        text_num_embeds=cfg.text_num_embeds,
        text_dim=cfg.text_dim,
        text_mask_padding=cfg.text_mask_padding,
        conv_layers=cfg.conv_layers,
        pe_attn_head=cfg.pe_attn_head,
        qk_norm=None,
        attn_backend="torch",
        attn_mask_enabled=False,
    )
    return randomize_(model, seed).eval()


def reference_cfm(dit: nn.Module) -> nn.Module:
    """The reference CFM wrapper (vocos mel settings) around a reference DiT, eval mode."""
    cfm_mod = oracle("model.cfm")
    mel_kwargs = dict(
        n_fft=1024, hop_length=256, win_length=1024, n_mel_channels=100,
        target_sample_rate=24000, mel_spec_type="vocos",
    )
    return cfm_mod.CFM(transformer=dit, mel_spec_kwargs=mel_kwargs).eval()


def official_layout(
    state_dict: Mapping[str, Tensor], *, step: int = 1250000, with_mel_spec: bool = False
) -> dict[str, Tensor]:
    """DiT keys -> the keys of an official EMA checkpoint (``ema_model.transformer.*`` + scalars).

    ``with_mel_spec`` adds the two mel buffers that the F5TTS_Base (v0) files still carry.
    """
    out = {f"ema_model.transformer.{k}": v.detach().contiguous() for k, v in state_dict.items()}
    out["initted"] = torch.tensor(True)
    out["step"] = torch.tensor(step, dtype=torch.int64)
    if with_mel_spec:
        out["ema_model.mel_spec.mel_stft.mel_scale.fb"] = torch.zeros(513, 100)
        out["ema_model.mel_spec.mel_stft.spectrogram.window"] = torch.hann_window(1024)
    return out


def write_safetensors_checkpoint(
    state_dict: Mapping[str, Tensor], path: str | Path, *, with_mel_spec: bool = False
) -> Path:
    """Write a DiT state dict as an official ``model_*.safetensors`` (bare EMA dict)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(official_layout(state_dict, with_mel_spec=with_mel_spec), str(path))
    return path


def write_pt_checkpoint(state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write a DiT state dict as a legacy ``.pt`` (``{"ema_model_state_dict": ..., "step": ...}``)."""
    path = Path(path)
    ema = official_layout(state_dict, step=1200000)
    torch.save({"ema_model_state_dict": ema, "step": 1200000}, path)
    return path


def reference_vocab_path() -> Path:
    spec = importlib.util.find_spec("f5_tts")
    if spec is None or not spec.submodule_search_locations:
        import pytest

        pytest.skip("reference f5-tts is not installed (make test installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "infer" / "examples" / "vocab.txt"


def write_vocab(path: str | Path) -> Path:
    """Write the official 2545-token vocab.txt (index 0 = " "), copied from the reference package."""
    path = Path(path)
    path.write_bytes(reference_vocab_path().read_bytes())
    return path


def write_vocos_folder(folder: str | Path, seed: int = 0) -> Path:
    """A charactr/vocos-mel-24khz layout: config.yaml + pytorch_model.bin with random weights."""
    from vocos import Vocos

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(VOCOS_CONFIG_YAML, encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Vocos.from_hparams(str(folder / "config.yaml"))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder
