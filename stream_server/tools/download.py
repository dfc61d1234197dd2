"""``stream-tts download``: fetch the F5-TTS checkpoint, its vocab and the Vocos vocoder.

Without ``--dest`` the files go to the Hugging Face cache, where ``--engine f5|auto`` finds them
with no further flags; with ``--dest DIR`` they go to DIR and the command prints the flags to use.
"""

from __future__ import annotations

import argparse
import sys

from engine.base import WeightsNotFoundError
from engine.config import EngineConfig
from engine.f5.weights import MODEL_FILES, download, hub_cache_dir


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=EngineConfig.model, choices=sorted(MODEL_FILES),
        help="which released F5-TTS model (default: %(default)s)",
    )
    p.add_argument("--dest", default=None, help="folder to put the files in (default: the HF cache)")


def run(args: argparse.Namespace) -> int:
    cfg = EngineConfig(engine="f5", model=args.model)
    where = args.dest or f"the Hugging Face cache ({hub_cache_dir()})"
    print(f"fetching {args.model} and Vocos into {where} ...", flush=True)
    try:
        got = download(cfg, dest=args.dest)
    except WeightsNotFoundError as exc:
        print(f"stream-tts download: {exc}", file=sys.stderr)
        print(
            "stream-tts download: are you offline? Copy the files by hand instead "
            "(see `stream-tts serve --engine f5` for the list).",
            file=sys.stderr,
        )
        return 1
    print(f"checkpoint: {got.checkpoint}")
    print(f"vocab:      {got.vocab}")
    print(f"vocoder:    {got.vocoder_dir}")
    if args.dest:
        print(
            f"use: --checkpoint {got.checkpoint} --vocab {got.vocab} --vocoder {got.vocoder_dir}"
        )
    else:
        print("found automatically by --engine f5 / auto")
    return 0
