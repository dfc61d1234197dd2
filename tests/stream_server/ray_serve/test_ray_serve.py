"""Issue 11: the app on Ray Serve — a local Ray with 2 CPU replicas behind Ray's proxy.

Needs the ``ray`` extra (installed by ``make test``). One Ray instance serves the module: first
an eSpeak application (sessions, overlay, metrics, a killed replica), then a small random-weight
F5 application (a voice uploaded through one replica is used on the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from stream_server.config import load_config

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from stream_server import ray_serve  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[3]
TEXT = "Hello from a replica. This is the second sentence of the test."
REPLICA_HEADER = "x-stream-tts-replica"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deploy(port: int, options: ray_serve.RayOptions, server: dict[str, Any] | None = None,
            **engine: Any) -> None:
    overrides = {"server.max_sessions": 16, **{f"engine.{k}": v for k, v in engine.items()}}
    overrides.update({f"server.{k}": v for k, v in (server or {}).items()})
    config = load_config(None, overrides)
    serve.run(ray_serve.build_application(config, options), name=ray_serve.APP_NAME,
              route_prefix="/")
    _wait_ready(port, options.replicas)


def _wait_ready(port: int, replicas: int, timeout_s: float = 180.0) -> None:
    """Until Ray reports every replica running, the ingress answers /healthz and (HAProxy ingress)
    HAProxy has health-checked every replica into its backend: until then it sends everything to
    the replicas it has, or to Ray's proxy as its fallback."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(ray_serve.APP_NAME)
        if status is not None and str(status.status).endswith("RUNNING"):
            dep = status.deployments[ray_serve.DEPLOYMENT_NAME]
            running = dep.replica_states.get("RUNNING", 0)
            if (running == replicas and _get(port, "/healthz").status_code == 200
                    and _haproxy_servers_up() in (None, replicas)):
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray Serve app not ready: {serve.status()}")


def _haproxy_servers_up() -> int | None:
    """Replica servers UP in HAProxy's app backend (its stats page as CSV); None without HAProxy."""
    stats_port = os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT")
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1" or not stats_port:
        return None
    try:
        text = httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5).text
    except httpx.HTTPError:
        return 0
    rows = list(csv.DictReader(text.lstrip("# ").splitlines()))
    return sum(1 for r in rows if r.get("pxname", "").startswith("http-")
               and r.get("svname") not in ("FRONTEND", "BACKEND")
               and r.get("bck") != "1" and r.get("status") == "UP")


def _get(port: int, path: str) -> httpx.Response:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    except httpx.HTTPError:
        return httpx.Response(599)


@pytest.fixture(scope="module")
def ray_port() -> Iterator[int]:
    port = _free_port()
    # HAProxy's own metrics and stats listeners: free ports, not Ray's fixed 9101 / 8404
    os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
    os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
    ray_serve.start_local(
        "127.0.0.1", port, ingress="haproxy", num_cpus=4, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


ESPEAK_SERVER = {"token_secret": "fixed-for-redeploys-0123456789"}  # else each deploy draws one
GRACE_S = 10.0


@pytest.fixture(scope="module")
def espeak_app(ray_port: int) -> Iterator[int]:
    options = ray_serve.RayOptions(replicas=2, num_cpus=0.5, graceful_shutdown_s=GRACE_S)
    _deploy(ray_port, options, ESPEAK_SERVER, engine="espeak")
    yield ray_port
    serve.delete(ray_serve.APP_NAME)


async def _session(port: int, text: str, pieces: int = 1, gap_s: float = 0.0) -> dict[str, Any]:
    """One /v1/stream session (PCM); text sent in ``pieces`` with ``gap_s`` between them."""
    out: dict[str, Any] = {"replica": None, "pcm": 0, "done": None, "close": None, "error": None}
    words = text.split(" ")
    step = max(1, len(words) // pieces)
    chunks = [" ".join(words[i:i + step]) + " " for i in range(0, len(words), step)]
    async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await ws.send(json.dumps({"type": "start", "format": "pcm_s16le", "voice": "en-us"}))
        ready = json.loads(await ws.recv())
        out["replica"] = ready.get("replica")

        async def send_all() -> None:
            for chunk in chunks:
                await ws.send(json.dumps({"type": "text", "text": chunk}))
                await asyncio.sleep(gap_s)
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send_all())
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    out["pcm"] += len(msg)
                else:
                    body = json.loads(msg)
                    if body["type"] == "done":
                        out["done"] = body
                    elif body["type"] == "error":
                        out["error"] = body
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
        out["close"] = ws.close_code
    return out


def test_sessions_spread_over_both_replicas_with_their_audio(espeak_app: int) -> None:
    async def run() -> list[dict[str, Any]]:
        texts = [f"Session number {i} says hello. {TEXT}" for i in range(8)]
        return await asyncio.gather(*[_session(espeak_app, t) for t in texts])

    results = asyncio.run(asyncio.wait_for(run(), 120))
    for r in results:
        assert r["close"] == 1000 and r["error"] is None and r["done"] is not None
        # every byte of PCM announced by `done` arrived (24 kHz s16le: 48 bytes per ms)
        assert r["pcm"] == round(r["done"]["audio_ms"] * 48) and r["pcm"] > 48_000
    assert len({r["replica"] for r in results}) == 2


def test_info_header_and_metrics_name_the_replica(espeak_app: int) -> None:
    seen = set()
    for _ in range(12):
        info = _get(espeak_app, "/v1/info")
        assert info.json()["replica"] == info.headers[REPLICA_HEADER]
        seen.add(info.json()["replica"])
    assert len(seen) == 2
    metrics = _get(espeak_app, "/metrics")
    assert f'replica="{metrics.headers[REPLICA_HEADER]}"' in metrics.text
    # each replica's own endpoint, as listed for Prometheus service discovery
    targets = _get(espeak_app, "/v1/replicas/prometheus").json()
    assert {t["labels"]["replica"] for t in targets} == seen
    for t in targets:
        own = httpx.get(f"http://{t['targets'][0]}/metrics", timeout=10).text
        assert f'stream_tts_sessions_total{{replica="{t["labels"]["replica"]}"}}' in own


def test_the_ingress_is_haproxy_and_declines_permessage_deflate(espeak_app: int) -> None:
    """HAProxy carries the socket to the replica's own HTTP server; Ray has no option against
    deflate there: ``start_local`` installs ``proxy_setup`` as the callback that turns it off."""
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    from websockets.sync.client import connect as connect_sync

    with connect_sync(f"ws://127.0.0.1:{espeak_app}/v1/stream") as ws:  # offers deflate by default
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


def test_overlay_say_on_any_replica_reaches_a_page_on_another(espeak_app: int) -> None:
    async def run() -> tuple[str, list[tuple[str, str]], list[str]]:
        async with connect(f"ws://127.0.0.1:{espeak_app}/v1/overlay/events") as page:
            page_replica = page.response.headers[REPLICA_HEADER]
            sent: list[tuple[str, str]] = []  # (text, replica that took the POST)
            async with httpx.AsyncClient() as http:
                for i in range(20):
                    r = await http.post(f"http://127.0.0.1:{espeak_app}/v1/overlay/say",
                                        json={"text": f"message {i}"})
                    assert r.status_code == 202, r.text
                    sent.append((f"message {i}", r.headers[REPLICA_HEADER]))
                    if r.headers[REPLICA_HEADER] != page_replica:
                        break
            got = []
            for _ in sent:  # read each in order, reporting it played so the next one comes
                msg = json.loads(await asyncio.wait_for(page.recv(), 20))
                assert msg["type"] == "say"
                got.append(msg["text"])
                await page.send(json.dumps({"type": "played", "id": msg["id"]}))
        return page_replica, sent, got

    page_replica, sent, got = asyncio.run(run())
    assert sent[-1][1] != page_replica  # the last one went through the other replica
    assert got == [text for text, _ in sent]


def test_killing_a_replica_ends_only_its_sessions(espeak_app: int) -> None:
    async def run() -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
        long_text = " ".join([TEXT] * 6)
        tasks = []
        for _ in range(6):  # staggered: each routing decision sees the sessions already placed
            tasks.append(asyncio.create_task(_session(espeak_app, long_text, pieces=12, gap_s=0.5)))
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.5)  # every session is open and speaking
        info = await asyncio.to_thread(_get, espeak_app, "/v1/info")
        victim = info.json()["replica"]
        actor = ray.get_actor(ray_serve.replica_actor_name(victim), namespace="serve")
        ray.kill(actor, no_restart=False)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        # a new session right away: a client reconnecting (the proxy may need a moment, on a busy
        # machine, to stop routing to the dead replica: a few quick retries, as a client would)
        after: dict[str, Any] = {"close": None, "done": None}
        for _ in range(5):
            with contextlib.suppress(OSError, WebSocketException):
                after = await asyncio.wait_for(_session(espeak_app, TEXT), 60)
            if after["close"] == 1000:
                break
            await asyncio.sleep(1.0)
        return results, victim, after

    results, victim, after = asyncio.run(run())
    on_victim = [r for r in results if r["replica"] == victim]
    others = [r for r in results if r["replica"] != victim]
    assert on_victim and others, [r["replica"] for r in results]
    for r in on_victim:  # ended early with a close the client can reconnect on
        assert r["done"] is None and r["close"] != 1000
    for r in others:  # untouched: the whole text, all its audio
        assert r["close"] == 1000 and r["error"] is None and r["done"] is not None
        assert r["pcm"] == round(r["done"]["audio_ms"] * 48)
    assert after["close"] == 1000 and after["done"] is not None  # new sessions work at once
    _wait_ready(espeak_app, 2)  # and Ray brings the killed replica back


async def _held_session(port: int, text: str, pieces: int, gap_s: float, hold_s: float,
                        opened: asyncio.Event) -> dict[str, Any]:
    """A session that speaks ``text`` in one turn, then stays connected up to ``hold_s`` (as a
    chat client does between turns): its audio, its ``flushed``, and who closed it when."""
    out: dict[str, Any] = {"replica": None, "pcm": 0, "flushed": None, "close": None,
                           "closed_after_s": None}
    words = text.split(" ")
    step = max(1, len(words) // pieces)
    chunks = [" ".join(words[i:i + step]) + " " for i in range(0, len(words), step)]
    async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        out["replica"] = ws.response.headers[REPLICA_HEADER]
        await ws.send(json.dumps({"type": "start", "format": "pcm_s16le"}))
        opened.set()
        for chunk in chunks:
            await ws.send(json.dumps({"type": "text", "text": chunk}))
            await asyncio.sleep(gap_s)
        await ws.send(json.dumps({"type": "flush"}))
        t_flushed = time.monotonic()
        try:
            async with asyncio.timeout(hold_s):
                async for msg in ws:
                    if isinstance(msg, bytes):
                        out["pcm"] += len(msg)
                    elif json.loads(msg)["type"] == "flushed":
                        out["flushed"] = json.loads(msg)
                        t_flushed = time.monotonic()
            out["close"] = ws.close_code  # the server (or the ingress) closed it
            out["closed_after_s"] = time.monotonic() - t_flushed
        except TimeoutError:
            pass  # still open after hold_s: closed by us on the way out
        except ConnectionClosed:
            out["close"] = ws.close_code
            out["closed_after_s"] = time.monotonic() - t_flushed
    return out


def test_replicas_leaving_finish_their_turns_then_close_for_a_reconnect(espeak_app: int) -> None:
    """A redeploy (Ray replaces every replica; a scale-down drains a replica the same way) while a
    session speaks on each replica: both turns end with all their audio, then each socket is
    closed with 1012 (service restart: reconnect) within the grace period; new sessions go to the
    new replicas."""
    long_text = " ".join([TEXT] * 3)

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # one session on each replica: the ingress balances by open connections
        first_open, second_open = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(_held_session(espeak_app, long_text, 6, 0.4, 90, first_open))
        await first_open.wait()
        second = asyncio.create_task(_held_session(espeak_app, long_text, 6, 0.4, 90, second_open))
        await second_open.wait()
        await asyncio.sleep(0.5)  # both are speaking
        options = ray_serve.RayOptions(replicas=2, num_cpus=0.5, graceful_shutdown_s=GRACE_S)
        redeploy = asyncio.create_task(asyncio.to_thread(
            _deploy, espeak_app, options, ESPEAK_SERVER, engine="espeak"))
        results = await asyncio.gather(first, second)
        await redeploy
        after = await asyncio.wait_for(_session(espeak_app, TEXT), 60)
        return list(results), after

    results, after = asyncio.run(asyncio.wait_for(run(), 300))
    assert len({r["replica"] for r in results}) == 2, [r["replica"] for r in results]
    for r in results:
        # the turn finished: `flushed` and every byte it announced ...
        assert r["flushed"] is not None and r["pcm"] == round(r["flushed"]["audio_ms"] * 48) > 48_000
        # ... then the leaving replica closed the idle socket for a reconnect
        assert r["close"] == 1012 and r["closed_after_s"] < GRACE_S + 30, r
    assert after["close"] == 1000 and after["done"] is not None
    assert after["replica"] not in {r["replica"] for r in results}


def _clip_wav(seconds: float = 1.5) -> bytes:
    t = np.arange(round(seconds * 24000)) / 24000
    audio = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), 24000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


KEY = "test-key-0123456789abcdef"
BALLAST_KEY = "test-key-ballast-0123456789"  # holds a session open to steer the ingress
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def f5_app(espeak_app: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A small random-weight F5 app with access control on (one session per key)."""
    serve.delete(ray_serve.APP_NAME)
    root = tmp_path_factory.mktemp("ray_f5")
    voices = root / "voices"
    voices.mkdir()
    keys = root / "keys.txt"
    keys.write_text(KEY + "\n" + BALLAST_KEY + "\n")
    options = ray_serve.RayOptions(replicas=2, num_cpus=0.5,
                                   engine_factory="tests.ray_engines:tiny_f5")
    server = {"api_keys_file": str(keys), "key_max_sessions": 1}
    _deploy(espeak_app, options, server, voices_dir=str(voices))
    yield espeak_app, voices
    serve.delete(ray_serve.APP_NAME)


def test_a_voice_uploaded_through_one_replica_speaks_on_the_other(f5_app: tuple[int, Path]) -> None:
    port, voices = f5_app
    up = httpx.post(f"http://127.0.0.1:{port}/v1/voices", timeout=60, headers=AUTH,
                    data={"name": "bob", "text": "Some reference words."},
                    files={"audio": ("bob.wav", _clip_wav(), "audio/wav")})
    assert up.status_code in (200, 201), up.text
    uploader = up.headers[REPLICA_HEADER]

    async def other_replica_session() -> dict[str, Any]:
        # The ingress balances by least connections: a session held open on the uploading
        # replica sends the next one to the other replica.
        ballast_headers = {"Authorization": f"Bearer {BALLAST_KEY}"}
        for _ in range(20):
            async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers=ballast_headers) as ballast:
                if ballast.response.headers[REPLICA_HEADER] != uploader:
                    continue
                async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers=AUTH) as ws:
                    if ws.response.headers[REPLICA_HEADER] == uploader:
                        continue
                    await ws.send(json.dumps({"type": "start", "voice": "bob", "format": "pcm_s16le",
                                              "options": {"seed": 1}}))
                    await ws.send(json.dumps({"type": "text", "text": "Hi there."}))
                    await ws.send(json.dumps({"type": "end"}))
                    msgs, pcm = [], 0
                    async for m in ws:
                        if isinstance(m, bytes):
                            pcm += len(m)
                        else:
                            msgs.append(json.loads(m))
                    return {"messages": msgs, "pcm": pcm, "close": ws.close_code}
        raise AssertionError("every session landed on the uploading replica")

    got = asyncio.run(asyncio.wait_for(other_replica_session(), 120))
    types = [m["type"] for m in got["messages"]]
    assert types[0] == "ready" and got["messages"][0]["voice"] == "bob", got["messages"]
    assert got["messages"][0]["replica"] != uploader
    assert "error" not in types and types[-1] == "done" and got["pcm"] > 0
    assert os.path.exists(voices / "bob.wav")


def test_a_key_session_limit_holds_across_replicas(f5_app: tuple[int, Path]) -> None:
    port, _ = f5_app

    async def run() -> tuple[str, str, dict[str, Any], int | None]:
        async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers=AUTH) as first:
            home = first.response.headers[REPLICA_HEADER]
            for _ in range(20):  # the key's second session, on the other replica
                async with connect(f"ws://127.0.0.1:{port}/v1/stream",
                                   additional_headers=AUTH) as ws:
                    if ws.response.headers[REPLICA_HEADER] == home:
                        continue
                    refusal = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    with contextlib.suppress(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 20)
                    return home, ws.response.headers[REPLICA_HEADER], refusal, ws.close_code
        raise AssertionError("every session landed on the first session's replica")

    home, other, refusal, close = asyncio.run(asyncio.wait_for(run(), 120))
    assert other != home
    assert refusal["code"] == "too_many_sessions" and close == 1013
