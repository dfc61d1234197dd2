"""AccessControl, sans I/O: keys, tokens, limits, Origins, route policy, the exposure warning."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from stream_server.auth import (
    ANONYMOUS,
    MAX_TOKEN_TTL_S,
    AccessControl,
    Policy,
    key_id_of,
    load_api_keys,
)
from stream_server.auth_asgi import warn_if_exposed
from stream_server.config import ServerConfig
from stream_server.errors import ERROR_TABLE, AccessError, ConfigError

KEY = "k1-0123456789abcdef"
OTHER = "k2-fedcba9876543210"


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(keys: tuple[str, ...] = (KEY, OTHER), clock: Clock | None = None, **cfg: object) -> AccessControl:
    config = dataclasses.replace(ServerConfig(), **cfg)  # type: ignore[arg-type]
    clock = clock or Clock()
    return AccessControl(config, keys, clock=clock, monotonic=clock)


def refused(code: str, fn: object, *args: object) -> AccessError:
    with pytest.raises(AccessError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code == code
    assert info.value.code in ERROR_TABLE
    return info.value


def test_keys_from_file_and_env_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team keys\n{KEY}\n\n  {OTHER}  \n", encoding="utf-8")
    keys = load_api_keys(str(path), {"STREAM_TTS_API_KEYS": f" {OTHER}, k3-aaaaaaaaaaaaaaaa ,"})
    assert keys == (KEY, OTHER, "k3-aaaaaaaaaaaaaaaa")
    assert load_api_keys("", {}) == ()


@pytest.mark.parametrize("bad", ["Zq9x", "has space in the key!!", "st1.looks-like-a-token"])
def test_bad_keys_are_config_errors_that_do_not_print_the_key(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_api_keys("", {"STREAM_TTS_API_KEYS": bad})
    assert bad not in str(info.value) and key_id_of(bad) in str(info.value)


def test_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_keys_file"):
        load_api_keys(str(tmp_path / "missing"), {})


def test_check_key() -> None:
    access = make()
    assert access.enabled
    principal = access.check_key(OTHER)
    assert principal.key_id == key_id_of(OTHER) and principal.via == "key"
    assert KEY not in repr(access.check_key(KEY))
    for wrong in (None, "", KEY + "x", KEY[:-1], "st1.x"):
        refused("unauthorized", access.check_key, wrong)


def test_no_keys_means_off_and_anonymous() -> None:
    access = make(keys=())
    assert not access.enabled
    assert access.check_key(None) is ANONYMOUS
    access.admit(ANONYMOUS)  # no limits without keys
    access.lease(ANONYMOUS).release()


def test_token_round_trip_and_expiry() -> None:
    clock = Clock()
    access = make(clock=clock, token_ttl_s=60.0)
    token, expires = access.mint_token(access.check_key(KEY))
    assert expires == int(clock.t + 60)
    assert access.check_token(token).key_id == key_id_of(KEY)
    assert access.check_token(token).via == "token"
    clock.t += 59
    access.check_token(token)
    clock.t += 1
    refused("token_expired", access.check_token, token)


def test_token_lifetime_is_capped() -> None:
    clock = Clock()
    access = make(clock=clock)
    _, expires = access.mint_token(access.check_key(KEY), 10_000)
    assert expires == int(clock.t + MAX_TOKEN_TTL_S)


def _tamper_payload(token: str, **changes: object) -> str:
    import base64

    prefix, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{sig}"


def test_tampered_tokens_are_invalid() -> None:
    access = make()
    token, expires = access.mint_token(access.check_key(KEY))
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (
        flipped,
        _tamper_payload(token, e=expires + 3600),
        _tamper_payload(token, k=key_id_of(OTHER)),
        token.replace("st1.", "st2."),
        token.rsplit(".", 1)[0],
        "st1." + "A" * 600,
        "st1.%%%.%%%",
    ):
        refused("invalid_token", access.check_token, bad)


def test_tokens_of_another_secret_or_a_removed_key_are_invalid() -> None:
    a = make(token_secret="secret-one")
    token, _ = a.mint_token(a.check_key(KEY))
    assert make(token_secret="secret-one").check_token(token).key_id == key_id_of(KEY)
    refused("invalid_token", make(token_secret="secret-two").check_token, token)
    refused("invalid_token", make(keys=(OTHER,), token_secret="secret-one").check_token, token)
    # without token_secret every process has its own random secret
    refused("invalid_token", make().check_token, make().mint_token(ANONYMOUS)[0])


def test_requests_per_minute_bucket() -> None:
    clock = Clock()
    access = make(clock=clock, key_requests_per_minute=3)
    principal = access.check_key(KEY)
    for _ in range(3):
        access.admit(principal)
    exc = refused("rate_limited", access.admit, principal)
    assert exc.status == 429 and exc.retry_after_s == 20  # 3 per minute: one every 20 s
    access.admit(access.check_key(OTHER))  # other keys have their own budget
    clock.t += 20
    access.admit(principal)
    refused("rate_limited", access.admit, principal)


def test_session_leases() -> None:
    access = make(key_max_sessions=2)
    principal = access.check_key(KEY)
    first, second = access.lease(principal), access.lease(principal)
    exc = refused("too_many_sessions", access.lease, principal)
    assert exc.status == 429 and exc.kind.close_code == 1013
    first.release()
    first.release()  # idempotent
    assert access.open_sessions(principal.key_id) == 1
    third = access.lease(principal)
    second.release()
    third.release()
    assert access.open_sessions(principal.key_id) == 0


def test_zero_means_no_limit() -> None:
    access = make(key_max_sessions=0, key_requests_per_minute=0)
    principal = access.check_key(KEY)
    for _ in range(1000):
        access.admit(principal)
        access.lease(principal)


def test_origins() -> None:
    access = make(allowed_origins=("https://app.example",))
    access.check_origin(None, "127.0.0.1:8765")  # not a browser
    access.check_origin("http://127.0.0.1:8765", "127.0.0.1:8765")  # same host
    access.check_origin("https://APP.example/", "tts.internal")
    for foreign in ("http://evil.example", "null", "https://app.example.evil", "http://127.0.0.1:9999"):
        exc = refused("forbidden_origin", access.check_origin, foreign, "127.0.0.1:8765")
        assert exc.status == 403
    make(allowed_origins=("*",)).check_origin("http://anything.example", "x")


def test_route_policy() -> None:
    access = make()
    assert access.policy("/healthz", websocket=False) is Policy.OPEN
    assert access.policy("/", websocket=False) is Policy.OPEN
    assert access.policy("/app.js", websocket=False) is Policy.OPEN
    assert access.policy("/metrics", websocket=False) is Policy.OPEN
    assert make(metrics_public=False).policy("/metrics", websocket=False) is Policy.KEY
    assert access.policy("/v1/stream", websocket=True) is Policy.STREAM
    assert access.policy("/v1/info", websocket=False) is Policy.STREAM
    assert access.policy("/v1/voices", websocket=False, method="POST") is Policy.KEY
    assert access.policy("/v1/tokens", websocket=False, method="POST") is Policy.KEY
    assert access.policy("/v1/anything/new", websocket=False) is Policy.KEY
    assert access.policy("/v1/text-to-speech/v/stream-input", websocket=True) is Policy.KEY
    assert access.is_session("/v1/stream", websocket=True)
    assert not access.is_session("/v1/overlay/events", websocket=True)
    assert access.is_session("/v1/audio/speech", websocket=False)
    assert not access.is_session("/v1/info", websocket=False)


def test_server_warns_when_exposed_without_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_server"):
        assert warn_if_exposed(make(keys=()), "0.0.0.0")
        assert "WITHOUT API KEYS" in caplog.text
        caplog.clear()
        for host in ("127.0.0.1", "::1", "localhost"):
            assert not warn_if_exposed(make(keys=()), host)
        assert not warn_if_exposed(make(), "0.0.0.0")
    assert caplog.text == ""


def test_config_validates_auth_fields() -> None:
    with pytest.raises(ValueError, match="token_ttl_s"):
        ServerConfig(token_ttl_s=901)
    with pytest.raises(ValueError, match="key_max_sessions"):
        ServerConfig(key_max_sessions=-1)
