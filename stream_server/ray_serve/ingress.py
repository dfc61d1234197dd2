"""How requests reach the replicas: Ray Serve's ingress for a local Ray (``serve-ray``).

Everything here is environment that Ray's controller, proxies and replicas read when they start,
so it is set before ``ray.init``; on a cluster, set the same variables on every node
(docs/SCALING.md). Ray is imported only inside functions.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from stream_server.errors import ConfigError
from stream_server.ray_serve.state import NAMESPACE

log = logging.getLogger("stream_server")

PROXY_CALLBACK = "stream_server.ray_serve.ingress:proxy_setup"


def proxy_setup() -> list[Any]:
    """Ray Serve's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``), run in the proxy
    process before its uvicorn server is built: WebSockets without permessage-deflate, as
    ``serve`` does (``ws_compression``). Ray has no option for it, so the proxy process gets a
    ``uvicorn.Config`` whose default is off (Ray builds its server with ``uvicorn.Config(...)``).
    Audio frames do not compress; deflating each 20 ms packet was the proxy's biggest single cost
    (18 % of its CPU at 16 clients). Adds no middleware."""
    import uvicorn

    base = uvicorn.Config
    if not getattr(base, "stream_tts_no_deflate", False):

        class NoDeflateConfig(base):  # type: ignore[valid-type,misc]
            stream_tts_no_deflate = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("ws_per_message_deflate", False)
                super().__init__(*args, **kwargs)

        uvicorn.Config = NoDeflateConfig  # type: ignore[misc]
    return []


INGRESSES = ("auto", "haproxy", "proxy")


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment a local Ray needs for ``ingress`` (read by its controller, proxies and
    replicas, so it must be set before ``ray.init``; on a cluster, set it on every node).

    ``haproxy``: Ray Serve's HAProxy ingress with direct ingress: HAProxy (C) carries each
    WebSocket straight to the replica's own HTTP server, instead of Ray's Python proxy relaying
    every 20 ms packet as an actor message (which cost this 2-core machine 1.9 s of CPU per
    16-client benchmark run, against 0.4 s for HAProxy). ``proxy``: Ray's Python proxy. ``auto``:
    HAProxy when the ``haproxy`` binary is installed, else the proxy. Both get ``proxy_setup``.
    """
    if ingress not in INGRESSES:
        raise ConfigError(f"--ingress must be one of {', '.join(INGRESSES)}, got {ingress!r}")
    env = {
        "RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S": "0",
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK,
    }
    binary = shutil.which("haproxy")
    if ingress == "haproxy" and binary is None:
        raise ConfigError("--ingress haproxy needs the haproxy binary on PATH (apt-get install "
                          "haproxy), or use --ingress proxy")
    if ingress != "proxy" and binary is not None:
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
        })
    return env


def start_local(host: str, port: int, address: str | None = None, ingress: str = "auto",
                **init_kwargs: Any) -> None:
    """``ray.init`` + ``serve.start`` with the ingress on host:port (``ingress_env``).

    Ray's proxy routes a new request by the replicas' ongoing-request counts, cached for 10 s by
    default; a replica not in the cache yet is skipped while it is probed, so a burst of sessions
    after an idle spell lands on one replica. Sessions are long, so probing on every new session
    costs nothing that matters: the cache is turned off. Variables already set in the
    environment win. A local Ray started here runs without its dashboard (its processes took a
    tenth of this 2-core machine while idle); start Ray yourself and pass ``address`` to keep it.
    """
    import os

    import ray
    from ray import serve

    for name, value in ingress_env(ingress).items():
        os.environ.setdefault(name, value)
    if address is None:
        init_kwargs.setdefault("include_dashboard", False)
    log.info("Ray Serve ingress: %s",
             "HAProxy (direct ingress)" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Ray's proxy")
    ray.init(address=address, namespace=NAMESPACE, **init_kwargs)
    serve.start(http_options={"host": host, "port": port})
