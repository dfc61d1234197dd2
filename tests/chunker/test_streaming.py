"""Streaming equivalence: any split of the input, then flush, gives the same segments."""

from __future__ import annotations

import random

import pytest

from chunker import ChunkerConfig, Segment, SentenceChunker
from chunker.__main__ import split_pieces
from chunker.text import weight

CORPUS = [
    "Hi. Dr. Smith arrived at 5 p.m. today with $29.95, e.g. coins. He met J. R. R. Tolkien in "
    "the U.S. Army. Wait... what? Really?! Yes. Visit https://x.y/z?q=1 or www.x.com now. "
    "Mail me at a.b@c.org. Version v1.2.3 (and 2.11.0) is out.",
    "# Plan\n\n1. Preheat the oven to 180 °C.\n2. Mix **flour** and `sugar`.\n- item *one*\n"
    "> quoted line\n---\n```python\nprint('hi')\n```\nDone!",
    "你好。今天天气很好！我们去公园吧？好的；走吧。他说：「我马上来。」然后，我们出发了，一路上有说有笑",
    "我用Python写代码。It works well, 真的！Then we ship v2.0 到 production……好。OK?! 再见",
    "Well, I think that the weather, all things considered—and I mean it—is fine. "
    "Pens, ink, etc. Then paper, pencils, etc., were bought. No. 5 was there. I said No. "
    "The U.K.'s plan, i.e. Brexit, ended. 1990–2000 was a decade – or so they say.",
    "A" * 300 + " tail. " + "北" * 120 + "。" + "word " * 80,
    "Line one\r\nLine two\n\n\nLine three   with   spaces\t\tand tabs.\u00a0Next\u200b one.",
    "Ok.\nYes.\nNo.\nMaybe so, perhaps.\n***\n??? !!!\n...\nThe end.",
    "\"Quoted sentence.\" Another one! (Parenthetical.) [Bracketed?] 'Single.' Done",
    "Numbers: 3.14, 2.718; 1,000,000. Price $5. 5 p.m. The end... and more… Then it stops.",
]

CONFIGS = [
    ChunkerConfig(),
    ChunkerConfig(max_chars=40, first_min_chars=12, min_chars=5, max_buffer_chars=120),
    ChunkerConfig(fast_start=False, min_chars=1, strip_markdown=False),
]


def run(pieces: list[str], config: ChunkerConfig) -> list[Segment]:
    c = SentenceChunker(config)
    out: list[Segment] = []
    for p in pieces:
        out.extend(c.push(p))
    out.extend(c.flush())
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "small", "plain"])
@pytest.mark.parametrize("seed", range(len(CORPUS)), ids=[f"text{i}" for i in range(len(CORPUS))])
def test_random_splits_match_whole_text(seed: int, config: ChunkerConfig) -> None:
    text = CORPUS[seed]
    whole = run([text], config)
    assert whole, "every corpus text has something to say"
    assert run(list(text), config) == whole  # one character at a time
    rng = random.Random(seed)
    for _ in range(25):
        pieces = split_pieces(text, rng.randint(2, 40), rng.randrange(1 << 30))
        assert "".join(pieces) == text
        assert run(pieces, config) == whole


def test_split_inside_multichar_tokens() -> None:
    # cut right inside "**", "...", "\r\n", "?!", "e.g." and "29.95"
    text = "**Bold**... Then\r\nwhat?! Try e.g. this: $29.95. Ok then, bye now."
    whole = run([text], CONFIGS[1])
    for k in range(1, len(text)):
        assert run([text[:k], text[k:]], CONFIGS[1]) == whole, k


def test_segments_come_out_before_flush_when_decided() -> None:
    c = SentenceChunker()
    out = []
    for ch in "The first sentence is long enough. The second is":
        out += c.push(ch)
    assert [s.text for s in out] == ["The first sentence is long enough."]


def test_concatenated_segments_keep_all_words() -> None:
    for text in CORPUS:
        words = [s.text for s in run([text], ChunkerConfig(strip_markdown=False))]
        assert "".join("".join(words).split()) == "".join(
            "".join(ch for ch in text if ch not in "\u200b").split()
        )


SOUP = [
    *"abXYZ 你好。！？，、：；.!?…,;:—–\"'”’)(]「」*_`#->\n\r\t09$@/",
    *["Dr. ", "e.g. ", "U.S. ", "p.m. ", "  ", "\n\n", "**", "```", "...", "3.14", "J. R. "],
    *["http://a.b/c", "- ", "# ", "1. ", "Hello ", "world ", "The ", "end. ", "好的", "Yes! "],
    *["[", "]", "](", "[link](http://x.y/z)", ")", "("],
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "small", "plain"])
def test_token_soup_is_streaming_equivalent_and_well_formed(config: ChunkerConfig) -> None:
    rng = random.Random(1234)
    for _ in range(60):
        text = "".join(rng.choice(SOUP) for _ in range(rng.randint(0, 120)))
        whole = run([text], config)
        pieces = split_pieces(text, rng.randint(2, 30), rng.randrange(1 << 30))
        assert run(pieces, config) == whole, repr(text)
        for seg in whole:
            assert seg.text == seg.text.strip() and "  " not in seg.text
            assert any(ch.isalnum() for ch in seg.text)
            # only a segment that is one word longer than the limit may exceed it
            assert weight(seg.text) <= config.max_chars or " " not in seg.text, seg.text
