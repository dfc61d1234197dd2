"""Streaming encoders for the HTTP speech responses: s16le PCM in, a container byte stream out.

One ``SpeechEncoder`` per response: it takes mono s16le PCM at ``sample_rate`` (24 kHz) in pieces
and returns, for every piece, the bytes of the response body that are final now (MP3 frames, Ogg
pages, ADTS frames, FLAC frames, a WAV header then PCM, or raw PCM). The containers and codecs are
FFmpeg's, through PyAV; nothing here writes a container by hand. Muxers write to a sink without
``seek`` and flush after every packet, so their headers are the streaming kind (WAV and FLAC sizes
left unknown) and no bytes wait in an I/O buffer.

An optional ``tempo`` time-stretches the PCM first (FFmpeg's ``atempo``: pitch kept), for speeds
beyond what the engine itself can do. Encoding is synchronous and CPU-bound: callers run it off the
event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from engine.av_encoders import ByteSink

SPEECH_SAMPLE_RATE = 24000
MIN_TEMPO, MAX_TEMPO = 0.5, 2.0  # one atempo stage


@dataclass(frozen=True)
class SpeechFormat:
    """One ``response_format``: its content type and how FFmpeg makes it (None: raw PCM)."""

    name: str
    content_type: str
    container: str | None = None
    codec: str | None = None
    bit_rate: int | None = None
    container_options: tuple[tuple[str, str], ...] = ()
    codec_options: tuple[tuple[str, str], ...] = ()
    # the session format (engine.codec.make_encoder) whose items, concatenated, are this body: the
    # engine workers then encode it next to the synthesis, on every core, instead of this process
    session_format: str | None = None


# Latency notes: Ogg pages are cut every 20 ms (the muxer's default is 1 s); FLAC blocks are 1152
# samples (48 ms; the default at 24 kHz is 4608); MP3 has no ID3 tag and no Xing header (it
# would need a seek back); bitexact drops the "Lavf" encoder tags. AAC: FFmpeg's "fast" coder
# costs ~1 % of the audio time on eSpeak speech, its default (twoloop) ~5 % (bench-openai).
SPEECH_FORMATS: dict[str, SpeechFormat] = {
    f.name: f
    for f in (
        SpeechFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", 64000,
                     (("id3v2_version", "0"), ("write_xing", "0")), session_format="mp3"),
        SpeechFormat("opus", "audio/ogg", "ogg", "libopus", 32000, (("page_duration", "20000"),)),
        SpeechFormat("aac", "audio/aac", "adts", "aac", 64000, (), (("aac_coder", "fast"),)),
        SpeechFormat("flac", "audio/flac", "flac", "flac", None, (), (("frame_size", "1152"),)),
        SpeechFormat("wav", "audio/wav", "wav", "pcm_s16le"),
        SpeechFormat("pcm", "audio/pcm"),
    )
}


def _drain(graph: av.filter.Graph) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return out
        out.append(frame.to_ndarray().reshape(-1))


class TempoStretcher:
    """Time-stretch s16le mono PCM by ``tempo`` (> 1 faster) with FFmpeg's ``atempo``; streaming.

    ``atempo`` works in windows and drops part of the last one; ``flush`` feeds it silence and then
    cuts or pads the output so that ``n_in`` samples give exactly ``round(n_in / tempo)``.
    """

    _FLUSH_PAD_S = 0.1

    def __init__(self, tempo: float, sample_rate: int = SPEECH_SAMPLE_RATE) -> None:
        if not MIN_TEMPO <= tempo <= MAX_TEMPO:
            raise ValueError(f"tempo must be {MIN_TEMPO}..{MAX_TEMPO}, got {tempo}")
        self.tempo = tempo
        self.sample_rate = sample_rate
        self._graph = av.filter.Graph()
        src = self._graph.add_abuffer(
            format="s16", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        stretch = self._graph.add("atempo", f"{tempo}")
        sink = self._graph.add("abuffersink")
        src.link_to(stretch)
        stretch.link_to(sink)
        self._graph.configure()
        self.n_in = 0
        self.n_out = 0

    def _push(self, pcm: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self.n_in
        self._graph.push(frame)

    def _pull(self) -> np.ndarray:
        parts = _drain(self._graph)
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """int16 ``(n,)`` in -> the stretched int16 samples that are final now."""
        if pcm.shape[0]:
            self._push(pcm)
            self.n_in += pcm.shape[0]
        out = self._pull()
        self.n_out += out.shape[0]
        return out

    def flush(self) -> np.ndarray:
        """The rest, so that the whole output is ``round(n_in / tempo)`` samples."""
        self._push(np.zeros(round(self._FLUSH_PAD_S * self.sample_rate), np.int16))
        self._graph.push(None)
        rest = self._pull()
        want = max(0, round(self.n_in / self.tempo) - self.n_out)
        rest = rest[:want] if rest.shape[0] >= want else np.pad(rest, (0, want - rest.shape[0]))
        self.n_out += rest.shape[0]
        return rest


class SpeechEncoder:
    """One response's encoder: s16le mono PCM bytes at ``sample_rate`` -> body bytes (see module).

    ``samples_in`` counts the PCM samples received, ``samples_out`` those encoded (after the
    stretch). Not thread-safe: one caller at a time, in order.
    """

    def __init__(self, fmt: str, *, tempo: float = 1.0, sample_rate: int = SPEECH_SAMPLE_RATE,
                 mp3_quality: int | None = None) -> None:
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unknown speech format {fmt!r}")
        self.format = SPEECH_FORMATS[fmt]
        self.mp3_quality = mp3_quality  # LAME's -q (engine.config.AudioConfig.mp3_quality)
        self.sample_rate = sample_rate
        self._stretch = TempoStretcher(tempo, sample_rate) if tempo != 1.0 else None
        self.samples_in = 0
        self.samples_out = 0
        self._sink = ByteSink()
        self._container: Any = None
        self._stream: Any = None
        self._finished = False
        self._precoded = False

    @property
    def passthrough(self) -> bool:
        """Raw PCM at the engine's tempo: bytes pass through unchanged (no need for a thread)."""
        return self.format.container is None and self._stretch is None

    @property
    def inline(self) -> bool:
        """``encode``/``finish`` are cheap enough for the event loop: raw PCM, or a precoded body
        (nothing left to encode; an MP3 elementary stream has no trailer)."""
        return self.passthrough or self._precoded

    @property
    def session_format(self) -> str | None:
        """The session format that makes this body in the engine workers (MP3 at the engine's
        tempo), or None: the session then speaks PCM and this encoder encodes it."""
        return self.format.session_format if self._stretch is None else None

    def precoded(self, data: bytes, audio_s: float) -> bytes:
        """Body bytes the workers encoded (``session_format``), ``audio_s`` seconds: counted, passed on."""
        n = round(audio_s * self.sample_rate)
        self._precoded = True
        self.samples_in += n
        self.samples_out += n
        return data

    def open(self) -> None:
        """Set up the codec and muxer now (done on first use otherwise; idempotent)."""
        if self._container is None and self.format.container is not None:
            self._open()

    def _open(self) -> None:
        f = self.format
        self._container = av.open(
            self._sink, "w", format=f.container,
            options={"flush_packets": "1", "fflags": "+bitexact", **dict(f.container_options)},
        )
        options = dict(f.codec_options)
        if f.codec == "libmp3lame" and self.mp3_quality is not None:
            options["compression_level"] = str(self.mp3_quality)
        self._stream = self._container.add_stream(
            f.codec, rate=self.sample_rate, layout="mono", options=options
        )
        if f.bit_rate is not None:
            self._stream.bit_rate = f.bit_rate
        self._stream.codec_context.open(strict=False)  # else the first encode opens it

    def _encode_samples(self, samples: np.ndarray | None) -> bytes:
        if samples is not None and samples.shape[0] == 0:
            return b""
        self.samples_out += 0 if samples is None else samples.shape[0]
        if self.format.container is None:
            return b"" if samples is None else samples.astype("<i2", copy=False).tobytes()
        if self._container is None:
            self._open()
        frame = None
        if samples is not None:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def encode(self, pcm: bytes) -> bytes:
        """Little-endian s16 mono PCM (an even number of bytes) -> the body bytes final now."""
        if self._finished:
            raise RuntimeError("encode after finish")
        if self.passthrough:
            self.samples_in += len(pcm) // 2
            self.samples_out += len(pcm) // 2
            return bytes(pcm)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)
        self.samples_in += samples.shape[0]
        if self._stretch is not None:
            samples = self._stretch.process(samples)
        return self._encode_samples(samples)

    def finish(self) -> bytes:
        """End the stream: the encoder's delayed frames and the container's trailer."""
        if self._finished:
            return b""
        self._finished = True
        if self._precoded:
            return b""
        out = b""
        if self._stretch is not None:
            out += self._encode_samples(self._stretch.flush())
        if self.format.container is None:
            return out
        if self._container is None:
            self._open()  # no audio at all: still a valid (empty) stream with its header
        out += self._encode_samples(None)
        self._container.close()
        return out + self._sink.take()
