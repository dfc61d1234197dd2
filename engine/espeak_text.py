"""Text planning for the eSpeak engine (pure functions, no library calls).

- ``script_voice``: the voice the ``auto`` voice reads a segment with, from the script it is written
  in (Chinese characters -> Mandarin, kana -> Japanese, Hangul -> Korean, Cyrillic -> Russian,
  Devanagari -> Hindi, else American English). eSpeak's Mandarin voice reads embedded English words
  as English (an English clause comes out as long as with en-us, where en-us spells every Chinese
  character out as "Chinese letter"), so mixed segments go to the non-Latin script's voice.
- ``plan_pieces``: how a segment is cut into the texts eSpeak synthesizes one call at a time.
  eSpeak cannot yield mid-call, so the first audio of a segment waits for the whole first call and
  the engine thread is held for the whole of every call (about 1 ms of CPU per second of speech on
  this machine, twice that under load). The segment is cut at clause punctuation first; then a
  clause that would take longer than the limit to speak is cut at word boundaries (jieba words in
  Chinese), the first piece of a segment kept short (about 1 s) for time to first audio. A piece cut
  inside a clause ends with a comma, which gives it eSpeak's rising "more to come" intonation
  instead of a sentence-final fall, and is synthesized without an end pause, so the joined audio
  reads as one phrase with a slight break.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import jieba

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = "\u3040-\u30ff\u31f0-\u31ff"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_CJK_PUNCT = "，。！？；：、"
_WIDE = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]")
_WIDE_RUN = re.compile(f"[{_HAN}{_KANA}{_HANGUL}]+")

# Speaking time estimates at eSpeak's default 175 wpm, measured on the bench texts: English about
# 0.046 s per character (spaces and punctuation included), Mandarin about 0.24 s per character.
_NARROW_S = 0.046
_WIDE_S = 0.24

MIN_CLAUSE_CHARS = 24  # shorter clauses are merged with the next (fewer calls, same speech)
PIECE_S = 4.0  # pieces speak at most about this long (bounds how long one call holds the engine)
_MIN_TAIL_S = 0.4  # a clause is not cut when the rest would be shorter than this

# a clause ends after , ; : ! ? followed by a space, or after CJK punctuation. Not after ".":
# "Dr. Smith" or "3 p.m. on" must not get a sentence pause; the chunker already cuts sentences.
_CLAUSE_END = re.compile(r"(?<=[,;:!?])\s+|(?<=[，。！？；：、])\s*")


@dataclass(frozen=True)
class Piece:
    """One eSpeak call: ``text`` and whether it ends with the pause its punctuation implies."""

    text: str
    end_pause: bool


# (script, voice) in order of precedence: kana before Han, since Japanese mixes both
_SCRIPT_VOICES = (
    (re.compile(f"[{_KANA}]"), "ja"),
    (re.compile(f"[{_HANGUL}]"), "ko"),
    (re.compile(f"[{_HAN}]"), "cmn"),
    (re.compile("[\u0400-\u04ff]"), "ru"),  # Cyrillic
    (re.compile("[\u0900-\u097f]"), "hi"),  # Devanagari
)


def script_voice(text: str) -> str:
    """The voice ``auto`` reads ``text`` with, from its script: ``ja``, ``ko``, ``cmn``, ``ru``,
    ``hi``, else ``en-us`` (Latin-script languages cannot be told apart by script)."""
    for script, voice in _SCRIPT_VOICES:
        if script.search(text):
            return voice
    return "en-us"


def estimate_s(text: str) -> float:
    """Rough speaking time of ``text`` in seconds at the default rate."""
    n_wide = len(_WIDE.findall(text))
    return n_wide * _WIDE_S + (len(text) - n_wide) * _NARROW_S


def split_clauses(text: str, min_chars: int = MIN_CLAUSE_CHARS) -> list[str]:
    """Cut ``text`` after clause punctuation into pieces of at least ``min_chars`` UTF-8 bytes (the
    last may be shorter). The pieces joined (with a space after Latin punctuation) give back the
    text up to whitespace."""
    pieces: list[str] = []
    current = ""
    for part in _CLAUSE_END.split(text):
        if not part:
            continue
        current = f"{current} {part}" if current and not _is_cjk_end(current) else current + part
        if len(current.encode("utf-8")) >= min_chars:  # UTF-8 bytes: a CJK character counts 3
            pieces.append(current)
            current = ""
    if current:
        if pieces and len(current.encode("utf-8")) < min_chars // 2:
            pieces[-1] += ("" if _is_cjk_end(pieces[-1]) else " ") + current
        else:
            pieces.append(current)
    return pieces


def _is_cjk_end(text: str) -> bool:
    return bool(text) and text[-1] in _CJK_PUNCT


# Words a phrase does not end on: no cut right after them ("check the | status" reads badly,
# "check | the status" does not). Lower-case English, and Mandarin words that bind to what follows.
_NO_CUT_AFTER = frozenset(
    "a an the of to in on at for with by from into about as and or but nor so than that which who "
    "whose whom my your our their his her its this these those is are was were be been am not no "
    "very more most some any each every all can could will would shall should may might must do "
    "does did has have had i you we they he she it there here mr mrs ms dr".split()
) | frozenset("很 太 最 更 还 都 也 就 才 又 再 在 把 被 给 对 和 跟 与 及 从 向 往 这 那 这个 那个 一 不 没 是 让 使 会 能 要".split())
_WORD = re.compile(r"\S+")


def _cut_points(clause: str) -> list[int]:
    """Offsets where ``clause`` may be cut: before a word that follows a space, and between jieba
    words inside runs of CJK characters; never after a number ("3:30 p.m."), an abbreviation's "."
    or a word in ``_NO_CUT_AFTER``."""
    points: list[int] = []
    words = list(_WORD.finditer(clause))
    for prev, word in pairwise(words):
        last = prev.group().strip("\"'()[]").lower()
        if not last or last[-1] == "." or any(c.isdigit() for c in last):
            continue
        if last in _NO_CUT_AFTER or _WIDE.match(word.group()) and _WIDE.match(last[-1]):
            continue  # (a space between two CJK words is no phrase boundary: jieba decides below)
        points.append(word.start())
    for run in _WIDE_RUN.finditer(clause):
        offset = run.start()
        for token in jieba.cut(run.group()):
            offset += len(token)
            if offset < run.end() and token not in _NO_CUT_AFTER:
                points.append(offset)
    return sorted(set(points))


def _cut_clause(clause: str, first_limit_s: float, limit_s: float) -> list[str]:
    """``clause`` in parts at cut points, each speaking for at most the limit where the words allow
    (the first part ``first_limit_s``, later parts ``limit_s``)."""
    if estimate_s(clause) <= first_limit_s:
        return [clause]
    parts: list[str] = []
    start = 0
    limit = first_limit_s
    points = [p for p in _cut_points(clause) if estimate_s(clause[p:]) >= _MIN_TAIL_S]
    while True:
        if estimate_s(clause[start:]) <= limit:
            break
        inside = [p for p in points if p > start and estimate_s(clause[start:p]) <= limit]
        later = [p for p in points if p > start]
        if not later:
            break
        cut = inside[-1] if inside else later[0]  # a first word longer than the limit stays whole
        parts.append(clause[start:cut].strip())
        start, limit = cut, limit_s
    parts.append(clause[start:].strip())
    return [p for p in parts if p]


def plan_pieces(text: str, first_piece_s: float, piece_s: float = PIECE_S) -> list[Piece]:
    """The eSpeak calls for one segment, in order; the first speaks for at most about
    ``first_piece_s`` where the words allow (the engine's ``espeak_first_piece_s`` when a listener
    waits, else ``piece_s``). Clause ends keep their pause except the last (the segment's own
    trailing silence is trimmed and replaced by the server's pause)."""
    clauses = split_clauses(text)
    pieces: list[Piece] = []
    for k, clause in enumerate(clauses):
        parts = _cut_clause(clause, first_piece_s if k == 0 else piece_s, piece_s)
        for j, part in enumerate(parts):
            if j < len(parts) - 1:
                if part[-1] not in ",;:!?" + _CJK_PUNCT:
                    part += "，" if _WIDE.match(part[-1]) else ","
                pieces.append(Piece(part, end_pause=False))
            else:
                pieces.append(Piece(part, end_pause=k < len(clauses) - 1))
    return pieces


def warm_up() -> None:
    """Load jieba's dictionary now rather than on the first long Chinese clause."""
    jieba.setLogLevel(30)  # WARNING: its "Building prefix dict" lines are noise in a server
    jieba.initialize()
