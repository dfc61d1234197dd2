"""Engine faults are contained (issue 10 item 3), through the real server: an engine exception on
one segment (chunk worker and batch worker) and an out-of-memory on a batch give the affected session
an ``error`` with a stable code, that session goes on with its next segment, other sessions are
untouched, the worker survives, and ``/metrics`` counts the fault."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import numpy as np

from engine.base import SynthOptions
from tests.server_fixtures import SineBurstEngine, collect, make_config, running_server, ws_url
from tests.stream_server.batch_fakes import FakeBatchEngine, gpu_like_cost

# three sentences: the middle one fails
FAULTY = "The first sentence is long enough alone. Boom goes this one here. The third one ends it."
CLEAN = "Another listener speaks at the same time. Nothing should happen to this one."


class ExplodingEngine(SineBurstEngine):
    """Raises in the middle of a segment whose text contains "Boom" (after one chunk)."""

    def synthesize(self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False) -> Iterator[np.ndarray]:
        chunks = super().synthesize(text, voice, options, fast_start=fast_start)
        if "Boom" not in text:
            return chunks

        def explode() -> Iterator[np.ndarray]:
            yield next(iter(chunks))
            raise RuntimeError("injected engine failure")

        return explode()


def fault_count(url: str, kind: str) -> float:
    body = httpx.get(url + "/metrics").text
    m = re.search(rf'^stream_tts_engine_faults_total\{{kind="{kind}"\}} (\S+)$', body, re.M)
    return float(m.group(1)) if m else 0.0


async def two_sessions(url: str) -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]
    msgs = [{"type": "start", "format": "pcm_s16le"}]
    faulty, clean = await asyncio.gather(
        collect(ws_url(url), [*msgs, {"type": "text", "text": FAULTY}, {"type": "end"}]),
        collect(ws_url(url), [*msgs, {"type": "text", "text": CLEAN}, {"type": "end"}]),
    )
    assert faulty.close_code == clean.close_code == 1000
    return faulty.messages, clean.messages


def check(faulty: list[dict], clean: list[dict], code: str) -> None:  # type: ignore[type-arg]
    errors = [m for m in faulty if m["type"] == "error"]
    assert [e["code"] for e in errors] == [code]
    dones = [m["index"] for m in faulty if m["type"] == "segment_done"]
    assert dones == [0, 2]  # the session goes on after the failed segment
    assert faulty[-1]["type"] == "done" and faulty[-1]["segments"] == 2
    assert not [m for m in clean if m["type"] == "error"]
    assert clean[-1]["type"] == "done" and clean[-1]["segments"] == 2


def test_an_exception_in_the_chunk_worker_fails_one_segment_only() -> None:
    with running_server(make_config(), ExplodingEngine()) as url:
        faulty, clean = asyncio.run(two_sessions(url))
        check(faulty, clean, "engine_fault")
        assert fault_count(url, "exception") == 1
        again, _ = asyncio.run(two_sessions(url))  # the worker survived
        assert [m["code"] for m in again if m["type"] == "error"] == ["engine_fault"]


def test_an_exception_in_the_batch_worker_fails_one_segment_only() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, fail_texts=["Boom goes this one here."])
    with running_server(make_config(), engine) as url:
        faulty, clean = asyncio.run(two_sessions(url))
        check(faulty, clean, "engine_fault")
        assert fault_count(url, "exception") == 1


def test_out_of_memory_on_a_batch_is_retried_smaller_and_nobody_fails() -> None:
    # 20 sampler steps of 20 ms each: the three sessions are in flight together
    engine = FakeBatchEngine(cost=gpu_like_cost, oom_over_rows=1, nfe=20, step_delay_s=0.02)
    with running_server(make_config(), engine) as url:
        msgs = [{"type": "start", "format": "pcm_s16le"}]
        results = asyncio.run(_gather(url, [[*msgs, {"type": "text", "text": CLEAN}, {"type": "end"}]] * 3))
        for got in results:
            assert not [m for m in got if m["type"] == "error"]
            assert got[-1]["type"] == "done" and got[-1]["segments"] == 2
        assert fault_count(url, "oom") >= 1


def test_out_of_memory_alone_fails_that_segment_with_its_code() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, oom_texts=["Boom goes this one here."])
    with running_server(make_config(), engine) as url:
        faulty, clean = asyncio.run(two_sessions(url))
        check(faulty, clean, "out_of_memory")
        assert fault_count(url, "oom") >= 1


async def _gather(url: str, scripts: list[list[dict]]) -> list[list[dict]]:  # type: ignore[type-arg]
    got = await asyncio.gather(*(collect(ws_url(url), s) for s in scripts))
    return [g.messages for g in got]
