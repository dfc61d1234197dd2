"""Measure the ElevenLabs-compatible API: encoder cost per output format, and client TTFA.

    PYTHONPATH=. python scripts/bench_elevenlabs.py [--runs 9]

1. Encoder cost: CPU seconds per second of audio of each wire encoder (engine thread work), on
   3 s of eSpeak speech at 24 kHz fed in 60 ms chunks (median of --runs).
2. TTFA with the eSpeak engine, one client at a time: from sending the text of a fresh context to
   its first audio message, on /v1/stream (pcm_s16le 24 kHz) and on stream-input /
   multi-stream-input (pcm_24000, and mp3_44100_128), median and max of --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np
from websockets.asyncio.client import connect

from engine.base import SynthOptions
from engine.codec import make_encoder
from engine.config import AudioConfig, EngineConfig
from engine.espeak import EspeakEngine
from stream_server.config import AppConfig
from tests.server_fixtures import make_config, running_server

TEXT = "Hello there, this is a quick test of the streaming speech server."
FORMATS = [("pcm_s16le", 24000, None), ("pcm_s16le", 44100, None), ("ulaw", 8000, None),
           ("mp3", 44100, 128000), ("mp3", 22050, 32000), ("ogg_opus", 48000, 64000), ("opus", 24000, None)]


def encoder_costs(runs: int) -> None:
    engine = EspeakEngine(EngineConfig(engine="espeak"))
    audio = np.concatenate(list(engine.synthesize(TEXT * 2, engine.default_voice, SynthOptions())))
    seconds = audio.shape[0] / 24000
    step = 1440
    print(f"encoder cost on {seconds:.2f} s of speech (CPU ms per s of audio, median of {runs}):")
    for fmt, rate, bitrate in FORMATS:
        times = []
        for _ in range(runs):
            enc = make_encoder(fmt, rate, AudioConfig(), 24000, bitrate=bitrate)
            t0 = time.process_time()
            for i in range(0, audio.shape[0], step):
                enc.encode(audio[i : i + step])
            enc.flush()
            times.append(time.process_time() - t0)
        label = f"{fmt} {rate} Hz" + (f" {bitrate // 1000} kbps" if bitrate else "")
        print(f"  {label:28s} {1000 * statistics.median(times) / seconds:7.2f} ms/s")


async def ttfa_stream(base: str) -> float:
    async with connect(base.replace("http", "ws") + "/v1/stream") as ws:
        await ws.send(json.dumps({"type": "start", "format": "pcm_s16le", "sample_rate": 24000}))
        await ws.recv()  # ready
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "text", "text": TEXT}))
        await ws.send(json.dumps({"type": "flush"}))
        while not isinstance(await ws.recv(), bytes):
            pass
        return time.perf_counter() - t0


async def ttfa_el(base: str, multi: bool, fmt: str) -> float:
    path = "multi-stream-input" if multi else "stream-input"
    url = f"{base.replace('http', 'ws')}/v1/text-to-speech/default/{path}?output_format={fmt}"
    cid = {"context_id": "c"} if multi else {}
    async with connect(url) as ws:
        await ws.send(json.dumps({"text": " ", **cid}))
        t0 = time.perf_counter()
        await ws.send(json.dumps({"text": TEXT + " ", "flush": True, **cid}))
        while not json.loads(await ws.recv()).get("audio"):
            pass
        return time.perf_counter() - t0


def ttfa(runs: int) -> None:
    config: AppConfig = make_config()
    config = AppConfig(server=config.server, engine=EngineConfig(engine="espeak"))
    with running_server(config) as base:
        cases = [("/v1/stream pcm_s16le 24 kHz", lambda: ttfa_stream(base)),
                 ("stream-input pcm_24000", lambda: ttfa_el(base, False, "pcm_24000")),
                 ("multi-stream-input pcm_24000", lambda: ttfa_el(base, True, "pcm_24000")),
                 ("stream-input mp3_44100_128", lambda: ttfa_el(base, False, "mp3_44100_128"))]
        print(f"client TTFA with eSpeak, 1 client (median / max of {runs}):")
        for label, case in cases:
            values = [asyncio.run(case()) * 1000 for _ in range(runs + 1)][1:]  # first run warms up
            print(f"  {label:32s} {statistics.median(values):6.1f} / {max(values):6.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    encoder_costs(args.runs)
    ttfa(args.runs)
