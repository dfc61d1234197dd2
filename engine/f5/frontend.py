"""F5-TTS text frontend: mixed Chinese/English text -> vocab tokens, and the duration rule.

This reproduces the frontend F5TTS_v1_Base was trained with (F5_FACTS.md 5.1): jieba word
segmentation, pypinyin TONE3 with tone sandhi for Chinese words, a small punctuation translation, and
the reference's spacing rules; every other character is its own token. Tokens map to vocab ids with
unknown tokens -> 0 (the space token), exactly like the reference's ``list_str_to_idx``.

Lengths are counted in UTF-8 bytes (a Chinese character counts 3), because that is how the
reference sizes the generated audio from the transcript of the reference clip (F5_FACTS.md 4.1).

No file I/O here: the vocab comes in as a dict (``engine.f5.loader.load_vocab``). jieba reads its
own dictionary once, on first use or on ``warmup()``.
"""

from __future__ import annotations

import logging
import threading

import jieba
from pypinyin import Style, lazy_pinyin

__all__ = [
    "TextFrontend",
    "estimate_frames",
    "fix_reference_text",
    "text_to_pinyin_tokens",
    "utf8_len",
    "warmup",
]

# jieba logs "Building prefix dict ..." at DEBUG to stderr on first use; that is noise in a server.
jieba.setLogLevel(logging.WARNING)

# Applied before segmentation: ASCII semicolons read as commas, curly quotes as straight ones
# (the curly forms are not in the vocab).
_PUNCT_TRANSLATION = str.maketrans({";": ",", "“": '"', "”": '"', "‘": "'", "’": "'"})

# After a pure-ASCII word the reference inserts a space unless the previous token is one of these.
_NO_SPACE_AFTER = frozenset(" :'\"")

# Below this many UTF-8 bytes of generated text the reference slows speech down to 0.3x
# (``local_speed = 0.3`` in ``infer_batch_process``); very short texts come out rushed otherwise.
SHORT_TEXT_BYTES = 10
SHORT_TEXT_SPEED = 0.3

_warm_lock = threading.Lock()
_warm = False


def _is_chinese(char: str) -> bool:
    # The reference's test: U+3100 (bopomofo) .. U+9FFF (CJK Unified); kana and hangul are not.
    return "\u3100" <= char <= "\u9fff"


def _tone3(text: str) -> list[str]:
    return lazy_pinyin(text, style=Style.TONE3, tone_sandhi=True)


def warmup() -> None:
    """Load jieba's dictionary and pypinyin's tables now rather than on the first request."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        jieba.initialize()
        text_to_pinyin_tokens("你好，一个不是。Hello")
        _warm = True


def text_to_pinyin_tokens(text: str) -> list[str]:
    """Tokens of ``text`` as the reference's ``convert_char_to_pinyin([text])[0]`` gives them.

    Chinese characters become a ``" "`` token followed by their TONE3 pinyin (``"ni2"``; neutral
    tone has no digit, ü is ``v``); every other character is its own token.

    Example: ``"你好，世界。"`` -> ``[' ', 'ni2', ' ', 'hao3', '，', ' ', 'shi4', ' ', 'jie4', '。']``.
    """
    tokens: list[str] = []
    for word in jieba.cut(text.translate(_PUNCT_TRANSLATION)):
        n_bytes = utf8_len(word)
        if n_bytes == len(word):
            # Pure ASCII word: a space separates it from what came before (e.g. after Chinese).
            if tokens and n_bytes > 1 and tokens[-1] not in _NO_SPACE_AFTER:
                tokens.append(" ")
            tokens.extend(word)
        elif n_bytes == 3 * len(word):
            # All 3-byte characters (Chinese, CJK punctuation, kana ...): pinyin of the whole word,
            # so that tone sandhi sees the word's context (一个 -> yi2 ge4).
            syllables = _tone3(word)
            if len(syllables) != len(word):
                # pypinyin keeps a run of non-Chinese characters as one item; fall back to one
                # character at a time (the reference would fail with an IndexError here).
                syllables = [_tone3(char)[0] for char in word]
            for char, syllable in zip(word, syllables, strict=True):
                if _is_chinese(char):
                    tokens.append(" ")
                tokens.append(syllable)
        else:
            # Mixed word: Latin-1 characters as is, Chinese one character at a time.
            for char in word:
                if ord(char) < 256:
                    tokens.append(char)
                elif _is_chinese(char):
                    tokens.append(" ")
                    tokens.extend(_tone3(char))
                else:
                    tokens.append(char)
    return tokens


class TextFrontend:
    """Text -> token ids for one vocab.

    Args:
        vocab: token -> id, as read from ``vocab.txt`` (line index = id; id 0 is ``" "``).
    """

    def __init__(self, vocab: dict[str, int]) -> None:
        if not vocab:
            raise ValueError("vocab is empty")
        if vocab.get(" ") != 0:
            raise ValueError("vocab must map the space token ' ' to id 0 (first line of vocab.txt)")
        self.vocab = vocab

    def tokens(self, text: str) -> list[str]:
        return text_to_pinyin_tokens(text)

    def ids(self, text: str) -> list[int]:
        """Vocab ids of ``text``'s tokens; tokens missing from the vocab become 0 (space)."""
        get = self.vocab.get
        return [get(token, 0) for token in text_to_pinyin_tokens(text)]


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (how F5 measures text for durations)."""
    return len(text.encode("utf-8"))


def estimate_frames(ref_frames: int, ref_text: str, gen_text: str, speed: float = 1.0) -> int:
    """Total mel frames (reference + generated) to sample for ``gen_text``, the reference's rule.

    ``total = ref_frames + int(ref_frames / bytes(ref_text) * bytes(gen_text) / speed)`` where
    ``speed`` is replaced by 0.3 when ``gen_text`` has fewer than 10 UTF-8 bytes.

    Args:
        ref_frames: reference clip length in mel frames, ``samples_24k // 256``.
        ref_text: the reference transcript exactly as it is prepended to the generated text,
            i.e. after ``fix_reference_text`` (its trailing spaces count).
        gen_text: the text to generate.
        speed: >1 speaks faster (fewer frames).

    The sampler still raises the result to at least ``max(n_tokens, cond_frames) + 1``.
    """
    if ref_frames <= 0:
        raise ValueError(f"ref_frames must be positive, got {ref_frames}")
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    ref_bytes = utf8_len(ref_text)
    if ref_bytes == 0:
        raise ValueError("ref_text is empty")
    gen_bytes = utf8_len(gen_text)
    local_speed = SHORT_TEXT_SPEED if gen_bytes < SHORT_TEXT_BYTES else speed
    return ref_frames + int(ref_frames / ref_bytes * gen_bytes / local_speed)


def fix_reference_text(text: str) -> str:
    """The reference transcript as the reference feeds it to the model (F5_FACTS.md 5.4).

    1. It must end with ``". "`` or ``"。"``: a trailing ``"."`` gets ``" "``, anything else ``". "``.
    2. If the last character is one byte (ASCII), one more space is added, so an English
       transcript usually ends ``".  "``; the generated text follows directly.

    Surrounding whitespace is stripped first (the reference keeps it, but a transcript read from a
    file or a form field often carries a stray newline). Raises ``ValueError`` when empty.
    """
    text = text.strip()
    if not text:
        raise ValueError("reference text is empty")
    if not text.endswith("。"):
        text += " " if text.endswith(".") else ". "
    if utf8_len(text[-1]) == 1:
        text += " "
    return text
