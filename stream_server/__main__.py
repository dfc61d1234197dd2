"""The ``stream-tts`` command line (also ``python -m stream_server``).

Subcommands: ``serve``, ``synth``, and the lazily imported ``bench``, ``bench-engine``, ``download``
(each a module with ``configure_parser(p)`` and ``run(args) -> int``). Library code raises; only
``main`` prints errors: configuration errors exit 2, engine errors (e.g. weights not found) exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from engine.base import EngineError
from stream_server.config import add_config_flags, load_config, overrides_from_args
from stream_server.errors import ConfigError
from stream_server.tools import synth

# subcommand -> (module, help); imported only when that subcommand runs
_LAZY = {
    "bench": ("stream_server.tools.bench", "TTFA / RTF / underrun benchmark against a running server"),
    "bench-engine": ("stream_server.tools.bench_engine", "per-stage engine timing (no server)"),
    "bench-openai": ("stream_server.tools.bench_openai", "POST /v1/audio/speech time to first byte, encoder cost"),
    "download": ("stream_server.tools.download", "fetch the F5-TTS and Vocos weights"),
    "serve-ray": ("stream_server.ray_serve", "run the server on Ray Serve (replicas, autoscaling)"),
}


def _configure_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file ([server] [chunker] [engine] [audio])")
    add_config_flags(p)


def _run_serve(args: argparse.Namespace) -> int:
    from engine.factory import create_engine
    from stream_server.app import build_server, create_app

    config = load_config(args.config, overrides_from_args(args))
    logging.basicConfig(
        level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine, reason = create_engine(config.engine)
    server = build_server(create_app(config, engine, reason), config, log_config=None)
    server.run()
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the lazy subcommand named in ``argv`` (if any) is imported."""
    parser = argparse.ArgumentParser(prog="stream-tts", description="Streaming real-time TTS server")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the WebSocket server")
    _configure_serve(serve)
    serve.set_defaults(run=_run_serve)
    synth_p = sub.add_parser("synth", help="render text to a WAV file offline")
    synth.configure_parser(synth_p)
    synth_p.set_defaults(run=synth.run)
    for name, (module_name, help_) in _LAZY.items():
        p = sub.add_parser(name, help=help_)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.configure_parser(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(args_list).parse_args(args_list)
        return int(args.run(args))
    except ConfigError as exc:
        print(f"stream-tts: configuration error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"stream-tts: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("stream_server."):
            print(f"stream-tts: this command is not available ({exc.name} is missing)", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
