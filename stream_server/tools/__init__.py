"""Command-line tools around the server, not part of it: each a ``stream-tts`` subcommand module
with ``configure_parser(p)`` and ``run(args) -> int`` (wired in ``stream_server/__main__.py``).

- `synth` (+ `synth_batch`): render text to WAV offline, no server;
- `bench` (+ `bench_report`, `soak`): TTFA / RTF / underruns against a running server, soaks;
- `bench_openai`: ``POST /v1/audio/speech`` time to first byte and encoder cost;
- `bench_engine` (+ `bench_streams`): the engine and the server's worker alone, no sockets;
- `download`: fetch the F5-TTS and Vocos weights.

The tools may import the server core; the server core never imports them.
"""
