"""MP3 and Ogg Opus wire encoders built on PyAV (FFmpeg's libmp3lame, libopus and Ogg muxer).

Both are streaming like the encoders in ``engine.codec``: float32 PCM at the engine's rate in, and
out a list of byte strings, **one per codec frame**, so every item has a known duration
(``frame_seconds``):

- ``Mp3FrameEncoder``: raw MPEG audio frames (no ID3 or Xing header: an MP3 elementary stream is
  its own file format, so the concatenation of all items is a playable .mp3). 1152 samples per
  frame at 32 kHz and above (MPEG-1), 576 below (MPEG-2).
- ``OggOpusEncoder``: an Ogg Opus stream at 48 kHz with one 20 ms Opus packet per Ogg page, each
  page written as soon as its packet is encoded; the stream headers ride on the first item and the
  end-of-stream page on the last. Each encoder (one per synthesized segment) is one complete Ogg
  logical stream, so a multi-segment response is a chained Ogg file (RFC 3533 section 4), which
  FFmpeg / PyAV and opusfile decode as one continuous stream.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from engine.codec import AudioCodecError, StreamingResampler, UnsupportedSampleRateError

MP3_RATES = (22050, 24000, 44100)
MP3_BITRATES = (32, 48, 64, 96, 128, 192)  # kbit/s
OGG_OPUS_RATE = 48000
OGG_OPUS_FRAME = 960  # 20 ms at 48 kHz
_SILENT = 1e-6  # |sample| at or below this is silence (-120 dBFS; a resampler's rounding of zeros)


def mp3_frame_samples(rate: int) -> int:
    """Samples per MP3 frame: MPEG-1 Layer III at 32/44.1/48 kHz, MPEG-2 below."""
    return 1152 if rate >= 32000 else 576


class ByteSink:
    """Write-only file object for PyAV muxers (no ``seek``: they treat the output as a stream);
    ``take`` returns what was written since the last call."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


@functools.cache
def _lame_extra_frames(rate: int, bitrate: int, quality: int | None) -> int:
    """Frames LAME emits beyond ``ceil(samples / frame)`` for one stream: its encoder delay and the
    decoder's, rounded up to whole frames (2 at 22.05 / 24 kHz, 1 at 44.1 kHz). Measured once per
    setting by encoding one frame of silence, so it follows the LAME that is installed."""
    import av

    cc = av.CodecContext.create("libmp3lame", "w")
    cc.sample_rate, cc.layout, cc.format, cc.bit_rate = rate, "mono", "fltp", bitrate
    if quality is not None:
        cc.options = {"compression_level": str(quality)}
    cc.open()
    frame = av.AudioFrame.from_ndarray(np.zeros((1, mp3_frame_samples(rate)), np.float32),
                                       format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    return len(list(cc.encode(frame)) + list(cc.encode(None))) - 1


class Mp3FrameEncoder:
    """float32 PCM at ``in_rate`` -> MP3 frames at ``out_rate``, CBR ``bitrate`` bit/s.

    ``quality``: LAME's ``-q`` (0 best and slowest .. 9; None = LAME's default, 3).

    Each encoder is one MP3 stream, and a decoder plays LAME's delay (~46 ms at 24 kHz) as silence
    before it and the last frame's padding after it: one stream per segment would lengthen every
    segment by 48-72 ms. So trailing silence (the segment's pause) is held back as it comes, and
    ``flush`` keeps only as much of it as makes the decoded stream as long as its input (within half
    a frame). Audio is never cut: only samples of the input's silent tail are dropped.
    """

    format = "mp3"

    def __init__(self, in_rate: int = 24000, out_rate: int = 44100, bitrate: int = 128000,
                 quality: int | None = None) -> None:
        import av

        if out_rate not in MP3_RATES:
            raise UnsupportedSampleRateError(
                f"mp3 supports sample rates {', '.join(map(str, MP3_RATES))}; got {out_rate}"
            )
        if bitrate // 1000 not in MP3_BITRATES or bitrate % 1000:
            raise AudioCodecError(f"mp3 bitrate must be one of {MP3_BITRATES} kbit/s, got {bitrate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.frame_size = mp3_frame_samples(out_rate)
        self.frame_ms: float = 1000.0 * self.frame_size / out_rate
        self._av = av
        self._cc = av.CodecContext.create("libmp3lame", "w")
        self._cc.sample_rate = out_rate
        self._cc.layout = "mono"
        self._cc.format = "fltp"
        self._cc.bit_rate = bitrate
        if quality is not None:
            self._cc.options = {"compression_level": str(quality)}  # LAME's -q
        self._cc.open()
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self._pts = 0
        self.frames = 0
        self._extra = _lame_extra_frames(out_rate, bitrate, quality)
        self._hold_max = (self._extra + 1) * self.frame_size
        self._held = 0  # trailing silent samples not passed on yet
        self._fed = 0  # samples passed on to the codec (pending included)

    @property
    def duration_s(self) -> float:
        return self.frames * self.frame_size / self.out_rate

    def _frame(self, block: np.ndarray) -> list[bytes]:
        frame = self._av.AudioFrame.from_ndarray(
            np.clip(block, -1.0, 1.0)[None, :].astype(np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = self.out_rate
        frame.pts = self._pts
        self._pts += block.shape[0]
        return [bytes(p) for p in self._cc.encode(frame)]

    def _run(self, x: np.ndarray, final: bool) -> list[bytes]:
        buf = np.concatenate([self._pending, x]) if self._pending.shape[0] else x
        fs = self.frame_size
        n = buf.shape[0] // fs
        out: list[bytes] = []
        for i in range(n):
            out += self._frame(buf[i * fs : (i + 1) * fs])
        rest = buf[n * fs :]
        if final:
            if rest.shape[0]:
                out += self._frame(np.pad(rest, (0, fs - rest.shape[0])))
            out += [bytes(p) for p in self._cc.encode(None)]
            rest = np.zeros(0, dtype=np.float32)
        self._pending = rest.copy()
        self.frames += len(out)
        return out

    def _decoded(self, samples: int) -> int:
        """Samples a decoder outputs for a stream of ``samples`` input samples (``samples`` > 0)."""
        fs = self.frame_size
        return (-(-samples // fs) + self._extra) * fs

    def _silence_to_keep(self, fed: int) -> int:
        """Of the held silence, the samples that make the decoded stream closest to the input."""
        held, fs = self._held, self.frame_size
        if fed == 0:
            return held  # silence only: keep it all
        want = fed + held
        ks = {0, held} | {j * fs - fed for j in range(fed // fs, (fed + held) // fs + 1)}
        return min((k for k in ks if 0 <= k <= held), key=lambda k: (abs(self._decoded(fed + k) - want), -k))

    def _feed(self, y: np.ndarray, final: bool) -> list[bytes]:
        loud = np.flatnonzero(np.abs(y) > _SILENT)
        if loud.shape[0]:
            end = int(loud[-1]) + 1
            head = np.concatenate([np.zeros(self._held, np.float32), y[:end]]) if self._held else y[:end]
            self._held = y.shape[0] - end
        else:
            head = y[:0]
            self._held += y.shape[0]
        if self._held > self._hold_max:  # more silence than the delay needs: pass the excess on
            head = np.concatenate([head, np.zeros(self._held - self._hold_max, np.float32)])
            self._held = self._hold_max
        if final:
            keep = self._silence_to_keep(self._fed + head.shape[0])
            head = np.concatenate([head, np.zeros(keep, np.float32)])
            self._held = 0
        self._fed += head.shape[0]
        return self._run(head.astype(np.float32, copy=False), final)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        return self._feed(self._resampler.process(pcm), final=False)

    def flush(self) -> list[bytes]:
        """The rest (the last frame zero-padded) and the encoder's delayed frames; ends the stream."""
        return self._feed(self._resampler.flush(), final=True)


class OggOpusEncoder:
    """float32 PCM at ``in_rate`` -> Ogg Opus pages (48 kHz, 20 ms packets), ``bitrate`` bit/s."""

    format = "ogg_opus"

    def __init__(self, in_rate: int = 24000, out_rate: int = OGG_OPUS_RATE, bitrate: int = 64000) -> None:
        import av

        if out_rate != OGG_OPUS_RATE:
            raise UnsupportedSampleRateError(f"Ogg Opus is encoded at 48000 Hz; got {out_rate}")
        if not 6000 <= bitrate <= 510000:
            raise AudioCodecError(f"Opus bitrate must be 6000..510000, got {bitrate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.frame_size = OGG_OPUS_FRAME
        self.frame_ms: float = 20.0
        self._av = av
        self._sink = ByteSink()
        # page_duration 20 ms: every Opus packet gets its own page, written at once
        self._container = av.open(self._sink, "w", format="ogg", options={"page_duration": "20000"})
        self._stream: Any = self._container.add_stream("libopus", rate=out_rate, layout="mono")
        self._stream.bit_rate = bitrate
        self._stream.codec_context.options = {"application": "audio", "frame_duration": "20"}
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self._pts = 0
        self._carry = b""  # bytes written for packets that did not complete a page yet
        self.frames = 0

    @property
    def duration_s(self) -> float:
        return self.frames * self.frame_size / self.out_rate

    def _mux(self, packets: Any) -> list[bytes]:
        out = []
        for packet in packets:
            self._container.mux(packet)
            data = self._carry + self._sink.take()
            if data:
                out.append(data)
                self._carry = b""
        return out

    def _frame(self, block: np.ndarray) -> list[bytes]:
        frame = self._av.AudioFrame.from_ndarray(
            np.clip(block, -1.0, 1.0)[None, :].astype(np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = self.out_rate
        frame.pts = self._pts
        self._pts += block.shape[0]
        return self._mux(self._stream.encode(frame))

    def _run(self, x: np.ndarray, final: bool) -> list[bytes]:
        buf = np.concatenate([self._pending, x]) if self._pending.shape[0] else x
        fs = self.frame_size
        n = buf.shape[0] // fs
        out: list[bytes] = []
        for i in range(n):
            out += self._frame(buf[i * fs : (i + 1) * fs])
        rest = buf[n * fs :]
        if final:
            if rest.shape[0]:
                out += self._frame(np.pad(rest, (0, fs - rest.shape[0])))
            out += self._mux(self._stream.encode(None))
            self._container.close()
            tail = self._carry + self._sink.take()
            if tail:
                if out:
                    out[-1] += tail
                else:
                    out.append(tail)
            rest = np.zeros(0, dtype=np.float32)
        self._pending = rest.copy()
        self.frames += len(out)
        return out

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        return self._run(self._resampler.process(pcm), final=False)

    def flush(self) -> list[bytes]:
        """The rest (the last frame zero-padded), then the end-of-stream page; ends the stream."""
        return self._run(self._resampler.flush(), final=True)
