"""Admission control: the capacity model, and refusals on a live server with a known capacity."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stream_server.admission import MIN_SEGMENTS, Admission
from stream_server.app import create_app
from stream_server.config import AppConfig, ServerConfig
from tests.server_fixtures import SineBurstEngine, serve_app, ws_url


def measured(workers: int, headroom: float, rtf: float) -> Admission:
    adm = Admission(workers, headroom)
    for _ in range(MIN_SEGMENTS):
        adm.observe(audio_s=2.0, synth_s=2.0 * rtf)
    return adm


def test_capacity_is_unknown_until_segments_are_measured_then_headroom_times_workers_over_rtf() -> None:
    adm = Admission(2, 0.5)
    for _ in range(MIN_SEGMENTS - 1):
        adm.observe(audio_s=1.0, synth_s=0.1)
        assert adm.capacity() == math.inf and adm.check("turn", 1000, None) is None
    adm.observe(audio_s=1.0, synth_s=0.1)
    assert adm.rtf == pytest.approx(0.1)
    assert adm.capacity() == pytest.approx(10.0)


def test_the_rtf_follows_recent_segments() -> None:
    adm = measured(1, 1.0, 0.1)
    for _ in range(200):
        adm.observe(audio_s=1.0, synth_s=0.4)
    assert adm.rtf == pytest.approx(0.4, rel=1e-3)


def test_check_refuses_past_capacity_counts_and_clamps_the_retry_hint() -> None:
    adm = measured(2, 0.5, 0.1)  # capacity 10
    assert adm.check("turn", 9, None) is None
    refusal = adm.check("turn", 10, None)
    assert refusal is not None and refusal.code == "over_capacity" and refusal.retry_after_ms == 1000
    assert refusal.reason == "turn" and "capacity 10" in refusal.message
    hints = [adm.check("session", 10, s) for s in (0.01, 2.5, 60.0)]
    assert [h.retry_after_ms for h in hints if h] == [250, 2500, 10_000]
    assert adm.refusals == {"session": 3, "turn": 1}


def test_headroom_zero_turns_admission_off() -> None:
    adm = measured(1, 0.0, 10.0)
    assert adm.capacity() == math.inf and adm.check("turn", 10_000, None) is None


class FakeSpeaker:
    def __init__(self, speaking: bool, left_s: float | None) -> None:
        self._speaking, self._left = speaking, left_s

    def speaking(self, now: float) -> bool:
        return self._speaking

    def playback_left_s(self, now: float) -> float | None:
        return self._left


def test_admit_counts_speaking_sessions_and_hints_the_soonest_one_done() -> None:
    adm = measured(1, 1.0, 0.5)  # capacity 2
    quiet = [FakeSpeaker(False, 0.0)] * 5
    assert adm.admit("turn", [FakeSpeaker(True, None), *quiet], 0.0) is None
    refusal = adm.admit("turn", [FakeSpeaker(True, None), FakeSpeaker(True, 3.0), FakeSpeaker(True, 1.5), *quiet], 0.0)
    assert refusal is not None and refusal.retry_after_ms == 1500


async def _first_audio(url: str, text: str) -> tuple[object, list[dict[str, object]]]:
    ws = await connect(url)
    await ws.send(json.dumps({"type": "text", "text": text}))
    await ws.send(json.dumps({"type": "flush"}))
    msgs: list[dict[str, object]] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(raw, bytes):
            return ws, msgs
        msgs.append(json.loads(raw))


def test_a_server_at_capacity_refuses_new_turns_and_sessions_and_counts_them() -> None:
    # 5 s of audio per sentence: the two speakers stay speaking (their clients play) for seconds
    config = AppConfig(server=ServerConfig(port=0, workers=1, admission_headroom=1.0))
    app = create_app(config, SineBurstEngine(ms_per_char=400.0))
    with serve_app(app, config) as base:
        hub = app.state.hub
        for _ in range(MIN_SEGMENTS):  # a known speed: RTF 0.5 on 1 worker -> capacity 2 sessions
            hub.admission.observe(audio_s=1.0, synth_s=0.5)
        hub.admission.observe = lambda audio_s, synth_s: None
        url = ws_url(base)

        async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], int | None]:
            async with connect(url) as c:  # connected while the server was free
                a, _ = await _first_audio(url, "Hello there.")
                b, _ = await _first_audio(url, "Hello again.")
                # two sessions speak now: c's first text would be a third
                await c.send(json.dumps({"type": "text", "text": "Me too."}))
                turn = [json.loads(await asyncio.wait_for(c.recv(), 30))]
                await c.send(json.dumps({"type": "end"}))
                async for raw in c:  # the session goes on: done, with no audio
                    assert not isinstance(raw, bytes)
                    turn.append(json.loads(raw))
            async with connect(url) as d:
                session = [json.loads(await asyncio.wait_for(d.recv(), 30))]
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(d.recv(), 30)
                close_code = d.close_code
            for ws in (a, b):
                await ws.close()  # type: ignore[attr-defined]
            return turn, session, close_code

        turn, session, close_code = asyncio.run(scenario())
        assert turn[0]["type"] == "error" and turn[0]["code"] == "over_capacity"
        assert isinstance(turn[0]["retry_after_ms"], int) and 250 <= turn[0]["retry_after_ms"] <= 10_000
        assert turn[-1]["type"] == "done" and turn[-1]["audio_ms"] == 0
        assert session[0]["code"] == "over_capacity" and "retry_after_ms" in session[0]
        assert close_code == 1013
        metrics = httpx.get(base + "/metrics").text
        assert 'stream_tts_admission_refusals_total{reason="turn"} 1.0' in metrics
        assert 'stream_tts_admission_refusals_total{reason="session"} 1.0' in metrics
        assert "stream_tts_capacity_sessions 2.0" in metrics


def test_a_start_up_calibration_seeds_the_capacity_until_segments_take_over() -> None:
    adm = Admission(2, 0.5)
    adm.seed(audio_s=4.0, synth_s=0.4)
    assert adm.rtf == pytest.approx(0.1) and adm.capacity() == pytest.approx(10.0)
    for _ in range(300):
        adm.observe(audio_s=1.0, synth_s=0.2)
    assert adm.rtf == pytest.approx(0.2, rel=1e-3)


def test_behind_real_time_refuses_whatever_the_estimate_unless_admission_is_off() -> None:
    unknown = Admission(2, 0.7)  # no measurement yet: capacity unknown
    assert unknown.admit("turn", [], 0.0) is None
    refusal = unknown.admit("turn", [], 0.0, behind=True)
    assert refusal is not None and "behind real time" in refusal.message
    assert measured(2, 0.7, 0.01).admit("turn", [], 0.0, behind=True) is not None
    assert Admission(2, 0.0).admit("turn", [], 0.0, behind=True) is None


def test_a_missed_deadline_is_a_playing_client_run_dry() -> None:
    from stream_server.scheduler import STARTUP_CUSHION_S, Channel, missed_deadline

    ch = Channel("s", lambda event: None)
    assert not missed_deadline(ch, 100.0)  # not playing yet
    ch.clock_start, ch.produced_s = 10.0, 2.0  # the client plays until 12.0
    assert not missed_deadline(ch, 11.9) and missed_deadline(ch, 12.1)
    ch.produced_s = STARTUP_CUSHION_S / 2  # still in its start-up cushion: deadline = arrival
    assert not missed_deadline(ch, 100.0)
