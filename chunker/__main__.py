"""Inspect the chunker: ``python -m chunker [--max-chars N] [--first-min-chars N] [--min-chars N]
[--no-fast-start] [--keep-markdown] [--pieces K] [--seed S] < text``.

Prints one JSON object per segment and line: ``{"index": i, "text": "..."}``. With ``--pieces K``
the text is fed in K random pieces (seeded), which must print exactly what feeding it whole does.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence

from chunker.chunker import SentenceChunker
from chunker.config import ChunkerConfig, Segment


def split_pieces(text: str, pieces: int, seed: int) -> list[str]:
    """Cut ``text`` at ``pieces - 1`` distinct random places (fewer if the text is shorter)."""
    rng = random.Random(seed)
    n_cuts = min(pieces - 1, max(len(text) - 1, 0))
    cuts = sorted(rng.sample(range(1, len(text)), n_cuts)) if n_cuts else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def chunk(text: str, config: ChunkerConfig, pieces: int = 1, seed: int = 0) -> list[Segment]:
    chunker = SentenceChunker(config)
    out: list[Segment] = []
    for piece in split_pieces(text, pieces, seed):
        out.extend(chunker.push(piece))
    out.extend(chunker.flush())
    return out


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    d = ChunkerConfig()
    p = argparse.ArgumentParser(prog="python -m chunker", description=__doc__.split("\n\n")[0])
    p.add_argument("--max-chars", type=_positive, default=d.max_chars)
    p.add_argument("--first-min-chars", type=_positive, default=d.first_min_chars)
    p.add_argument("--min-chars", type=_positive, default=d.min_chars)
    p.add_argument("--max-buffer-chars", type=_positive, default=d.max_buffer_chars)
    p.add_argument("--no-fast-start", dest="fast_start", action="store_false")
    p.add_argument("--keep-markdown", dest="strip_markdown", action="store_false")
    p.add_argument("--pieces", type=_positive, default=1, help="feed the text in K random pieces")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ChunkerConfig(
            max_chars=args.max_chars,
            first_min_chars=args.first_min_chars,
            fast_start=args.fast_start,
            min_chars=args.min_chars,
            max_buffer_chars=args.max_buffer_chars,
            strip_markdown=args.strip_markdown,
        )
    except ValueError as e:
        parser.error(str(e))  # exits 2, like any other bad flag
    text = sys.stdin.read()
    for seg in chunk(text, config, args.pieces, args.seed):
        print(json.dumps({"index": seg.index, "text": seg.text}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
