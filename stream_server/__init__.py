"""stream-tts server: the WebSocket protocol, sessions, the engine scheduler, the FastAPI app and CLI.

The only async package of the project (see docs/DESIGN.md); it may import ``chunker`` and
``engine``, and nothing imports it. Entry points: ``stream_server.app.create_app`` and the
``stream-tts`` command (``stream_server.__main__``). The wire protocol is in docs/PROTOCOL.md.
"""
