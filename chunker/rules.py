"""Sentence-boundary rules: where a sentence may end, and where a long one may be split.

Pure functions over the scanner's normalized buffer (see ``chunker.normalize``: single spaces,
"\\n" for line breaks). A rule that needs a character not yet seen answers ``WAIT``; with
``final=True`` the end of the buffer is the end of the input.

Choices made here (the rules an abbreviation list cannot settle):
- ". " and "… " end a sentence unless the next word starts lowercase or with ``, ; :`` (so
  "p.m. today" and "... and then" go on, "5 p.m. Then" and "Wait... What?" cut).
- "! " and "? " end a sentence before anything but ``, ; :`` (LLM text capitalises; "Yahoo!" loses).
- A period after a title (Dr. Mr. Mrs. Ms. Prof. St. ...), after "vs", "e.g", "i.e", "cf", after
  an upper-case dotted initialism (U.S., U.K.) or a single capital (the initials of
  "J. R. R. Tolkien"), never cuts; "No. 5" / "Fig. 3" / "p. 12" / "Oct. 2024" do not cut before a digit;
  "etc." cuts before an upper-case word; a number at line start ("1. Preheat") is a list marker.
- No space after ``.`` means no sentence end (3.14, $29.95, v1.2.3, x.com, a@b.org, U.S.A), except
  before a CJK character ("Hello.你好").
"""

from __future__ import annotations

import re

from chunker.text import (
    CJK_CLAUSE,
    CJK_ENDERS,
    CLOSERS,
    CONTINUERS,
    EM_DASH,
    EN_DASH,
    ENDERS,
    LATIN_CLAUSE,
    is_cjk,
)

WAIT = -2  # the decision needs a character not yet seen
NO = -1  # no boundary here
MAX_RUN = 8  # longest ender run (and closer run) read as one sentence end

_TITLES = frozenset(
    # titles before a name; words that often end sentences ("rep", "gov") are left out
    "dr mr mrs ms mx prof st sr jr mt gen col capt lt sgt maj rev messrs mme mlle".split()
)
_NEVER_CUT = frozenset("vs e.g i.e cf viz a.k.a".split())
_BEFORE_DIGIT = frozenset(
    "no nos nr fig figs vol vols p pp ch sec art op eq approx ca "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()  # "Oct. 2024"
)
_INITIALISM = re.compile(r"(?:[A-Z]\.)+[A-Z]")
_OPENING = "\"'“‘([{「『（《"


def _token_before(buf: str, i: int) -> tuple[str, int]:
    """The word (letters, digits, inner dots/apostrophes/hyphens) ending at ``buf[i]``, and its start."""
    k = i
    while k > 0:
        c = buf[k - 1]
        if (c.isalnum() and not is_cjk(c)) or c in ".'’-":
            k -= 1
        else:
            break
    tok = buf[k:i]
    return tok.lstrip(".'’-"), k + (len(tok) - len(tok.lstrip(".'’-")))


def _period_continues(buf: str, i: int, nxt: str, line_start_at_0: bool) -> bool:
    """True when the single "." at ``buf[i]`` (followed by a space, then ``nxt``) is no sentence end."""
    tok, start = _token_before(buf, i)
    low = tok.lower()
    if low in _TITLES or low in _NEVER_CUT:
        return True
    if low in _BEFORE_DIGIT and nxt.isdigit():
        return True
    if _INITIALISM.fullmatch(tok) or (len(tok) == 1 and tok.isupper()):
        return True
    if tok.isdigit() and start == (buf.rfind("\n", 0, start) + 1):
        # a number alone at line start: an ordered-list marker ("1. Preheat the oven")
        return start > 0 or line_start_at_0
    return False


def sentence_end(buf: str, i: int, final: bool, line_start_at_0: bool) -> int:
    """Decide the ender run starting at ``buf[i]``.

    Returns the end (exclusive) of the sentence, closers included, or ``NO`` or ``WAIT``.
    """
    n = len(buf)
    j = i
    # runs are capped so that "!!!!..." forever cannot keep the scanner waiting: past the cap
    # the run simply is not a sentence end, and the length limits take over
    while j < n and buf[j] in ENDERS and j - i < MAX_RUN:
        j += 1
    run_end = j
    while j < n and buf[j] in CLOSERS and j - run_end < MAX_RUN:
        j += 1
    if j == n:
        return j if final else WAIT
    run = buf[i:run_end]
    nxt = buf[j]
    if any(c in CJK_ENDERS for c in run):
        return j
    if nxt == "\n":
        return j
    if nxt != " ":
        return j if is_cjk(nxt) else NO
    if j + 1 == n:
        # the normalizer never leaves trailing whitespace, so this only happens mid-stream
        return j if final else WAIT
    after = buf[j + 1]
    if after in CONTINUERS:
        return NO
    if after.islower() and ("!" not in run and "?" not in run):
        return NO
    if run == "." and _period_continues(buf, i, after, line_start_at_0):
        return NO
    return j


def clause_end(buf: str, i: int, final: bool) -> int:
    """Decide whether the clause mark at ``buf[i]`` is a clause boundary (fast start).

    Returns the end (exclusive) of the clause, or ``NO`` or ``WAIT``.
    """
    ch = buf[i]
    if ch in CJK_CLAUSE or ch == EM_DASH:
        return i + 1
    if ch in LATIN_CLAUSE or ch == EN_DASH:
        if ch == EN_DASH and (i == 0 or buf[i - 1] != " "):
            return NO  # "1990–2000" is a range, not a pause
        if i + 1 == len(buf):
            return NO if final else WAIT
        return i + 1 if buf[i + 1] == " " else NO
    return NO


def is_clause_mark(ch: str) -> bool:
    return ch in LATIN_CLAUSE or ch in CJK_CLAUSE or ch == EM_DASH or ch == EN_DASH


def break_class(buf: str, p: int) -> int:
    """How good a split is between ``buf[p-1]`` and ``buf[p]`` for an over-long sentence.

    1 = after clause punctuation, 2 = at a space, 3 = between CJK characters, 0 = not allowed
    (inside a word). Requires ``0 < p < len(buf)``.
    """
    a, b = buf[p - 1], buf[p]
    if b == " " or b == "\n":
        if (
            a in LATIN_CLAUSE
            or a in CJK_CLAUSE
            or a == EM_DASH
            or (a == EN_DASH and p >= 2 and buf[p - 2] == " ")
        ):
            return 1
        return 2
    if a in CJK_CLAUSE or a in CJK_ENDERS or a == EM_DASH:
        return 1 if b not in CLOSERS else 0
    if a == " " or a == "\n":
        return 0  # split at the space itself, not after it
    if (
        (is_cjk(a) or is_cjk(b))
        and b not in CLOSERS
        and b not in CJK_CLAUSE
        and b not in ENDERS
        and a not in _OPENING
    ):
        return 3
    return 0
