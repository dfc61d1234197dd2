"""Fast start, merging of tiny pieces, utterance lifecycle (flush/reset), indices."""

from __future__ import annotations

from chunker import ChunkerConfig, SentenceChunker
from chunker.__main__ import chunk
from chunker.text import weight

DEFAULT = ChunkerConfig()


def texts(text: str, config: ChunkerConfig = DEFAULT) -> list[str]:
    return [s.text for s in chunk(text, config)]


def test_first_segment_cut_at_first_clause_boundary_after_minimum() -> None:
    text = "Well, I think that the weather, all things considered, is fine today."
    # "Well," is below the minimum; "Well, I think that the weather," holds >= 24
    assert texts(text) == [
        "Well, I think that the weather,",
        "all things considered, is fine today.",
    ]


def test_clause_cuts_only_in_the_first_segment() -> None:
    text = "Okay then, here we go again. After that, we rest, we eat, we sleep."
    # "Okay then," is below the minimum, so the first cut is the sentence end; after that,
    # commas no longer cut
    assert texts(text) == ["Okay then, here we go again.", "After that, we rest, we eat, we sleep."]


def test_tiny_opener_merges_forward() -> None:
    assert texts("Hi. How are you doing on this fine day?") == [
        "Hi. How are you doing on this fine day?"
    ]


def test_tiny_opener_line_merges_forward() -> None:
    assert texts("Hi\nHow are you doing on this fine day?") == [
        "Hi How are you doing on this fine day?"
    ]


def test_first_segment_never_below_minimum_before_flush() -> None:
    c = SentenceChunker()
    out = []
    for word in "Yes. No. Ok. Sure. Fine, then we will go.".split(" "):
        out += c.push(word + " ")
    assert out, "a segment should be final before flush"
    assert weight(out[0].text) >= 24


def test_whole_text_shorter_than_minimum_is_emitted_at_flush() -> None:
    c = SentenceChunker()
    assert c.push("Hi.") == []
    assert [s.text for s in c.flush()] == ["Hi."]


def test_cjk_fast_start_at_cjk_comma() -> None:
    # "今天天气很好，" weighs 21 < 24; the next clause boundary is past the minimum
    text = "今天天气很好，我们一起去公园，然后回家。"
    assert texts(text) == ["今天天气很好，我们一起去公园，", "然后回家。"]


def test_later_tiny_sentence_merges_forward() -> None:
    text = "This first sentence is long enough. Ok. Then the next one follows here."
    assert texts(text) == [
        "This first sentence is long enough.",
        "Ok. Then the next one follows here.",
    ]


def test_no_fast_start_waits_for_the_sentence_end() -> None:
    text = "Well, I think that the weather, all things considered, is fine today."
    assert texts(text, ChunkerConfig(fast_start=False)) == [text]


def test_no_fast_start_still_merges_tiny_first_sentence() -> None:
    cfg = ChunkerConfig(fast_start=False)
    assert texts("Hi. Then more words here.", cfg) == ["Hi. Then more words here."]


def test_flush_rearms_fast_start() -> None:
    c = SentenceChunker()
    first = c.push("Alright, so the plan for today, in short, is this. ")
    first += c.flush()
    second = c.push("Alright, so the plan for today, in short, is this. ")
    second += c.flush()
    assert [s.text for s in first] == [s.text for s in second]
    assert first[0].text == "Alright, so the plan for today,"


def test_reset_drops_buffered_text_and_rearms() -> None:
    c = SentenceChunker()
    assert c.push("This text is dropped because the user barged in") == []
    assert c.buffered
    c.reset()
    assert c.buffered == ""
    out = c.push("Fresh start, with a clause here, and more. ") + c.flush()
    assert [s.text for s in out] == ["Fresh start, with a clause here,", "and more."]


def test_indices_increase_across_flush_and_reset() -> None:
    c = SentenceChunker()
    a = c.push("First utterance is long enough. And a second sentence. ") + c.flush()
    c.push("dropped text")
    c.reset()
    b = c.push("Second utterance is long enough too.") + c.flush()
    idx = [s.index for s in a + b]
    assert idx == list(range(len(idx)))
    assert len(a) == 2 and len(b) == 1


def test_buffered_shows_unemitted_text() -> None:
    c = SentenceChunker()
    c.push("Hello there, my **fr")
    assert c.buffered == "Hello there, my fr"
    c.push("iend")
    c.push("*")
    assert c.buffered.endswith("friend*")  # a lone "*" is undecided until the next character


def test_flush_on_empty_chunker_gives_nothing() -> None:
    c = SentenceChunker()
    assert c.flush() == []
    assert c.push("") == []
    assert c.flush() == []
