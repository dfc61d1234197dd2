"""docs/PROTOCOL.md stays true: every error code is documented and the Python client example runs."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path

from stream_server.errors import ERROR_TABLE
from stream_server.protocol import PROTOCOL_VERSION, SAMPLE_RATES
from tests.server_fixtures import SineBurstEngine, make_config, running_server, ws_url

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def test_every_error_code_is_in_the_table_with_its_close_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    for kind in ERROR_TABLE.values():
        close = str(kind.close_code) if kind.close_code else "—"
        assert re.search(rf"^\| `{kind.code}` \| {close} \|", text, re.M), kind.code
    assert f"version {PROTOCOL_VERSION}" in text


def test_every_format_and_its_rates_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for fmt, rates in SAMPLE_RATES.items():
        assert f'`"{fmt}"`' in text, fmt
        assert re.search(rf"{fmt}(, \w+)*: {', '.join(map(str, rates))}", text), fmt


def test_the_python_client_example_streams_and_writes_a_wav(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert code is not None
    script = tmp_path / "client.py"
    script.write_text(code.group(1), encoding="utf-8")
    out = tmp_path / "out.wav"
    text = "Hello there, this is the protocol example. It streams one word at a time."
    with running_server(make_config(), SineBurstEngine()) as url:
        proc = subprocess.run([sys.executable, str(script), ws_url(url), str(out), text],
                              capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "segment 0: Hello there, this is the protocol example." in proc.stdout
    with wave.open(str(out)) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    match = re.search(r"TTFA [\d.]+ ms, ([\d.]+) ms of audio", proc.stdout)
    assert match is not None and abs(seconds * 1000 - float(match.group(1))) < 1e-6
    assert seconds > 0.5
