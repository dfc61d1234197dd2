"""SentenceChunker: streamed text in, speakable segments out.

Pipeline: ``TextNormalizer`` (whitespace, markdown) -> a left-to-right scanner over the normalized
buffer that decides each candidate boundary from text already seen plus a bounded lookahead (at
most two characters past an ender run and its closers). When the lookahead is not there yet the
scanner stops and resumes at the same place on the next ``push``. Every decision is therefore a
function of the text alone, never of how it was cut into pieces: feeding a text whole or one
character at a time, then ``flush()``, yields the same segments.

Segment rules (all lengths weighted: UTF-8 bytes):
- a segment ends at a sentence end (see ``chunker.rules``) or a line break;
- fast start: the first segment of an utterance also ends at the first clause boundary
  (", " "; " ": " " – " "—" "，" "、" "：") once it holds ``first_min_chars``; before that,
  sentence ends and line breaks do not cut (tiny openers like "Hi." merge forward);
- later segments shorter than ``min_chars`` merge forward the same way (no other packing, so a
  finished sentence never waits for the next one);
- a line break that does not cut becomes a space;
- a segment that would exceed ``max_chars`` is split at the last clause boundary, else the last
  space, else between CJK characters, preferring a split that leaves at least a quarter of
  ``max_chars`` (and at least the segment minimum) on the left. ``max_chars`` wins over the
  minimums: when only a shorter split keeps the limit, the short piece is emitted. A single word
  longer than ``max_chars`` stays whole, up to ``max_buffer_chars``, beyond which the text is cut
  anywhere;
- text with nothing speakable (no letter or digit) never forms a segment of its own: it stays
  with the following text, and at flush it is dropped.
"""

from __future__ import annotations

from chunker.config import ChunkerConfig, Segment
from chunker.normalize import TextNormalizer
from chunker.rules import NO, WAIT, break_class, clause_end, is_clause_mark, sentence_end
from chunker.text import ENDERS, char_weight, is_speakable, weight

_DEFAULT_CONFIG = ChunkerConfig()  # frozen, so sharing one default instance is safe


class SentenceChunker:
    """Streaming sentence chunker (pure, synchronous, standard library only).

    ``push(text)`` appends text of any size and returns the segments that are now final;
    ``flush()`` ends the utterance and returns everything left; ``reset()`` drops buffered text.
    Both re-arm the fast start. Segment indices keep increasing across utterances.
    """

    def __init__(self, config: ChunkerConfig = _DEFAULT_CONFIG) -> None:
        if not isinstance(config, ChunkerConfig):
            raise TypeError(f"config must be a ChunkerConfig, got {type(config).__name__}")
        self.config = config
        self._norm = TextNormalizer(strip_markdown=config.strip_markdown)
        self._next_index = 0
        self._start_utterance()

    def _start_utterance(self) -> None:
        self._buf = ""  # normalized text not yet emitted
        self._pos = 0  # scan resumes here: every candidate before it is decided "no cut"
        self._pos_w = 0  # weight of buf[:pos]
        self._line_start = True  # buf[0] is at the start of a line
        self._first = True  # the next segment is the utterance's first (fast start)
        self._reset_split_cache()

    def _reset_split_cache(self) -> None:
        # positions 1.._nosplit_p of buf were searched for a split point and had none (one long
        # word): an over-long word is then searched once in total, not once per character
        self._nosplit_p = 0
        self._nosplit_w = 0

    @property
    def buffered(self) -> str:
        """Text not yet emitted (normalized, plus raw input the normalizer still holds)."""
        return self._buf + self._norm.pending

    def push(self, text: str) -> list[Segment]:
        if not isinstance(text, str):
            raise TypeError(f"SentenceChunker.push expects str, got {type(text).__name__}")
        self._buf += self._norm.feed(text)
        return self._drain(final=False)

    def flush(self) -> list[Segment]:
        self._buf += self._norm.finish()
        out = self._drain(final=True)
        text = self._clean(self._buf)
        if is_speakable(text):
            out.append(self._make(text))
        self._start_utterance()
        return out

    def reset(self) -> None:
        self._norm.finish()
        self._start_utterance()

    # --- scanning --------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while True:
            if self._pos == 0:
                self._strip_leading()
            cut = self._scan(final)
            if cut is None:
                return out
            text = self._clean(self._buf[:cut])
            if is_speakable(text):
                out.append(self._make(text))
            self._buf = self._buf[cut:]
            self._pos = self._pos_w = 0
            self._reset_split_cache()
            self._line_start = False

    def _strip_leading(self) -> None:
        stripped = self._buf.lstrip(" \n")
        if len(stripped) != len(self._buf):
            if "\n" in self._buf[: len(self._buf) - len(stripped)]:
                self._line_start = True
            self._buf = stripped

    def _min_chars(self) -> int:
        cfg = self.config
        return cfg.first_min_chars if (self._first and cfg.fast_start) else cfg.min_chars

    def _scan(self, final: bool) -> int | None:
        """The end of the next segment in ``self._buf``, or None when undecided (or none)."""
        cfg = self.config
        buf = self._buf
        n = len(buf)
        i, w = self._pos, self._pos_w
        clause_cuts = self._first and cfg.fast_start
        while i < n:
            ch = buf[i]
            cw = char_weight(ch)
            if w + cw > cfg.max_chars:
                cut = self._split_point(i)
                if cut is not None:
                    return cut
                if w + cw > cfg.max_buffer_chars and i > 0:
                    return i  # safety valve: no boundary at all, cut anywhere
            end = NO
            if ch == "\n":
                end = i
            elif ch in ENDERS and (i == 0 or buf[i - 1] not in ENDERS):
                end = sentence_end(buf, i, final, self._line_start)
            elif clause_cuts and is_clause_mark(ch):
                end = clause_end(buf, i, final)
            if end == WAIT:
                self._pos, self._pos_w = i, w
                return None
            if end > 0 and self._accept(end, over=w + cw > cfg.max_chars):
                return end
            w += cw
            i += 1
        self._pos, self._pos_w = i, w
        return None

    def _accept(self, end: int, over: bool) -> bool:
        """Whether ``buf[:end]`` may be emitted as a segment at a boundary."""
        text = self._clean(self._buf[:end])
        if not is_speakable(text):
            return False
        wt = weight(text)
        if wt < self._min_chars():
            return False
        # closers can push a sentence just past the limit: then let the length split decide,
        # unless we are already past it because the text holds no split point at all
        return wt <= self.config.max_chars or over

    def _split_point(self, i: int) -> int | None:
        """Where to split ``buf[:i+1]``, whose weight exceeds ``max_chars``; None if nowhere.

        Preference: the last clause boundary, else the last space, else the last CJK break, each
        leaving at least ``pref`` on the left; else the last break leaving the segment minimum;
        else the last break at all: ``max_chars`` wins over the minimums, so the only segment
        longer than ``max_chars`` is one word that is longer by itself.
        """
        buf = self._buf
        floor = self._min_chars()
        pref = max(floor, self.config.max_chars // 4)
        best: dict[int, int] = {}  # class -> last position with a left part >= pref
        fallback = None  # last break with a left part >= floor
        last = None  # last break
        w = self._nosplit_w
        for p in range(self._nosplit_p + 1, i + 1):
            w += char_weight(buf[p - 1])
            cls = break_class(buf, p)
            if not cls:
                continue
            last = p
            if w >= floor:
                fallback = p
                if w >= pref:
                    best[cls] = p
        for cls in (1, 2, 3):
            if cls in best:
                return best[cls]
        if last is None:
            self._nosplit_p, self._nosplit_w = i, w
        return fallback if fallback is not None else last

    # --- output ----------------------------------------------------------------------------

    @staticmethod
    def _clean(raw: str) -> str:
        return " ".join(raw.split())

    def _make(self, text: str) -> Segment:
        seg = Segment(self._next_index, text)
        self._next_index += 1
        self._first = False
        return seg
