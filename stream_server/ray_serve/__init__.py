"""Scale-out on Ray Serve (``stream-tts serve-ray``; the ``ray`` extra).

- `deployment`: the replica (the same app ``serve`` runs), the application builder and the CLI;
- `ingress`: how requests reach the replicas (Ray Serve's HAProxy ingress, or its proxy);
- `state`: what replicas share, held in named Ray actors (overlay queue, replica directory, limits).

Ray is imported only inside functions, and the single-machine server never imports this package.
``stream_server.ray_serve:app_builder`` is the ``import_path`` of ``serve deploy`` config files
(docs/ray-serve.yaml); ``stream-tts serve-ray`` runs `configure_parser` / `run`.
"""

from stream_server.ray_serve.deployment import (
    APP_NAME,
    DEPLOYMENT_NAME,
    RayOptions,
    app_builder,
    build_application,
    configure_parser,
    options_from_args,
    parse_autoscale,
    replica_actor_name,
    run,
)
from stream_server.ray_serve.ingress import ingress_env, proxy_setup, start_local

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "RayOptions",
    "app_builder",
    "build_application",
    "configure_parser",
    "options_from_args",
    "parse_autoscale",
    "replica_actor_name",
    "run",
    "ingress_env",
    "proxy_setup",
    "start_local",
]
