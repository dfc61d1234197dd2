"""Scale-out on Ray Serve: the same FastAPI app behind Ray's proxy, one engine per replica.

Optional extra (``pip install 'stream-tts[ray]'``); only the ``serve-ray`` command and Ray Serve
import this package, and Ray is imported only inside its functions, so the single-machine server
never needs Ray.

    stream-tts serve-ray --replicas 2                      # local Ray; proxy on --host/--port
    stream-tts serve-ray --autoscale 1:4 --target-sessions 16
    serve deploy docs/ray-serve.yaml                        # a running cluster (see docs/SCALING.md)

Each replica builds the app with `stream_server.app.create_app` (engine, worker thread, warm-up:
exactly what ``serve`` runs) and only takes traffic once its warm-up is done (the app's lifespan
waits for it, and Ray routes to a replica only after its start-up). A WebSocket session is one
ongoing request to one replica for its whole life, so ``max_ongoing_requests`` is the replica's
session limit and autoscaling targets ongoing sessions.

State shared across replicas:
- the overlay queue lives in one named, detached actor (`OverlayActor`) that every replica's
  overlay routes talk to, so ``POST /v1/overlay/say`` on any replica reaches the overlay pages
  connected to any replica, in order;
- voices are files in ``engine.voices_dir``: give every replica the same folder (one machine: the
  same path; a cluster: a shared volume). The F5 voice store re-reads the folder when it changes,
  so an upload through one replica is used by the others. Files, not the object store, because
  voices must outlive the cluster and are read on every session start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from engine.base import Engine
from engine.config import EngineConfig
from stream_server.config import (
    AppConfig,
    add_config_flags,
    load_config,
    overrides_from_args,
)
from stream_server.errors import ConfigError
from stream_server.ray_serve.ingress import INGRESSES, start_local
from stream_server.ray_serve.state import (
    DIRECTORY_ACTOR,
    NAMESPACE,
    OVERLAY_ACTOR,
    ClusterStateImpl,
    RayOverlay,
    RaySharedLimits,
    _named_actor,
    directory_router,
    overlay_actor,
)

log = logging.getLogger("stream_server")

APP_NAME = "stream-tts"
DEPLOYMENT_NAME = "StreamTTS"


@dataclass(frozen=True)
class RayOptions:
    """How the app is deployed on Ray Serve (the server settings come from `AppConfig`)."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; None = fixed ``replicas``
    target_sessions: int = 16  # autoscaling target: ongoing sessions per replica
    num_gpus: float = 0.0  # per replica (1 for F5 on a GPU)
    num_cpus: float = 1.0  # per replica
    graceful_shutdown_s: float = 30.0  # a replica leaving finishes its turns for this long
    engine_factory: str = ""  # "module:function" (EngineConfig) -> (engine, reason); "" = default

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError("--replicas must be at least 1")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise ConfigError("--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1")
        if self.target_sessions < 1:
            raise ConfigError("--target-sessions must be at least 1")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ConfigError("--num-gpus and --num-cpus must be >= 0")
        if self.engine_factory and ":" not in self.engine_factory:
            raise ConfigError("engine_factory must look like 'module:function'")


def parse_autoscale(text: str) -> tuple[int, int]:
    """"MIN:MAX" -> (min, max)."""
    try:
        lo, hi = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--autoscale must look like MIN:MAX (e.g. 1:4), got {text!r}") from None
    return lo, hi


# ---------------------------------------------------------------------------------------- replica
def _engine_factory(path: str) -> Callable[[EngineConfig], tuple[Engine, str]]:
    module_name, _, attr = path.partition(":")
    factory: Callable[[EngineConfig], tuple[Engine, str]] = getattr(
        importlib.import_module(module_name), attr
    )
    return factory


class StreamTTSReplica:
    """One Ray Serve replica: builds the app (its own engine and worker) at replica start."""

    def __init__(self, config: AppConfig, engine_factory: str = "") -> None:
        from ray import serve

        self.config = config
        self.engine_factory = engine_factory
        self.replica_id: str = serve.get_replica_context().replica_id.unique_id
        self.hub: Any = None
        self.directory = _named_actor(ClusterStateImpl, DIRECTORY_ACTOR)
        self.info: dict[str, str] = {}

    def __serve_build_asgi_app__(self) -> Any:
        from stream_server.app import create_app

        engine: Engine | None = None
        reason = "auto"
        if self.engine_factory:
            engine, reason = _engine_factory(self.engine_factory)(self.config.engine)
        app = create_app(
            self.config,
            engine,
            reason,
            replica=self.replica_id,
            overlay=RayOverlay(overlay_actor(self.config)),
            serve_after_warmup=True,
            extra_routers=[directory_router(self.directory)],
        )
        self.hub = app.state.hub
        access = app.state.access
        if access.enabled:  # per-key limits across every replica
            access.shared = RaySharedLimits(self.directory, self.replica_id, self.config.server)
        self.info = {"metrics": self._serve_metrics()}
        self.directory.heartbeat.remote(self.replica_id, self.info)
        return app

    def _serve_metrics(self) -> str:
        """This replica's own Prometheus endpoint (the proxy's /metrics reaches a random one)."""
        import ray
        from prometheus_client import start_http_server

        host = self.config.server.host
        server, _ = start_http_server(0, addr=host, registry=self.hub.metrics.collector())
        if host in ("0.0.0.0", "::", ""):
            host = ray.util.get_node_ip_address()
        return f"{host}:{server.server_port}"

    async def check_health(self) -> None:
        """Ray's health check: a replica whose warm-up failed or whose worker died is replaced."""
        hub = self.hub
        if hub is None:
            return
        await self.directory.heartbeat.remote(self.replica_id, self.info)
        if hub.warmup_error:
            raise RuntimeError(hub.warmup_error)
        scheduler = hub.scheduler
        if scheduler is not None and not scheduler.alive():
            raise RuntimeError("engine worker thread is not running")


def build_application(config: AppConfig, options: RayOptions) -> Any:
    """The Ray Serve application (``serve.run(...)`` or a builder's return value).

    Without a configured ``token_secret`` one is drawn here, once, so that a streaming token
    minted by one replica is accepted by every other.
    """
    from ray import serve

    if not config.server.token_secret:
        server = replace(config.server, token_secret=secrets.token_urlsafe(32))
        config = replace(config, server=server)
    if config.server.workers == 0:
        # "one worker per core" means per core the replica reserves, not per core of the machine:
        # two replicas with 2 workers each on 2 cores ran 4 worker processes against the proxy
        # and Ray's own processes (underruns at 16 clients; none with one each)
        server = replace(config.server, workers=max(1, math.floor(options.num_cpus)))
        config = replace(config, server=server)

    deployment_options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        # one WebSocket = one ongoing request for its whole life; a few more for HTTP calls
        "max_ongoing_requests": config.server.max_sessions + 16,
        "ray_actor_options": {"num_gpus": options.num_gpus, "num_cpus": options.num_cpus},
        "graceful_shutdown_timeout_s": options.graceful_shutdown_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
    }
    if options.autoscale is not None:
        lo, hi = options.autoscale
        deployment_options["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": hi,
            "initial_replicas": max(lo, 1),
            "target_ongoing_requests": options.target_sessions,
        }
    else:
        deployment_options["num_replicas"] = options.replicas
    ingress = serve.ingress()(StreamTTSReplica)
    deployment = serve.deployment(**deployment_options)(ingress)
    # only what a replica needs: a change of replica count, autoscaling or grace period is then
    # a change of the deployment's options, which Ray applies without restarting every replica
    return deployment.bind(config, options.engine_factory)


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path`` target for ``serve deploy``/``serve run`` config files.

    args (all optional): ``config`` (TOML path), ``replicas``, ``autoscale`` ("MIN:MAX"),
    ``target_sessions``, ``num_gpus``, ``num_cpus``, ``graceful_shutdown_s``, ``engine_factory``.
    """
    known = {"config", "replicas", "autoscale", "target_sessions", "num_gpus", "num_cpus",
             "graceful_shutdown_s", "engine_factory"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown stream-tts Ray args: {', '.join(unknown)}")
    config = load_config(args.get("config"))
    options = RayOptions(
        replicas=int(args.get("replicas", 1)),
        autoscale=parse_autoscale(args["autoscale"]) if args.get("autoscale") else None,
        target_sessions=int(args.get("target_sessions", 16)),
        num_gpus=float(args.get("num_gpus", 0.0)),
        num_cpus=float(args.get("num_cpus", 1.0)),
        graceful_shutdown_s=float(args.get("graceful_shutdown_s", 30.0)),
        engine_factory=str(args.get("engine_factory", "")),
    )
    return build_application(config, options)


# ---------------------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (the same as `serve`)")
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    p.add_argument("--target-sessions", type=int, default=16,
                   help="autoscaling target: ongoing sessions per replica (default 16)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs per replica (default: 1 for --engine f5 on CUDA, else 0)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    p.add_argument("--graceful-shutdown-s", type=float, default=30.0,
                   help="a replica leaving finishes its sessions for this long (default 30)")
    p.add_argument("--ingress", choices=INGRESSES, default="auto",
                   help="haproxy: Ray Serve's HAProxy ingress (direct to replicas); proxy: Ray's "
                        "Python proxy; auto (default): haproxy when installed")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    add_config_flags(p)


def options_from_args(args: argparse.Namespace, config: AppConfig) -> RayOptions:
    num_gpus = args.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if config.engine.engine == "f5" and config.engine.device != "cpu" else 0.0
    return RayOptions(
        replicas=args.replicas,
        autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
        target_sessions=args.target_sessions,
        num_gpus=num_gpus,
        num_cpus=args.num_cpus,
        graceful_shutdown_s=args.graceful_shutdown_s,
    )


def replica_actor_name(replica_id: str) -> str:
    """Ray's actor name of a replica of this app (namespace ``serve``), e.g. to kill it."""
    return f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#{replica_id}"


def run(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError:
        raise ConfigError("serve-ray needs Ray Serve: pip install 'stream-tts[ray]'") from None
    config = load_config(args.config, overrides_from_args(args))
    options = options_from_args(args, config)
    logging.basicConfig(
        level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start_local(config.server.host, config.server.port, args.ray_address, args.ingress)
    try:
        serve.run(build_application(config, options), name=APP_NAME, route_prefix="/")
        log.info(
            "stream-tts ready on Ray Serve at http://%s:%d | %s",
            config.server.host, config.server.port,
            f"autoscale {options.autoscale}" if options.autoscale else f"{options.replicas} replicas",
        )
        stop.wait()
    finally:
        serve.delete(APP_NAME)
        for name in (OVERLAY_ACTOR, DIRECTORY_ACTOR):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        serve.shutdown()
        ray.shutdown()
    return 0
