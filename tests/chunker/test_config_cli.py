"""ChunkerConfig validation and the ``python -m chunker`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chunker import ChunkerConfig, SentenceChunker

ROOT = Path(__file__).resolve().parents[2]

BAD_CONFIGS = [
    ({"max_chars": 4}, "max_chars must be >= 8"),
    ({"max_chars": 100.0}, "max_chars must be int"),
    ({"max_chars": True}, "max_chars must be int"),
    ({"first_min_chars": 0}, "first_min_chars must be in"),
    ({"first_min_chars": 300}, "first_min_chars must be in"),
    ({"min_chars": 0}, "min_chars must be in"),
    ({"max_buffer_chars": 100}, "max_buffer_chars .* must be >= max_chars"),
    ({"fast_start": 1}, "fast_start must be bool"),
    ({"strip_markdown": "yes"}, "strip_markdown must be bool"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config_raises_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen_and_defaults_match_the_contract() -> None:
    c = ChunkerConfig()
    assert (c.max_chars, c.first_min_chars, c.fast_start) == (220, 24, True)
    with pytest.raises(AttributeError):
        c.max_chars = 10  # type: ignore[misc]


def test_chunker_rejects_a_non_config() -> None:
    with pytest.raises(TypeError, match="ChunkerConfig"):
        SentenceChunker({"max_chars": 10})  # type: ignore[arg-type]


def cli(args: list[str], text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chunker", *args],
        input=text,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=60,
    )


TEXT = "Hi. Dr. Smith arrived at 5 p.m. today, e.g. with coins. 你好。今天天气很好！Bye now.\n"


def test_cli_prints_one_json_object_per_segment() -> None:
    r = cli([], TEXT)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == list(range(len(rows)))
    assert rows[0]["text"] == "Hi. Dr. Smith arrived at 5 p.m. today,"
    assert "今天天气很好！" in r.stdout  # ensure_ascii=False: CJK printed as is


def test_cli_pieces_print_the_same_segments() -> None:
    whole = cli([], TEXT)
    for seed in ("1", "2"):
        split = cli(["--pieces", "15", "--seed", seed], TEXT)
        assert split.returncode == 0, split.stderr
        assert split.stdout == whole.stdout


def test_cli_flags_change_the_chunking() -> None:
    default = cli([], TEXT).stdout.splitlines()
    no_fast = cli(["--no-fast-start", "--max-chars", "60", "--first-min-chars", "10"], TEXT)
    assert no_fast.returncode == 0, no_fast.stderr
    rows = [json.loads(line)["text"] for line in no_fast.stdout.splitlines()]
    assert rows[0] == "Hi. Dr. Smith arrived at 5 p.m. today, e.g. with coins."
    assert len(rows) != len(default)


@pytest.mark.parametrize(
    "args",
    [["--max-chars", "abc"], ["--pieces", "0"], ["--max-chars", "5"], ["--bogus"]],
    ids=["not-int", "zero-pieces", "invalid-config", "unknown-flag"],
)
def test_cli_bad_flags_exit_2(args: list[str]) -> None:
    r = cli(args, TEXT)
    assert r.returncode == 2
    assert "error" in r.stderr
    assert r.stdout == ""
