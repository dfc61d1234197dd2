"""Length control in weighted characters (UTF-8 bytes)."""

from __future__ import annotations

import pytest

from chunker import ChunkerConfig
from chunker.__main__ import chunk
from chunker.text import weight


def texts(text: str, config: ChunkerConfig) -> list[str]:
    return [s.text for s in chunk(text, config)]


def cfg(max_chars: int, **kw: int | bool) -> ChunkerConfig:
    return ChunkerConfig(
        max_chars=max_chars,
        first_min_chars=8,
        fast_start=False,
        min_chars=1,
        **kw,  # type: ignore[arg-type]
    )


def test_weight_is_utf8_bytes() -> None:
    assert weight("abc") == 3
    assert weight("你好") == 6
    assert weight("é") == 2
    assert weight("😀") == 4
    assert weight("\ud800") == 3  # lone surrogate: counted, never raises


def test_short_sentences_are_not_split() -> None:
    assert texts("One two three four.", cfg(40)) == ["One two three four."]


def test_split_at_last_clause_mark_before_limit() -> None:
    text = "alpha beta gamma, delta epsilon zeta eta theta iota kappa lambda."
    assert texts(text, cfg(40)) == [
        "alpha beta gamma,",
        "delta epsilon zeta eta theta iota kappa",
        "lambda.",
    ]


def test_split_at_space_when_no_clause_mark() -> None:
    out = texts("aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk.", cfg(20))
    assert out == ["aaaa bbbb cccc dddd", "eeee ffff gggg hhhh", "iiii jjjj kkkk."]


def test_clause_mark_too_early_is_not_used() -> None:
    # "So," would leave a 3-char segment: the split goes to the last space instead
    out = texts("So, aaaa bbbb cccc dddd eeee ffff gggg hhhh.", cfg(24))
    assert out[0] == "So, aaaa bbbb cccc dddd"


def test_never_split_inside_a_word() -> None:
    words = "internationalization is a remarkably lengthy word indeed".split()
    for s in texts(" ".join(words) + ".", cfg(24)):
        assert all(w.strip(".") in words for w in s.split())


def test_cjk_splits_at_clause_punctuation() -> None:
    text = "今天天气很好，我们一起去公园散步吧，然后回家吃饭。"
    out = texts(text, cfg(60))
    assert out == ["今天天气很好，我们一起去公园散步吧，", "然后回家吃饭。"]


def test_cjk_without_punctuation_splits_between_characters() -> None:
    text = "我" * 50 + "。"
    out = texts(text, cfg(30))
    assert "".join(out) == text
    assert all(weight(s) <= 30 for s in out)
    assert len(out) == 6


def test_word_longer_than_limit_stays_whole() -> None:
    long_word = "x" * 60
    out = texts(f"see {long_word} here ok.", cfg(20))
    assert long_word in out
    assert all(weight(s) <= 20 for s in out if s != long_word)


def test_safety_valve_cuts_a_huge_word() -> None:
    out = texts("y" * 1000, cfg(50, max_buffer_chars=200))
    assert "".join(out) == "y" * 1000
    assert all(weight(s) <= 200 for s in out)


def test_endless_ender_run_is_cut_by_the_valve() -> None:
    out = texts("Hi" + "!" * 500 + " ok", cfg(50, max_buffer_chars=100))
    assert all(weight(s) <= 100 for s in out)
    assert out[0].startswith("Hi!")


LIMIT_TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again; and then, tired, it rests. " * 6,
    "北京是中国的首都，也是一座历史悠久的城市。" * 8,
    "Mixed 中英文 text, 有时候 without punctuation 一直写下去 and on and on " * 5,
    "- item one is here\n- item two is there\n" * 5,
]


@pytest.mark.parametrize("max_chars", [24, 60, 220])
@pytest.mark.parametrize("text", LIMIT_TEXTS, ids=["en", "zh", "mixed", "list"])
def test_every_segment_respects_max_chars(text: str, max_chars: int) -> None:
    for fast_start in (True, False):
        config = ChunkerConfig(
            max_chars=max_chars, first_min_chars=min(24, max_chars), fast_start=fast_start
        )
        for s in chunk(text, config):
            assert weight(s.text) <= max_chars, s.text


def test_limit_wins_over_the_fast_start_minimum() -> None:
    # no break leaves >= 24 and stays <= 24: the split that keeps the limit is taken
    config = ChunkerConfig(max_chars=24, first_min_chars=24)
    out = texts("The quick brown fox jumps over the lazy dog.", config)
    assert out[0] == "The quick brown fox"
    assert all(weight(s) <= 24 for s in out)
