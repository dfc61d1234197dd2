"""Drive stream-tts with Pipecat's real ElevenLabsTTSService through a minimal pipeline.

Runs in its own venv (.venv-pipecat: Pipecat pins other versions than ours), started by
test_elevenlabs_pipecat.py as a subprocess:

    python pipecat_client.py ws://127.0.0.1:PORT VOICE SAMPLE_RATE "First text." "Second text."

Prints one JSON line: the audio frames the service emitted (bytes, sample rate, channels), the
words of its TTSTextFrames, and errors.
"""

import asyncio
import json
import sys

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService


class Collector(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[list[int]] = []
        self.words: list[str] = []
        self.errors: list[str] = []
        self.started = 0
        self.stopped = 0

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.frames.append([len(frame.audio), frame.sample_rate, frame.num_channels])
        elif isinstance(frame, TTSTextFrame):
            self.words.append(frame.text)
        elif isinstance(frame, TTSStartedFrame):
            self.started += 1
        elif isinstance(frame, TTSStoppedFrame):
            self.stopped += 1
        elif isinstance(frame, ErrorFrame):
            self.errors.append(str(frame.error))
        await self.push_frame(frame, direction)


async def main(url: str, voice: str, rate: int, texts: list[str]) -> None:
    tts = ElevenLabsTTSService(
        api_key="test-key",
        url=url,
        sample_rate=rate,
        settings=ElevenLabsTTSService.Settings(voice=voice, model="eleven_flash_v2_5", speed=1.1),
    )
    collector = Collector()
    task = PipelineTask(
        Pipeline([tts, collector]),
        params=PipelineParams(audio_out_sample_rate=rate),
        enable_rtvi=False,
    )
    await task.queue_frames([TTSSpeakFrame(t) for t in texts])

    async def end_when_quiet() -> None:
        # all audio in (each context's TTSStoppedFrame), then end the pipeline
        for _ in range(600):
            await asyncio.sleep(0.05)
            if collector.stopped >= len(texts) or collector.errors:
                break
        await task.queue_frame(EndFrame())

    ender = asyncio.create_task(end_when_quiet())
    await asyncio.wait_for(PipelineRunner(handle_sigint=False).run(task), 60)
    await ender
    print(json.dumps({"frames": collector.frames, "words": collector.words, "errors": collector.errors,
                      "started": collector.started, "stopped": collector.stopped}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
