"""Streaming text normalizer: whitespace collapsing and LLM-markdown stripping.

A character-at-a-time transducer, so feeding text in any pieces gives the same output as feeding
it whole (it holds back only what it cannot decide yet: a whitespace run, or a run of marker
characters whose meaning depends on the next character).

Output invariants (what the scanner relies on):
- no leading whitespace; a whitespace run becomes one " ", or one "\\n" if it held a line break
  (so paragraph breaks and single newlines look alike: both end segments);
- whitespace is written only before a visible character, so the output never ends in whitespace;
- control characters, zero-width characters and lone surrogates are dropped.

Markdown (when enabled): ``**``/``__`` runs and backticks are dropped anywhere; a single ``*`` or
``_`` is dropped when it touches a letter/digit on exactly one side (``*emphasis*.``) and kept
otherwise (``2*3``, ``a * b``, ``snake_case``); at line start ``#`` headings (1-6), ``-``/``+``/``*`` bullets, ``>``
quotes, horizontal rules (``---``, ``***``, ``___``, ``===``) and code-fence lines are dropped;
links ``[text](target)`` keep only their text, and other square brackets are dropped.
"""

from __future__ import annotations

import unicodedata

_NEWLINES = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")
# marker characters held as a run until the next character tells what they mean
_EMPHASIS = frozenset("*_")
_LINE_START_RUNS = frozenset("#-+=*_`")
_BULLETS = frozenset("-+*")
_RULES = frozenset("-*_=")

_WS_NONE, _WS_SPACE, _WS_NEWLINE = 0, 1, 2
_MAX_LINK = 256  # longest link target held back; a longer "(..." is text


class TextNormalizer:
    """Char-level transducer; ``feed`` returns the output that is now final, ``finish`` the rest."""

    def __init__(self, strip_markdown: bool = True) -> None:
        self._md = strip_markdown
        self._init_state()

    def _init_state(self) -> None:
        self._out: list[str] = []
        self._last = ""  # last visible character written ("" at start, "\n" after a newline)
        self._ws = _WS_NONE  # pending whitespace run
        self._line_start = True  # nothing visible written on this line yet
        self._skip_line = False  # inside a code-fence line: drop until the line break
        self._run_ch = ""  # held marker run: its character, length, and what preceded it
        self._run_len = 0
        self._run_at_line_start = False
        self._run_after_word = False  # the run touches a letter/digit on its left
        self._after_bracket = False  # just dropped a "]": a "(" now opens a link target
        self._link: list[str] | None = None  # held link target "(..." while inside one

    @property
    def pending(self) -> str:
        """Input held back, undecided (diagnostics)."""
        link = "(" + "".join(self._link) if self._link is not None else ""
        return self._run_ch * self._run_len + link

    def feed(self, text: str) -> str:
        for ch in text:
            self._feed_char(ch)
        out = "".join(self._out)
        self._out.clear()
        return out

    def finish(self) -> str:
        """Decide everything held (end of input) and return to the start-of-text state."""
        if self._link is not None:
            self._replay_link()
        if self._run_len:
            self._end_run("")
        out = "".join(self._out)
        self._init_state()
        return out

    # --- internals -------------------------------------------------------------------------

    def _feed_char(self, ch: str) -> None:
        if ch in _ZERO_WIDTH or "\ud800" <= ch <= "\udfff":
            return
        if self._md:
            # markdown links "[text](target)" are read as "text": brackets are dropped, and a
            # "(...)" right after "]" is held (bounded) and dropped if it closes before any space
            if self._link is not None:
                if ch == ")":
                    self._link = None
                    return
                if ch.isspace() or len(self._link) >= _MAX_LINK:
                    self._replay_link()
                else:
                    self._link.append(ch)
                    return
            elif self._after_bracket:
                self._after_bracket = False
                if ch == "(":
                    self._link = []
                    return
            if ch == "[":
                return
            if ch == "]":
                self._after_bracket = True
                return
        self._feed_text_char(ch)

    def _replay_link(self) -> None:
        """Not a link target after all: feed the held "(..." as ordinary text."""
        held = "(" + "".join(self._link or [])
        self._link = None
        for c in held:
            self._feed_char(c)

    def _feed_text_char(self, ch: str) -> None:
        if ch in _NEWLINES or ch.isspace():
            if self._run_len:
                self._end_run(" ")
            if ch in _NEWLINES:
                self._ws = _WS_NEWLINE
                self._line_start = True
                self._skip_line = False
            elif self._ws == _WS_NONE:
                self._ws = _WS_SPACE
            return
        if unicodedata.category(ch) == "Cc":
            return
        if self._skip_line:
            return
        if self._run_len:
            if ch == self._run_ch:
                self._run_len += 1
                return
            self._end_run(ch)
            if self._skip_line:
                return
        if self._md and (
            ch in _EMPHASIS or ch == "`" or (self._line_start and ch in _LINE_START_RUNS)
        ):
            self._run_ch = ch
            self._run_len = 1
            self._run_at_line_start = self._line_start
            self._run_after_word = (
                not self._line_start and self._ws == _WS_NONE and self._last.isalnum()
            )
            return
        if self._md and self._line_start and ch == ">":
            return  # block quote marker; what follows is still at line start
        self._write(ch)

    def _write(self, text: str) -> None:
        if self._ws != _WS_NONE and self._last not in ("", "\n"):
            self._out.append("\n" if self._ws == _WS_NEWLINE else " ")
            self._last = self._out[-1]
        self._ws = _WS_NONE
        self._out.append(text)
        self._last = text[-1]
        self._line_start = False

    def _end_run(self, nxt: str) -> None:
        """Decide the held marker run; ``nxt`` is the next character, " " for whitespace, "" for end."""
        ch, n = self._run_ch, self._run_len
        self._run_ch, self._run_len = "", 0
        next_blank = nxt in ("", " ")
        if self._run_at_line_start:
            if ch == "#" and n <= 6 and next_blank:
                return  # heading marker
            if ch in _BULLETS and n == 1 and nxt == " ":
                return  # bullet
            if ch in _RULES and n >= 3 and next_blank:
                return  # horizontal rule / setext underline
            if ch == "`" and n >= 3:
                self._skip_line = True  # code fence: drop its info string too
                return
        if ch == "`":
            return
        if ch in _EMPHASIS:
            if n >= 2:
                return
            # a lone marker touching a word on exactly one side is emphasis ("*word*.",
            # "(_word_)"); touching words on both sides or neither, it is text ("2*3", "a * b")
            if self._run_after_word != nxt.isalnum():
                return
        self._write(ch * n)
