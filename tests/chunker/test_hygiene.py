"""Text hygiene: whitespace, LLM markdown, unspeakable pieces, odd characters."""

from __future__ import annotations

import pytest

from chunker import ChunkerConfig, SentenceChunker
from chunker.__main__ import chunk
from chunker.normalize import TextNormalizer

PLAIN = ChunkerConfig(fast_start=False, min_chars=1)


def texts(text: str, config: ChunkerConfig = PLAIN) -> list[str]:
    return [s.text for s in chunk(text, config)]


def normalize(text: str) -> str:
    n = TextNormalizer()
    return n.feed(text) + n.finish()


NORMALIZE = [
    ("space runs collapse", "a  \t b", "a b"),
    ("leading and trailing space", "  a b  ", "a b"),
    ("newline run", "a \n\n \n b", "a\nb"),
    ("nbsp and ideographic space", "a\u00a0b\u3000c", "a b c"),
    ("zero width and bom", "\ufeffa\u200bb", "ab"),
    ("control chars", "a\x00b\x07c", "abc"),
    ("lone surrogate", "a\ud800b", "ab"),
    ("bold", "a **b** c", "a b c"),
    ("underscore bold", "a __b__ c", "a b c"),
    ("star emphasis", "a *b c* d", "a b c d"),
    ("underscore emphasis", "a _b_ c", "a b c"),
    ("emphasis before punctuation", "say *this*. (_that_)", "say this. (that)"),
    ("multiplication kept", "2*3 and 2 * 3", "2*3 and 2 * 3"),
    ("snake case kept", "call snake_case now", "call snake_case now"),
    ("inline code", "run `ls -l` now", "run ls -l now"),
    ("heading", "## Title\nText", "Title\nText"),
    ("hashtag kept", "#hashtag here", "#hashtag here"),
    ("seven hashes kept", "####### x", "####### x"),
    ("dash bullet", "- one\n- two", "one\ntwo"),
    ("star bullet", "* one\n* two", "one\ntwo"),
    ("plus bullet", "+ one", "one"),
    ("negative number kept", "-5 degrees", "-5 degrees"),
    ("indented bullet", "   - one", "one"),
    ("quote marker", "> quoted\n> > nested", "quoted\nnested"),
    ("horizontal rule", "a\n---\nb\n***\nc", "a\nb\nc"),
    ("setext underline", "Title\n=====\nText", "Title\nText"),
    ("code fence lines", "```python\nx = 1\n```\nDone", "x = 1\nDone"),
    ("bold bullet", "- **Key:** value", "Key: value"),
    ("mid-line dashes kept", "a -- b", "a -- b"),
    ("link keeps its text", "see [the docs](https://x.y/a_b) now", "see the docs now"),
    ("citation brackets", "as shown [1] before", "as shown 1 before"),
    ("bracket then spaced paren", "[a] (b c)", "a (b c)"),
    ("not a link target", "[a](b c) d", "a(b c) d"),
    ("unclosed link target", "[a](b", "a(b"),
]


@pytest.mark.parametrize(("raw", "want"), [c[1:] for c in NORMALIZE], ids=[c[0] for c in NORMALIZE])
def test_normalize(raw: str, want: str) -> None:
    assert normalize(raw) == want


def test_markdown_kept_when_disabled() -> None:
    cfg = ChunkerConfig(fast_start=False, min_chars=1, strip_markdown=False)
    assert texts("## **Bold** `x` here.", cfg) == ["## **Bold** `x` here."]


def test_segment_whitespace_is_single_spaced() -> None:
    assert texts("  Many    spaces\there.   Next  one. ") == ["Many spaces here.", "Next one."]


def test_unspeakable_line_merges_into_the_next() -> None:
    assert texts("Intro line\n???\nMore text") == ["Intro line", "??? More text"]


def test_unspeakable_tail_is_dropped_at_flush() -> None:
    assert texts("Real words.\n!!! ...") == ["Real words."]


def test_only_markup_gives_no_segment() -> None:
    assert texts("**\n---\n``` \n> ") == []


def test_every_segment_is_speakable_and_stripped() -> None:
    text = "- **A.** B!\n\n--- ... C? — ? D.\n* * *\n\t E"
    segs = texts(text)
    assert segs
    for s in segs:
        assert s == s.strip() and "  " not in s and any(ch.isalnum() for ch in s)


def test_markdown_split_across_pushes() -> None:
    c = SentenceChunker(PLAIN)
    out = []
    for piece in ["*", "*Bo", "ld*", "* te", "xt.\n", "-", " item\n#", "# Head"]:
        out += c.push(piece)
    out += c.flush()
    assert [s.text for s in out] == ["Bold text.", "item", "Head"]


def test_push_rejects_non_text() -> None:
    c = SentenceChunker()
    with pytest.raises(TypeError, match="expects str"):
        c.push(b"bytes")  # type: ignore[arg-type]
