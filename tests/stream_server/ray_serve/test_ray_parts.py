"""The Ray Serve module's Ray-free parts: options, the overlay actor's logic, the directory."""

from __future__ import annotations

import asyncio

import pytest

from stream_server import ray_serve
from stream_server.errors import ConfigError
from stream_server.ray_serve import RayOptions
from stream_server.ray_serve import state as ray_state
from stream_server.ray_serve.state import ClusterStateImpl, OverlayActorImpl


def test_options_are_validated() -> None:
    assert ray_serve.parse_autoscale("1:4") == (1, 4)
    for bad in ("4", "a:b", "1:2:3"):
        with pytest.raises(ConfigError):
            ray_serve.parse_autoscale(bad)
    for kwargs in ({"replicas": 0}, {"autoscale": (3, 2)}, {"autoscale": (0, 0)},
                   {"target_sessions": 0}, {"num_gpus": -1}, {"engine_factory": "nocolon"}):
        with pytest.raises(ConfigError):
            RayOptions(**kwargs)  # type: ignore[arg-type]


def test_app_builder_rejects_unknown_args() -> None:
    with pytest.raises(ConfigError, match="unknown stream-tts Ray args: replica"):
        ray_serve.app_builder({"replica": 2})


def test_overlay_actor_serves_pages_of_every_replica_in_order() -> None:
    async def run() -> None:
        actor = OverlayActorImpl(max_pending=4, max_chars=100)
        page_a, page_b = await actor.connect(), await actor.connect()
        assert await actor.call("say", "one", "", "") == ("ok", (("m1", "one", "", ""), 0))
        assert (await actor.call("say", "two", "", ""))[1][1] == 1  # position behind "one"
        for page in (page_a, page_b):  # every page gets the same current message
            events = await actor.poll(page, 1.0)
            assert [e["text"] for e in events] == ["one"]
        await actor.call("played", "m1")
        assert [e["text"] for e in await actor.poll(page_b, 1.0)] == ["two"]
        assert await actor.poll(page_b, 0.05) == []  # nothing else pending
        for _ in range(4):
            assert (await actor.call("say", "more", "", ""))[0] == "ok"
        status, (http_status, code, _) = await actor.call("say", "full", "", "")
        assert (status, http_status, code) == ("error", 429, "queue_full")
        with pytest.raises(ValueError):
            await actor.call("connect")

    asyncio.run(run())


def test_overlay_actor_forgets_pages_that_stop_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_state, "_POLL_S", 0.05)
    monkeypatch.setattr(ray_state, "_LISTENER_TTL_S", 0.15)

    async def run() -> None:
        actor = OverlayActorImpl(max_pending=4, max_chars=100)
        page = await actor.connect()
        await actor.call("say", "hello", "", "")
        assert (await actor.call("snapshot"))[1]["listeners"] == 1
        await asyncio.sleep(0.5)  # the page's replica died: no polls
        snap = (await actor.call("snapshot"))[1]
        assert snap["listeners"] == 0
        # the unread message goes back to the queue for the next page
        assert snap["current"] is None and [m["text"] for m in snap["pending"]] == ["hello"]
        assert await actor.poll(page, 0.01) == [{"type": "_close"}]

    asyncio.run(run())


def test_directory_drops_replicas_that_stop_reporting(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(ray_state.time, "monotonic", lambda: now[0])
    directory = ClusterStateImpl()
    directory.heartbeat("a", {"metrics": "127.0.0.1:1"})
    directory.heartbeat("b", {"metrics": "127.0.0.1:2"})
    assert [e["replica"] for e in directory.replicas()] == ["a", "b"]
    now[0] += ray_state._REPLICA_TTL_S - 1
    directory.heartbeat("b", {"metrics": "127.0.0.1:2"})
    now[0] += 2
    assert directory.replicas() == [{"replica": "b", "metrics": "127.0.0.1:2"}]


def test_cluster_state_holds_per_key_limits_across_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(ray_state.time, "monotonic", lambda: now[0])
    state = ClusterStateImpl()
    state.heartbeat("a", {})
    state.heartbeat("b", {})
    ok_a = state.lease("a", "key_1", 2)
    ok_b = state.lease("b", "key_1", 2)  # the same key on another replica counts against one limit
    assert ok_a[0] == ok_b[0] == "ok"
    status, (code, _, http_status, retry) = state.lease("b", "key_1", 2)
    assert (status, code, http_status, retry) == ("error", "too_many_sessions", 429, 1)
    assert state.lease("b", "key_2", 2)[0] == "ok"  # other keys are not affected
    unlimited = state.lease("b", "key_1", 0)  # 0 = no limit (a redeploy's new config)
    assert unlimited[0] == "ok"
    state.release(unlimited[1])
    state.release(ok_a[1])
    assert state.open_sessions("key_1") == 1
    # replica b stops reporting (killed): its leases go with it
    now[0] += ray_state._REPLICA_TTL_S - 1
    state.heartbeat("a", {})
    now[0] += 2
    assert [e["replica"] for e in state.replicas()] == ["a"]
    assert state.open_sessions("key_1") == 0 and state.open_sessions("key_2") == 0
    # requests per minute are one budget across replicas too
    assert [state.admit("key_3", 3)[0] for _ in range(4)] == ["ok", "ok", "ok", "error"]


def test_the_ingress_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_server.ray_serve import ingress

    monkeypatch.setattr(ingress.shutil, "which", lambda name: "/usr/sbin/haproxy")
    for choice in ("auto", "haproxy"):
        env = ray_serve.ingress_env(choice)
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/usr/sbin/haproxy"
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == ingress.PROXY_CALLBACK
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ray_serve.ingress_env("proxy")
    monkeypatch.setattr(ingress.shutil, "which", lambda name: None)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ray_serve.ingress_env("auto")  # falls back to the proxy
    with pytest.raises(ConfigError, match="haproxy binary"):
        ray_serve.ingress_env("haproxy")
    with pytest.raises(ConfigError, match="--ingress"):
        ray_serve.ingress_env("nginx")


def test_the_proxy_callback_turns_deflate_off_in_its_process() -> None:
    import subprocess
    import sys

    code = ("import uvicorn; from stream_server.ray_serve.ingress import proxy_setup; "
            "assert proxy_setup() == []; proxy_setup(); "
            "print(uvicorn.Config(lambda: None).ws_per_message_deflate, "
            "uvicorn.Config(lambda: None, ws_per_message_deflate=True).ws_per_message_deflate)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
