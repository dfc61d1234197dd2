"""The F5 text frontend equals the reference's (tokens, ids, duration rule, reference text ending)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jieba
import numpy as np
import pytest
import torch

from engine.f5 import frontend
from engine.f5.frontend import (
    TextFrontend,
    estimate_frames,
    fix_reference_text,
    text_to_pinyin_tokens,
    utf8_len,
)
from tests.f5_oracle import SilentVocoder, reference_infer, reference_module

SENTENCES = [
    # English: numbers, punctuation, quotes, semicolons, apostrophes, spacing
    "Hello, world!",
    "I have 3 apples; she has 12.5 pears.",
    'It\'s a "quoted" word, and ‘curly’ “quotes” too.',
    "Dr. Smith paid $29.95 at 10:30 a.m. (really?)",
    "  spaced  out  text ",
    "F5-TTS runs at RTF 0.01 on an H100 GPU.",
    "a",
    # Chinese: full-width punctuation, polyphones, tone sandhi, ü
    "你好，世界。",
    "一个不是绿色的苹果！",
    "我们去银行，然后行走回家？",
    "重庆很重要；长大了就长高了。",
    "一百二十三个人在一起。",
    "他说：“你好！”然后走了……",
    "《三体》是一本好书、真的",
    "女儿去旅游了，绿色的律师。",
    "不对，不要，不是。",
    "你好——再见～",
    # mixed
    "我爱F5-TTS模型",
    "今天是2024年12月31日, happy new year!",
    "用Python写code很有趣。",
    "abc你好def",
    "OK，我们开始吧。Let's go!",
    "Ünïcode café 和 naïve 的区别",
    "东京タワー和서울",
    "ＡＢＣ全角字母１２３",
    "emoji 😀 也可以",
]

# Known outputs (F5_FACTS.md 5.1, verified against the reference when the facts were written).
KNOWN = [
    ("你好，世界。", [" ", "ni2", " ", "hao3", "，", " ", "shi4", " ", "jie4", "。"]),
    (
        "我爱F5-TTS模型",
        [" ", "wo3", " ", "ai4", " ", "F", "5", "-", " ", "T", "T", "S", " ", "mo2", " ", "xing2"],
    ),
    ("Hi; you.", ["H", "i", ",", " ", "y", "o", "u", "."]),
    ("绿", [" ", "lv4"]),
    ("一个", [" ", "yi2", " ", "ge4"]),
    ("不是", [" ", "bu2", " ", "shi4"]),
    ("我们", [" ", "wo3", " ", "men"]),
]


@pytest.fixture(scope="module")
def ref_utils() -> Any:
    return reference_module("model.utils")


@pytest.fixture
def ref_tokens(ref_utils: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The reference frontend, segmenting with jieba (as F5 v1 was trained) instead of rjieba."""
    monkeypatch.setattr(ref_utils, "rjieba", types.SimpleNamespace(cut=jieba.cut))
    return lambda text: ref_utils.convert_char_to_pinyin([text])[0]


@pytest.fixture(scope="module")
def ref_vocab(ref_utils: Any) -> dict[str, int]:
    spec = importlib.util.find_spec("f5_tts")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "infer" / "examples" / "vocab.txt"
    vocab, size = ref_utils.get_tokenizer(str(path), "custom")
    assert size == 2545
    return vocab


@pytest.mark.parametrize("text", SENTENCES)
def test_tokens_equal_the_reference(text: str, ref_tokens: Any) -> None:
    assert text_to_pinyin_tokens(text) == ref_tokens(text)


@pytest.mark.parametrize(("text", "expected"), KNOWN, ids=[k for k, _ in KNOWN])
def test_tokens_of_known_examples(text: str, expected: list[str]) -> None:
    assert text_to_pinyin_tokens(text) == expected


def test_ids_equal_the_reference(
    ref_utils: Any, ref_tokens: Any, ref_vocab: dict[str, int]
) -> None:
    fe = TextFrontend(ref_vocab)
    for text in SENTENCES:
        expected = ref_utils.list_str_to_idx([ref_tokens(text)], ref_vocab)[0].tolist()
        assert fe.ids(text) == expected, text


def test_unknown_tokens_map_to_space_id(ref_vocab: dict[str, int]) -> None:
    fe = TextFrontend(ref_vocab)
    # "<", "|", "}" and "😀" are not in the vocab (F5_FACTS.md 3)
    assert fe.tokens("<|}😀") == ["<", "|", "}", "😀"]
    assert fe.ids("<|}😀") == [0, 0, 0, 0]
    assert fe.ids("a,") == [ref_vocab["a"], 12]


def test_frontend_rejects_a_vocab_without_space_at_zero() -> None:
    with pytest.raises(ValueError, match="space"):
        TextFrontend({"a": 0, " ": 1})


def test_a_word_of_several_non_chinese_wide_chars_does_not_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pypinyin returns "——" as ONE item; the reference would index past the end here.
    monkeypatch.setattr(frontend.jieba, "cut", lambda text: iter(["你好", "——", "再见"]))
    assert text_to_pinyin_tokens("你好——再见") == [
        " ", "ni2", " ", "hao3", "—", "—", " ", "zai4", " ", "jian4",
    ]  # fmt: skip


def test_warmup_is_idempotent() -> None:
    frontend.warmup()
    frontend.warmup()
    assert text_to_pinyin_tokens("好") == [" ", "hao3"]


def test_utf8_len_counts_bytes() -> None:
    assert utf8_len("abc") == 3
    assert utf8_len("你好") == 6
    assert utf8_len("é") == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello there", "Hello there.  "),
        ("Hello there.", "Hello there.  "),
        ("Hello there. ", "Hello there.  "),
        ("Hello!", "Hello!.  "),
        ("你好。", "你好。"),
        ("你好", "你好.  "),
        ("  padded text\n", "padded text.  "),
    ],
)
def test_fix_reference_text(raw: str, expected: str) -> None:
    assert fix_reference_text(raw) == expected


def test_fix_reference_text_rejects_empty() -> None:
    with pytest.raises(ValueError):
        fix_reference_text("  \n")


# --- duration rule: run the reference's infer_batch_process with a model that records its inputs


class _RecordingModel:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def sample(self, cond: torch.Tensor, text: list[list[str]], duration: int, **_: Any) -> Any:
        self.calls.append({"cond": cond.clone(), "text": text[0], "duration": duration})
        return torch.zeros(1, duration, 100), None


@pytest.fixture
def ref_infer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``f5_tts.infer.utils_infer`` imported with its unused heavy imports stubbed out."""
    yield from reference_infer(monkeypatch)


@pytest.mark.parametrize(
    ("step3_text", "raw_text", "gen_text", "speed", "n_samples"),
    [
        # step3_text = the transcript after the reference's preprocess_ref_audio_text ending rule
        (
            "Some call me nature. ",
            "Some call me nature",
            "Hello there, how are you today?",
            1.0,
            24000 * 5 + 77,
        ),
        ("Some call me nature. ", "Some call me nature.", "Short.", 1.0, 24000 * 5),
        (
            "对，这就是我。",
            "对，这就是我。",
            "今天天气很好，我们出去走走吧。",
            1.0,
            24000 * 4 + 255,
        ),
        ("对，这就是我. ", "对，这就是我", "Mixed 中英文 text here.", 1.3, 24000 * 6 + 3),
        ("It works!. ", "It works!", "A somewhat longer sentence to speak slowly.", 0.7, 24000 * 3),
    ],
)
def test_duration_rule_equals_the_reference(
    ref_infer: Any, step3_text: str, raw_text: str, gen_text: str, speed: float, n_samples: int
) -> None:
    model = _RecordingModel()
    audio = torch.full((1, n_samples), 0.2)
    out = list(
        ref_infer.infer_batch_process(
            (audio, 24000), step3_text, [gen_text], model, SilentVocoder(),
            progress=None, device="cpu", speed=speed,
        )
    )  # fmt: skip
    assert len(out) == 1 and len(model.calls) == 1
    ref_text = fix_reference_text(raw_text)
    assert model.calls[0]["text"] == text_to_pinyin_tokens(ref_text + gen_text)
    assert model.calls[0]["duration"] == estimate_frames(
        n_samples // 256, ref_text, gen_text, speed
    )


def test_short_text_is_spoken_slower() -> None:
    # under 10 UTF-8 bytes the reference uses speed 0.3 whatever the requested speed
    assert estimate_frames(100, "x" * 50, "Hi.", speed=2.0) == 100 + int(100 / 50 * 3 / 0.3)
    assert estimate_frames(100, "x" * 50, "0123456789", speed=2.0) == 100 + int(100 / 50 * 10 / 2.0)


@pytest.mark.parametrize(
    ("ref_frames", "ref_text", "speed"), [(0, "abc", 1.0), (10, "", 1.0), (10, "abc", 0.0)]
)
def test_estimate_frames_rejects_bad_input(ref_frames: int, ref_text: str, speed: float) -> None:
    with pytest.raises(ValueError):
        estimate_frames(ref_frames, ref_text, "some generated text", speed)


def test_estimate_frames_grows_with_text() -> None:
    lengths = [estimate_frames(500, "reference text.  ", "w" * n) for n in range(10, 200, 10)]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
    assert isinstance(lengths[0], int) and not isinstance(lengths[0], np.integer)


def test_jieba_stays_quiet_on_first_use() -> None:
    # jieba prints "Building prefix dict ..." to stderr unless its logger is turned down
    code = "from engine.f5 import frontend; frontend.warmup(); print(frontend.text_to_pinyin_tokens('好'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[' ', 'hao3']"
    assert result.stderr == ""
