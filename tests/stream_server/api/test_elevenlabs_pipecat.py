"""Pipecat's real ElevenLabsTTSService against stream-tts, through a minimal pipeline.

Pipecat pins other versions than we do (pipecat-ai 1.14.0 wants soundfile 0.13.1, we pin 0.14.0),
so it lives in its own venv, ``.venv-pipecat`` (made by ``make install-test``), and runs
``pipecat_client.py`` as a subprocess against the server this test starts. Set
``STREAM_TTS_PIPECAT_PYTHON`` to use another interpreter with pipecat-ai installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.server_fixtures import SineBurstEngine, make_config, running_server

ROOT = Path(__file__).resolve().parents[3]
CLIENT = Path(__file__).with_name("pipecat_client.py")
PIPECAT_PYTHON = Path(os.environ.get("STREAM_TTS_PIPECAT_PYTHON", ROOT / ".venv-pipecat" / "bin" / "python"))

pytestmark = pytest.mark.skipif(
    not PIPECAT_PYTHON.exists(), reason=f"no Pipecat venv at {PIPECAT_PYTHON}: run `make install-test`"
)

TEXTS = ["Hello there, this is Pipecat speaking.", "And a second sentence for good measure."]
SPEED = 1.1  # pipecat_client.py sets voice_settings.speed
PAUSE_S = 0.12


def run_pipecat(url: str, voice: str, rate: int, texts: list[str]) -> dict:
    proc = subprocess.run(
        [str(PIPECAT_PYTHON), str(CLIENT), url.replace("http://", "ws://", 1), voice, str(rate), *texts],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("rate", "alignment"), [(16000, "requested"), (24000, "always")])
def test_pipecat_elevenlabs_service_gets_the_audio(rate: int, alignment: str) -> None:
    engine = SineBurstEngine()
    with running_server(make_config(elevenlabs_alignment=alignment), engine) as url:
        result = run_pipecat(url, "high", rate, TEXTS)
    assert result["errors"] == []
    assert result["started"] == result["stopped"] == len(TEXTS)  # one context per TTSSpeakFrame, each isFinal
    frames = result["frames"]
    assert frames and all(sr == rate and channels == 1 for _, sr, channels in frames)
    seconds = sum(n for n, _, _ in frames) / 2 / rate
    expected = sum(engine.samples_for(t, SPEED) / engine.sample_rate + PAUSE_S for t in TEXTS)
    assert seconds == pytest.approx(expected, abs=0.005)
    assert engine.calls == [(t, "high") for t in TEXTS]
    if alignment == "always":
        # word by word from the estimated alignment, timed with the audio
        assert result["words"] == " ".join(TEXTS).split()
    else:
        # without alignment Pipecat reports each context's text when the context completes
        assert result["words"] == TEXTS
