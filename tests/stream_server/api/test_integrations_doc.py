"""docs/INTEGRATIONS.md stays true: the OpenAI SDK example runs against the eSpeak server as
written (only the port is changed) and writes files that decode."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import av

from engine.config import EngineConfig
from stream_server.config import AppConfig, ServerConfig
from tests.server_fixtures import running_server

DOC = Path(__file__).resolve().parents[3] / "docs" / "INTEGRATIONS.md"


def test_the_sdk_example_writes_playable_files(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### The `openai` Python SDK"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    config = AppConfig(server=ServerConfig(port=0), engine=EngineConfig(engine="espeak"))
    with running_server(config) as url:  # the example names eSpeak's en-us
        script = tmp_path / "example.py"
        script.write_text(code.group(1).replace("http://127.0.0.1:8765", url), encoding="utf-8")
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for name, at_least_s in (("hello.mp3", 0.3), ("hi.wav", 0.03)):
        data = (tmp_path / name).read_bytes()
        with av.open(io.BytesIO(data)) as container:
            seconds = sum(f.samples / f.sample_rate for f in container.decode(audio=0))
        assert seconds >= at_least_s, name
