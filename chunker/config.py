"""Configuration of the sentence chunker and the segment type it produces.

All lengths are *weighted* characters: the UTF-8 byte length of the text, which is how F5-TTS
measures text when it estimates a duration (a CJK character counts 3, an ASCII letter 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ChunkerConfig:
    """Limits of the sentence chunker (frozen; validated on construction)."""

    # longest segment; a longer sentence is split at a clause mark, else a space, else between
    # CJK characters (a single word longer than this is kept whole)
    max_chars: int = 220
    # fast start: the first segment of an utterance is cut at the first clause boundary once it
    # holds at least this much, and is never shorter than this unless it is all the text at flush
    first_min_chars: int = 24
    fast_start: bool = True
    # later segments shorter than this are merged into the next one (F5-TTS slows down and
    # garbles very short texts; its duration rule treats texts under 10 bytes specially)
    min_chars: int = 10
    # safety valve: text with no boundary at all (one huge "word") is cut anywhere past this
    max_buffer_chars: int = 1000
    # drop LLM markdown markers (**, __, backticks, heading/list/quote markers, code fences)
    strip_markdown: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            want = bool if f.type in ("bool", bool) else int
            # bool is a subclass of int: reject True as a length and 1 as a flag
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"ChunkerConfig.{f.name} must be {want.__name__}, got {value!r}")
        if self.max_chars < 8:
            raise ValueError(f"ChunkerConfig.max_chars must be >= 8, got {self.max_chars}")
        for name in ("first_min_chars", "min_chars"):
            value = getattr(self, name)
            if not 1 <= value <= self.max_chars:
                raise ValueError(
                    f"ChunkerConfig.{name} must be in [1, max_chars={self.max_chars}], got {value}"
                )
        if self.max_buffer_chars < self.max_chars:
            raise ValueError(
                f"ChunkerConfig.max_buffer_chars ({self.max_buffer_chars}) must be >= "
                f"max_chars ({self.max_chars})"
            )


@dataclass(frozen=True)
class Segment:
    """One unit of synthesis.

    ``index`` counts 0, 1, 2, ... over the chunker's lifetime (flush and reset do not restart it);
    ``text`` is stripped, single-spaced, never empty, and holds at least one letter or digit.
    """

    index: int
    text: str
