"""Character classes and text weights shared by the normalizer and the scanner.

Weight = UTF-8 byte length, computed per code point so that lone surrogates (which JSON can carry)
never raise: 1 for ASCII, 2 up to U+07FF, 3 up to U+FFFF (a CJK ideograph), 4 beyond.
"""

from __future__ import annotations

# sentence enders that need a confirming look at what follows (". ! ? …" and runs of them)
LATIN_ENDERS = frozenset(".!?…")
# CJK enders cut at once, without a following space (full-width stop/exclamation/question/semicolon)
CJK_ENDERS = frozenset("。！？；．｡")
ENDERS = LATIN_ENDERS | CJK_ENDERS
# closing quotes/brackets that stay on the sentence they close
CLOSERS = frozenset("\"'”’)]}」』）》〉】〕")
# clause marks: ASCII ones count only when a space follows; CJK ones count at once
LATIN_CLAUSE = frozenset(",;:")
CJK_CLAUSE = frozenset("，、：；")
EM_DASH = "—"
EN_DASH = "–"
# after ". " these mean the sentence goes on ("etc., and", "p.m. today")
CONTINUERS = frozenset(",;:")
SPACES = " \n"


def char_weight(ch: str) -> int:
    """UTF-8 byte length of one code point (surrogates count 3, like their UTF-8 form would)."""
    o = ord(ch)
    if o < 0x80:
        return 1
    if o < 0x800:
        return 2
    if o < 0x10000:
        return 3
    return 4


def weight(text: str) -> int:
    """Weighted length of ``text`` (UTF-8 bytes), the unit of every chunker limit."""
    return sum(char_weight(ch) for ch in text)


def is_cjk(ch: str) -> bool:
    """True for CJK ideographs, kana and hangul (scripts written without spaces between words)."""
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= o <= 0x4DBF  # extension A
        or 0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0xAC00 <= o <= 0xD7AF  # hangul syllables
        or 0xF900 <= o <= 0xFAFF  # compatibility ideographs
        or 0x20000 <= o <= 0x3134F  # extensions B-G
    )


def is_speakable(text: str) -> bool:
    """True when ``text`` holds a letter or digit (any script), i.e. something a TTS can say."""
    return any(ch.isalnum() for ch in text)
