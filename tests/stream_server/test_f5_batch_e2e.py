"""End to end through the real server with a tiny F5 model and the batch worker: two sessions'
segments sampled in the same steps give the same mel and audio as each sampled alone, and
``stream-tts bench`` runs against the F5 server."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from engine.config import EngineConfig
from engine.f5.engine import F5Engine
from engine.f5.model import DiT
from engine.f5.weights import ResolvedWeights
from stream_server.app import create_app
from stream_server.batch_worker import BatchScheduler
from stream_server.config import AppConfig, ServerConfig
from stream_server.tools import bench
from tests.engine.f5.test_engine import write_tiny_vocos, write_voice
from tests.f5_fixtures import randomize_, small_config, write_safetensors_checkpoint, write_vocab
from tests.server_fixtures import collect, serve_app, ws_url

TEXTS = {"alice": "Alice says a first short sentence.", "bob": "Bob answers with another one here."}


class Recording(F5Engine):
    """Remembers every item opened (with its text) and the rows of every sampler step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[tuple[str, Any]] = []
        self.sample_rows: list[int] = []

    def open_item(self, text, voice, options, *, fast_start=False):  # type: ignore[no-untyped-def,override]
        item = super().open_item(text, voice, options, fast_start=fast_start)
        self.items.append((text, item))
        return item

    def sample_step(self, items):  # type: ignore[no-untyped-def,override]
        self.sample_rows.append(len(items))
        super().sample_step(items)


@pytest.fixture(scope="module")
def f5_engine(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    root = tmp_path_factory.mktemp("f5batch_e2e")
    model_cfg = small_config(text_num_embeds=2545)
    ckpt = write_safetensors_checkpoint(
        randomize_(DiT(model_cfg), seed=1).state_dict(), root / "model_1250000.safetensors"
    )
    weights = ResolvedWeights(ckpt, write_vocab(root / "vocab.txt"), write_tiny_vocos(root / "vocos"))
    voices = root / "voices"
    voices.mkdir()
    write_voice(voices, "alice", 0.5)
    write_voice(voices, "bob", 0.3, text="Other reference words, a bit longer.")
    cfg = EngineConfig(engine="f5", device="cpu", voices_dir=str(voices))
    return Recording(cfg, model_config=model_cfg, weights=weights)


@pytest.fixture(scope="module")
def f5_server(f5_engine: Recording) -> Iterator[tuple[str, FastAPI]]:
    # batch whenever the limits allow, whatever this CPU's cost table says
    config = AppConfig(server=replace(ServerConfig(port=0), batch_marginal_ratio=100.0, batch_ride_along_ratio=100.0))
    app = create_app(config, f5_engine)
    with serve_app(app, config) as url:
        yield url, app


@pytest.fixture(scope="module")
def f5_url(f5_server: tuple[str, FastAPI]) -> str:
    return f5_server[0]


def script(voice: str, seed: int) -> list[dict[str, Any]]:
    return [
        {"type": "start", "voice": voice, "format": "pcm_s16le", "options": {"seed": seed}},
        {"type": "text", "text": TEXTS[voice]},
        {"type": "end"},
    ]


def pcm(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), dtype="<i2")


def test_two_sessions_batched_equal_each_alone(f5_url: str, f5_engine: Recording) -> None:
    url = ws_url(f5_url)

    async def together() -> list[Any]:
        return list(await asyncio.gather(collect(url, script("alice", 11)), collect(url, script("bob", 22))))

    start = len(f5_engine.items)
    rows_start = len(f5_engine.sample_rows)
    batched = asyncio.run(together())
    batched_mels = {text: item.mel for text, item in f5_engine.items[start:]}
    assert max(f5_engine.sample_rows[rows_start:]) == 2  # the two segments shared sampler steps

    solo = {}
    for voice, seed in (("alice", 11), ("bob", 22)):
        n = len(f5_engine.items)
        solo[voice] = asyncio.run(collect(url, script(voice, seed)))
        (text, item), = f5_engine.items[n:]
        assert text == TEXTS[voice]
        assert item.mel is not None and batched_mels[text] is not None
        assert item.mel.shape == batched_mels[text].shape
        np.testing.assert_allclose(batched_mels[text], item.mel, atol=1e-4, rtol=0)

    for got, voice in zip(batched, ("alice", "bob"), strict=True):
        assert got.close_code == 1000 and got.messages[-1]["type"] == "done"
        assert not [m for m in got.messages if m["type"] == "error"]
        a, b = pcm(got.frames), pcm(solo[voice].frames)
        assert a.shape == b.shape and a.size > 0
        assert np.max(np.abs(a.astype(np.int32) - b.astype(np.int32))) <= 2  # 16-bit rounding


def test_the_server_runs_the_batch_worker_for_f5(f5_server: tuple[str, FastAPI]) -> None:
    url, app = f5_server
    assert isinstance(app.state.hub.scheduler, BatchScheduler)
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'^stream_tts_batch_rows_count\{kind="sample"\} [1-9]', metrics, re.M)


def test_stream_tts_bench_against_the_f5_server(f5_url: str, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("A short line for the benchmark.\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    args = parser.parse_args(["--url", ws_url(f5_url), "--clients", "2", "--texts", str(texts),
                              "--voice", "alice", "--timeout", "120", "--json", str(out)])
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert [lv["clients"] for lv in report["levels"]] == [2]
    assert all(lv["errors"] == 0 for lv in report["levels"])
