"""Where the F5-TTS checkpoint, its vocab and the Vocos vocoder live on disk (paths only).

Resolution order, per file: explicit paths from the config / CLI; then the Hugging Face cache,
looked up offline (no network); otherwise ``WeightsNotFoundError`` naming every missing file, the
repo it comes from, and where to put it. ``download`` fetches what is missing with
``huggingface_hub.hf_hub_download`` (used by ``stream-tts download``). Reading the files is the
loader's job (``engine.f5.loader``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, try_to_load_from_cache

from engine.base import WeightsNotFoundError
from engine.config import EngineConfig

F5_REPO = "SWivid/F5-TTS"
VOCOS_REPO = "charactr/vocos-mel-24khz"
VOCOS_FILES = ("config.yaml", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelFiles:
    """Files of one released F5 model inside the SWivid/F5-TTS repo."""

    checkpoint: str
    vocab: tuple[str, ...]  # candidates, first found wins


MODEL_FILES: dict[str, ModelFiles] = {
    "F5TTS_v1_Base": ModelFiles(
        "F5TTS_v1_Base/model_1250000.safetensors", ("F5TTS_v1_Base/vocab.txt",)
    ),
    # v0 uses the same 2545-token vocab as v1 (the package default); the v1 folder's copy is the
    # one known to be on the hub, so it comes first (and is the one downloaded).
    "F5TTS_Base": ModelFiles(
        "F5TTS_Base/model_1200000.safetensors",
        ("F5TTS_v1_Base/vocab.txt", "F5TTS_Base/vocab.txt"),
    ),
}


@dataclass(frozen=True)
class ResolvedWeights:
    """Local paths of everything the F5 engine loads."""

    checkpoint: Path  # model_*.safetensors or legacy .pt
    vocab: Path  # vocab.txt, one token per line
    vocoder_dir: Path  # folder with Vocos config.yaml + pytorch_model.bin


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time.

    ``huggingface_hub.constants.HF_HUB_CACHE`` is fixed at import; reading the variables here lets
    tests and users point ``HF_HUB_CACHE`` / ``HF_HOME`` elsewhere after start-up.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _model_files(cfg: EngineConfig) -> ModelFiles:
    try:
        return MODEL_FILES[cfg.model]
    except KeyError:
        raise WeightsNotFoundError(
            f"unknown model {cfg.model!r}; expected one of {sorted(MODEL_FILES)}"
        ) from None


def _cached(repo: str, filename: str, cache_dir: Path) -> Path | None:
    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _is_vocos_dir(folder: Path) -> bool:
    return all((folder / name).is_file() for name in VOCOS_FILES)


def _lookup(cfg: EngineConfig, cache_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Resolve what can be resolved locally; return (found paths, descriptions of what is missing)."""
    files = _model_files(cfg)
    found: dict[str, Path] = {}
    missing: list[str] = []

    if cfg.checkpoint:
        path = Path(cfg.checkpoint).expanduser()
        if path.is_file():
            found["checkpoint"] = path
        else:
            missing.append(f"checkpoint file {path} (from engine.checkpoint / --checkpoint) does not exist")
    elif (hit := _cached(F5_REPO, files.checkpoint, cache_dir)) is not None:
        found["checkpoint"] = hit
    else:
        missing.append(
            f"{F5_REPO} / {files.checkpoint}: put it in the HF cache or pass --checkpoint PATH "
            "(config key engine.checkpoint)"
        )

    if cfg.vocab:
        path = Path(cfg.vocab).expanduser()
        if path.is_file():
            found["vocab"] = path
        else:
            missing.append(f"vocab file {path} (from engine.vocab / --vocab) does not exist")
    else:
        # A vocab.txt next to an explicit checkpoint belongs to it; then the HF cache.
        beside = found["checkpoint"].parent / "vocab.txt" if "checkpoint" in found else None
        if beside is not None and beside.is_file():
            found["vocab"] = beside
        else:
            for candidate in files.vocab:
                if (hit := _cached(F5_REPO, candidate, cache_dir)) is not None:
                    found["vocab"] = hit
                    break
            else:
                missing.append(
                    f"{F5_REPO} / {files.vocab[0]}: put it in the HF cache, next to the checkpoint, "
                    "or pass --vocab PATH (config key engine.vocab)"
                )

    if cfg.vocoder:
        folder = Path(cfg.vocoder).expanduser()
        if _is_vocos_dir(folder):
            found["vocoder_dir"] = folder
        else:
            missing.append(
                f"vocoder folder {folder} (from engine.vocoder / --vocoder) must contain "
                + " and ".join(VOCOS_FILES)
            )
    else:
        hits = [_cached(VOCOS_REPO, name, cache_dir) for name in VOCOS_FILES]
        if all(hits) and len({h.parent for h in hits if h is not None}) == 1:
            assert hits[0] is not None
            found["vocoder_dir"] = hits[0].parent
        else:
            missing.append(
                f"{VOCOS_REPO} / {' + '.join(VOCOS_FILES)}: put them in the HF cache or in one "
                "folder passed as --vocoder DIR (config key engine.vocoder)"
            )
    return found, missing


def resolve_weights(cfg: EngineConfig) -> ResolvedWeights:
    """Find the model files without touching the network.

    Raises:
        WeightsNotFoundError: listing each missing file (repo + filename) and where to put it.
    """
    cache_dir = hub_cache_dir()
    found, missing = _lookup(cfg, cache_dir)
    if missing:
        lines = "\n".join(f"  - {m}" for m in missing)
        raise WeightsNotFoundError(
            f"F5 weights not found for {cfg.model}:\n{lines}\n"
            f"HF cache searched: {cache_dir}. Run `stream-tts download` to fetch them "
            f"(needs network), or use --engine espeak."
        )
    return ResolvedWeights(found["checkpoint"], found["vocab"], found["vocoder_dir"])


def download(cfg: EngineConfig, *, dest: str | Path | None = None) -> ResolvedWeights:
    """Fetch the files that do not resolve locally, then resolve again.

    With ``dest`` missing files go to that folder (``dest/F5TTS_v1_Base/...``, ``dest/vocos``) and
    the returned paths point there (pass them as --checkpoint/--vocab/--vocoder); without it they
    go to the HF cache, where ``resolve_weights`` finds them on its own.

    Raises:
        WeightsNotFoundError: when a download fails (offline, unknown file, ...).
    """
    files = _model_files(cfg)
    cache_dir = hub_cache_dir()
    found, _ = _lookup(cfg, cache_dir)  # explicit paths and cached files are not fetched again
    dest_path = Path(dest).expanduser() if dest is not None else None

    def fetch(repo: str, filename: str, sub: str = "") -> Path:
        try:
            if dest_path is None:
                got = hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir)
            else:
                got = hf_hub_download(repo_id=repo, filename=filename, local_dir=dest_path / sub)
        except Exception as exc:  # network, auth, missing file: all end the same way for the user
            raise WeightsNotFoundError(
                f"could not download {repo} / {filename}: {type(exc).__name__}: {exc}"
            ) from exc
        return Path(str(got))

    checkpoint = found.get("checkpoint") or fetch(F5_REPO, files.checkpoint)
    vocab = found.get("vocab") or fetch(F5_REPO, files.vocab[0])
    vocoder_dir = found.get("vocoder_dir")
    if vocoder_dir is None:
        paths = [fetch(VOCOS_REPO, name, "vocos") for name in VOCOS_FILES]
        vocoder_dir = paths[0].parent
    return ResolvedWeights(checkpoint, vocab, vocoder_dir)
