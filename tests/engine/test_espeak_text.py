"""eSpeak text planning: voice by script, clauses, and the pieces of a segment."""

from __future__ import annotations

import re

import pytest

from engine.config import EngineConfig
from engine.espeak_text import (
    PIECE_S,
    Piece,
    estimate_s,
    plan_pieces,
    script_voice,
    split_clauses,
)

FIRST_PIECE_S = EngineConfig().espeak_first_piece_s


@pytest.mark.parametrize(
    ("text", "voice"),
    [
        ("Hello there.", "en-us"),
        ("Grüße aus Köln, 3.14!", "en-us"),
        ("你好，世界。", "cmn"),
        ("我们的新版 App 支持 dark mode。", "cmn"),
        ("こんにちは。", "ja"),
        ("東京へ行きます。", "ja"),  # kanji with kana is Japanese
        ("안녕하세요.", "ko"),
        ("Привет, мир.", "ru"),
        ("नमस्ते दुनिया।", "hi"),
        ("", "en-us"),
    ],
)
def test_script_voice(text: str, voice: str) -> None:
    assert script_voice(text) == voice


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hi.", ["Hi."]),
        ("Yes, I think, maybe.", ["Yes, I think, maybe."]),  # short clauses merge
        (
            "The weather tomorrow looks mostly sunny, with a light breeze from the west.",
            ["The weather tomorrow looks mostly sunny,", "with a light breeze from the west."],
        ),
        # no cut at "." (abbreviations) or inside numbers
        (
            "Dr. Smith paid $1,000.50 for it; e.g. the blue one.",
            ["Dr. Smith paid $1,000.50 for it;", "e.g. the blue one."],
        ),
        (
            "你好，欢迎使用流式语音合成服务器。今天天气很好。",
            ["你好，欢迎使用流式语音合成服务器。", "今天天气很好。"],
        ),
        (
            "新版 App 支持 dark mode 和离线下载，你可以打开 auto update 功能。",
            ["新版 App 支持 dark mode 和离线下载，", "你可以打开 auto update 功能。"],
        ),
        ("Okay, and then a tail", ["Okay, and then a tail"]),
    ],
)
def test_split_clauses(text: str, pieces: list[str]) -> None:
    assert split_clauses(text) == pieces


def test_short_clauses_are_one_piece_each_with_their_pause() -> None:
    text = "The weather tomorrow looks mostly sunny, with a light breeze from the west."
    assert plan_pieces(text, FIRST_PIECE_S * 2) == [
        Piece("The weather tomorrow looks mostly sunny,", end_pause=True),
        Piece("with a light breeze from the west.", end_pause=False),  # segment end: trimmed
    ]


def test_first_piece_is_short_and_ends_with_a_continuation_comma() -> None:
    pieces = plan_pieces("The weather tomorrow looks mostly sunny, with a light breeze.", FIRST_PIECE_S)
    assert pieces[0] == Piece("The weather tomorrow,", end_pause=False)
    assert pieces[1] == Piece("looks mostly sunny,", end_pause=True)
    assert estimate_s(pieces[0].text) <= FIRST_PIECE_S


def test_chinese_first_piece_is_cut_between_words() -> None:
    pieces = plan_pieces("流式语音合成可以让语音助手在大模型还没写完回答的时候就开始说话，", FIRST_PIECE_S)
    assert pieces[0].text == "流式语音，"
    assert "".join(p.text.rstrip("，") for p in pieces) + "，" == (
        "流式语音合成可以让语音助手在大模型还没写完回答的时候就开始说话，"
    )
    assert all(estimate_s(p.text) <= PIECE_S for p in pieces)


@pytest.mark.parametrize(
    "text",
    [
        "I can help you check the status of your order right now.",
        "The meeting moved to 3:30 p.m. on Friday afternoon at the office.",
        "We met Dr. Smith and Mr. Jones at the station this morning.",
    ],
)
def test_no_cut_after_function_words_numbers_or_abbreviations(text: str) -> None:
    pieces = plan_pieces(text, first_piece_s=0.5, piece_s=0.8)
    assert len(pieces) >= 3
    for piece in pieces[:-1]:
        last_word = re.sub(r",$", "", piece.text).split()[-1].lower()
        assert last_word not in {"the", "to", "at", "on", "dr.", "mr.", "3:30"}, pieces
    # the words survive in order
    words = " ".join(p.text for p in pieces).replace(",", "").split()
    assert words == text.replace(",", "").split()


def test_long_clauses_are_bounded_for_later_pieces() -> None:
    text = " ".join(["word"] * 200) + "."  # about 46 s of speech without punctuation
    pieces = plan_pieces(text, FIRST_PIECE_S, PIECE_S)
    assert estimate_s(pieces[0].text) <= FIRST_PIECE_S
    assert all(estimate_s(p.text) <= PIECE_S for p in pieces)
    assert [p.end_pause for p in pieces] == [False] * len(pieces)
    assert sum(p.text.count("word") for p in pieces) == 200


def test_a_word_longer_than_the_limit_stays_whole() -> None:
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis"
    pieces = plan_pieces(f"{long_word} is a long word indeed, they say.", first_piece_s=0.5)
    assert pieces[0].text.rstrip(",") == long_word


def test_no_tiny_tail() -> None:
    # the only cut would leave "ok." (< 0.4 s) alone: the clause stays whole
    assert estimate_s("Extraordinarily ok.") > 0.5
    assert plan_pieces("Extraordinarily ok.", first_piece_s=0.5) == [
        Piece("Extraordinarily ok.", end_pause=False)
    ]
