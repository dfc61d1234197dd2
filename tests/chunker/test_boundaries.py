"""Where sentences end (and where they must not), one behaviour per case.

Fast start is off and the minimum is 1 so that every boundary shows as its own segment.
"""

from __future__ import annotations

import pytest

from chunker import ChunkerConfig
from chunker.__main__ import chunk

PLAIN = ChunkerConfig(fast_start=False, min_chars=1)


def texts(text: str, config: ChunkerConfig = PLAIN) -> list[str]:
    return [s.text for s in chunk(text, config)]


ENGLISH = [
    # sentence enders and runs of them
    ("period", "It rains. We stay in.", ["It rains.", "We stay in."]),
    ("exclamation", "Stop! Go now.", ["Stop!", "Go now."]),
    ("question", "Why? Because.", ["Why?", "Because."]),
    ("interrobang run", "Really?! I doubt it.", ["Really?!", "I doubt it."]),
    ("ellipsis run", "Wait... What now?", ["Wait...", "What now?"]),
    ("unicode ellipsis", "Wait… Then go.", ["Wait…", "Then go."]),
    ("digit after end", "He left. 3 days later he came.", ["He left.", "3 days later he came."]),
    ("quote opens next", 'He left. "Bye," she said.', ["He left.", '"Bye," she said.']),
    (
        "bracket opens next",
        "He left. (Quietly.) Then rain.",
        ["He left.", "(Quietly.)", "Then rain."],
    ),
    # closers stay on the sentence
    ("closing quote", 'She said "go." Then left.', ['She said "go."', "Then left."]),
    ("curly quote", "She said “go!” Then left.", ["She said “go!”", "Then left."]),
    ("closing paren", "It ended (finally.) Then rest.", ["It ended (finally.)", "Then rest."]),
    # lookahead: lowercase / continuation after the period means no end
    ("lowercase after period", "The value is approx. five.", ["The value is approx. five."]),
    ("ellipsis then lowercase", "Well... maybe not.", ["Well... maybe not."]),
    ("comma after period", "Apples, pears, etc., were sold.", ["Apples, pears, etc., were sold."]),
    ("question then lowercase", "Ready? yes we are.", ["Ready?", "yes we are."]),
    # abbreviations
    ("title Dr", "Dr. Smith is here. He waits.", ["Dr. Smith is here.", "He waits."]),
    ("titles Mr Mrs", "Mr. and Mrs. Brown came.", ["Mr. and Mrs. Brown came."]),
    ("title Prof", "Ask Prof. Lee now.", ["Ask Prof. Lee now."]),
    ("saint", "We saw St. Paul today.", ["We saw St. Paul today."]),
    ("versus", "Cats vs. Dogs is on.", ["Cats vs. Dogs is on."]),
    ("e.g. before capital", "Fruit, e.g. Apples, is good.", ["Fruit, e.g. Apples, is good."]),
    (
        "i.e. before capital",
        "The capital, i.e. Paris, is big.",
        ["The capital, i.e. Paris, is big."],
    ),
    ("etc. before capital cuts", "Pens, ink, etc. Then paper.", ["Pens, ink, etc.", "Then paper."]),
    ("No. before digit", "Take No. 5 please.", ["Take No. 5 please."]),
    ("month before year", "It shipped in Oct. 2024 to all.", ["It shipped in Oct. 2024 to all."]),
    ("No. as a word", "I said No. Then I left.", ["I said No.", "Then I left."]),
    ("initialism", "The U.S. Army moved.", ["The U.S. Army moved."]),
    ("initialism inside", "The U.K.'s plan won.", ["The U.K.'s plan won."]),
    ("a.m. before lowercase", "At 9 a.m. we met.", ["At 9 a.m. we met."]),
    (
        "p.m. before capital",
        "It ends at 5 p.m. Then we eat.",
        ["It ends at 5 p.m.", "Then we eat."],
    ),
    ("initials", "J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    # numbers, URLs, addresses
    ("decimal", "Pi is 3.14 roughly. Yes.", ["Pi is 3.14 roughly.", "Yes."]),
    ("price", "It costs $29.95 today. Buy.", ["It costs $29.95 today.", "Buy."]),
    ("price at sentence end", "It costs $29.95. Buy it.", ["It costs $29.95.", "Buy it."]),
    ("version", "Use v1.2.3 or 2.11.0 now.", ["Use v1.2.3 or 2.11.0 now."]),
    ("url", "See https://x.y/z?a=1 now. Ok.", ["See https://x.y/z?a=1 now.", "Ok."]),
    ("url at sentence end", "Go to www.x.com. Then read.", ["Go to www.x.com.", "Then read."]),
    ("email", "Mail a.b@c.org today. Thanks.", ["Mail a.b@c.org today.", "Thanks."]),
    ("thousands", "We sold 1,000 units.", ["We sold 1,000 units."]),
    ("year at sentence end", "Born in 1990. Then school.", ["Born in 1990.", "Then school."]),
    # line breaks
    ("newline ends segment", "First line\nSecond line", ["First line", "Second line"]),
    ("paragraph break", "One para.\n\n\nTwo para.", ["One para.", "Two para."]),
    ("crlf", "Line one\r\nLine two", ["Line one", "Line two"]),
    ("list numbers", "Steps:\n1. Preheat.\n2. Bake.", ["Steps:", "1. Preheat.", "2. Bake."]),
    ("end of input at flush", "No trailing space.", ["No trailing space."]),
]

CHINESE = [
    ("ju hao", "你好。今天很好。", ["你好。", "今天很好。"]),
    ("exclamation", "太好了！我们走吧。", ["太好了！", "我们走吧。"]),
    ("question", "你去吗？我去。", ["你去吗？", "我去。"]),
    ("semicolon", "天晴；风大。", ["天晴；", "风大。"]),
    ("full-width period", "第一句．第二句", ["第一句．", "第二句"]),
    ("closing bracket stays", "他说：「好。」然后走了。", ["他说：「好。」", "然后走了。"]),
    ("comma does not end", "今天，我们去公园。", ["今天，我们去公园。"]),
    ("double question", "真的？？是的。", ["真的？？", "是的。"]),
]

MIXED = [
    ("ascii stop before cjk", "Hello.你好。", ["Hello.", "你好。"]),
    ("cjk stop before latin", "我用Python。It works.", ["我用Python。", "It works."]),
    ("latin in cjk sentence", "我喜欢 F5-TTS 模型！好。", ["我喜欢 F5-TTS 模型！", "好。"]),
    ("exclamation before cjk", "Wow!真棒。", ["Wow!", "真棒。"]),
    ("decimal in cjk", "价格是29.95元。好。", ["价格是29.95元。", "好。"]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in ENGLISH], ids=[c[0] for c in ENGLISH]
)
def test_english(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CHINESE], ids=[c[0] for c in CHINESE]
)
def test_chinese(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in MIXED], ids=[c[0] for c in MIXED])
def test_mixed(text: str, expected: list[str]) -> None:
    assert texts(text) == expected


def test_sentence_end_waits_for_the_next_word() -> None:
    from chunker import SentenceChunker

    c = SentenceChunker(PLAIN)
    assert c.push("Dr. Smith came. ") == []  # "Dr." and "came." both need the next word
    assert [s.text for s in c.push("He")] == ["Dr. Smith came."]
    assert c.buffered == "He"


def test_cjk_ender_needs_only_one_more_character() -> None:
    from chunker import SentenceChunker

    c = SentenceChunker(PLAIN)
    assert c.push("你好。") == []  # a closing bracket could still follow
    assert [s.text for s in c.push("我")] == ["你好。"]
