"""SentenceChunker: the public streaming API (skeleton; rules land in the next commits)."""

from __future__ import annotations

import re

from chunker.config import ChunkerConfig, Segment

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


class SentenceChunker:
    """Turns streamed text into segments; ``push``/``flush``/``reset``."""

    def __init__(self, config: ChunkerConfig = ChunkerConfig()) -> None:
        self.config = config
        self._buf = ""
        self._next_index = 0

    @property
    def buffered(self) -> str:
        return self._buf

    def push(self, text: str) -> list[Segment]:
        if not isinstance(text, str):
            raise TypeError(f"SentenceChunker.push expects str, got {type(text).__name__}")
        self._buf += text
        return []

    def flush(self) -> list[Segment]:
        out = []
        for part in _SENTENCE_END.split(self._buf):
            part = " ".join(part.split())
            if any(ch.isalnum() for ch in part):
                out.append(Segment(self._next_index, part))
                self._next_index += 1
        self._buf = ""
        return out

    def reset(self) -> None:
        self._buf = ""
