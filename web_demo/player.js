// Gapless streaming player shared by the demo page and the overlay.
//
// Opus: each binary WebSocket message is one raw Opus packet (24 kHz mono, frame_ms long). They go
// to a WebCodecs AudioDecoder as EncodedAudioChunks with increasing timestamps; the decoder's output
// rate is whatever AudioData.sampleRate says (48 kHz in Chromium). PCM: s16le at the stream rate.
// Either way the samples are resampled (linear, stateful, so no seams) to the AudioContext rate and
// appended to ONE continuous buffer that an AudioWorklet plays (see ring.js): no per-chunk source
// nodes, so chunk boundaries cannot click or leave gaps.
//
// Positions are counted in output samples per utterance: `samplesQueued` (appended to the buffer)
// and `samplesPlayed` (reported by the worklet). A segment starts at the queued position its first
// sample had, so the caption can follow what is actually heard.

import { PlaybackRing } from "./ring.js";

/** Linear-interpolating resampler for a mono stream; keeps its phase across chunks. */
export class LinearResampler {
  constructor(inRate, outRate) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples per output sample
    this.t = 0; // read position relative to the current chunk; -1 = the previous chunk's last sample
    this.prev = 0;
  }

  /** @param {Float32Array} x @returns {Float32Array} */
  process(x) {
    if (this.inRate === this.outRate || x.length === 0) return x;
    const n = Math.max(0, Math.floor((x.length - 1 - this.t) / this.step) + 1);
    const out = new Float32Array(n);
    let t = this.t;
    for (let i = 0; i < n; i++, t += this.step) {
      const k = Math.floor(t);
      const a = k < 0 ? this.prev : x[k];
      const b = x[k + 1] ?? a;
      out[i] = a + (b - a) * (t - k);
    }
    this.t = t - x.length;
    this.prev = x[x.length - 1];
    return out;
  }
}

/** Why Opus via WebCodecs cannot be used here, or "" when it can. */
export async function opusUnavailableReason() {
  if (!window.isSecureContext) return "this page is not a secure origin (use https or 127.0.0.1)";
  if (typeof AudioDecoder === "undefined") return "this browser has no WebCodecs AudioDecoder";
  try {
    const { supported } = await AudioDecoder.isConfigSupported({ codec: "opus", sampleRate: 24000, numberOfChannels: 1 });
    if (!supported) return "this browser's AudioDecoder cannot decode Opus";
  } catch (err) {
    return `AudioDecoder check failed: ${err}`;
  }
  return "";
}

function emptyStats() {
  return {
    framesReceived: 0, // binary messages of the current utterance
    framesDecoded: 0, // Opus packets decoded (PCM chunks count as decoded on arrival)
    framesDropped: 0, // binary messages ignored after stop() until the next utterance
    samplesQueued: 0, // output-rate samples appended to the playback buffer
    samplesPlayed: 0, // output-rate samples actually rendered
    secondsPlayed: 0,
    underruns: 0,
    bufferedMs: 0,
    playing: false,
    state: "idle",
    outputRate: 0,
    decodedRate: 0,
    level: 0,
  };
}

export class StreamPlayer {
  /**
   * @param {{cushionMs?: number, onStats?: Function, onSegment?: Function, onError?: Function}} opts
   *   onStats(stats) after every worklet report (~20 ms); onSegment(segment|null) when the audible
   *   segment changes; onError(message).
   */
  constructor(opts = {}) {
    this.cushionMs = opts.cushionMs ?? 150;
    this.onStats = opts.onStats ?? (() => {});
    this.onSegment = opts.onSegment ?? (() => {});
    this.onError = opts.onError ?? (() => {});
    this.stats = emptyStats();
    this.ctx = null;
    this.analyser = null;
    this.decoder = null;
    this.stopped = true;
    this.segments = []; // {index, text, startSample}, startSample null until its audio is queued
    this.pendingMarks = []; // {segment, packet}: segment starts at this Opus packet number
    this.currentSegment = null;
    this.eosWanted = false;
    this.usingWorklet = false;
    this.epoch = 0; // bumped by begin(); worklet reports carry the epoch they were made in
  }

  /** Create the AudioContext and the playback node. Safe to call more than once. */
  async init() {
    if (this.ctx) return;
    try {
      // 48 kHz = the Opus decoder's output rate, so Opus needs no resampling where this is honoured.
      this.ctx = new AudioContext({ sampleRate: 48000, latencyHint: "interactive" });
    } catch {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
    }
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.analyser.connect(this.ctx.destination);
    if (this.ctx.audioWorklet) {
      await this.ctx.audioWorklet.addModule(new URL("./player-worklet.js", import.meta.url));
      this.node = new AudioWorkletNode(this.ctx, "ring-player", {
        numberOfInputs: 0,
        outputChannelCount: [1],
        processorOptions: { cushionMs: this.cushionMs },
      });
      this.node.port.onmessage = (event) => this.onReport(event.data);
      this.usingWorklet = true;
    } else {
      // Non-secure origins have no AudioWorklet: run the same ring on the main thread.
      this.ring = new PlaybackRing(this.ctx.sampleRate, this.cushionMs);
      this.node = this.ctx.createScriptProcessor(2048, 1, 1);
      this.node.onaudioprocess = (event) => {
        this.ring.render(event.outputBuffer.getChannelData(0));
        this.onReport({ type: "stats", epoch: this.epoch, ...this.ring.snapshot() });
      };
    }
    this.node.connect(this.analyser);
    this.stats.outputRate = this.ctx.sampleRate;
  }

  get suspended() {
    return !this.ctx || this.ctx.state !== "running";
  }

  async resume() {
    await this.init();
    if (this.ctx.state !== "running") await this.ctx.resume();
  }

  post(msg, transfer) {
    if (this.usingWorklet) this.node.port.postMessage(msg, transfer ?? []);
    else if (msg.type === "push") this.ring.push(msg.samples);
    else if (msg.type === "eos") this.ring.endOfStream();
    else if (msg.type === "flush") this.ring.flush();
    else if (msg.type === "reset") this.ring.reset();
  }

  /**
   * Start a new utterance (stops the previous one).
   * @param {{format: "opus"|"pcm_s16le", sampleRate: number, frameMs?: number}} stream from `ready`
   */
  begin(stream) {
    this.stop();
    this.stopped = false;
    this.format = stream.format;
    this.streamRate = stream.sampleRate;
    this.frameUs = (stream.frameMs ?? 20) * 1000;
    this.stats = { ...emptyStats(), outputRate: this.ctx.sampleRate };
    this.segments = [];
    this.pendingMarks = [];
    this.currentSegment = null;
    this.eosWanted = false;
    this.resampler = null;
    this.epoch += 1;
    this.post({ type: "reset", epoch: this.epoch });
    if (this.format === "opus") {
      const decoder = new AudioDecoder({
        output: (data) => this.onDecoded(decoder, data),
        error: (err) => this.fail(`Opus decoder: ${err.message ?? err}`),
      });
      decoder.configure({ codec: "opus", sampleRate: this.streamRate, numberOfChannels: 1 });
      this.decoder = decoder;
    }
  }

  /** One binary message of the stream. */
  pushAudio(buffer) {
    if (this.stopped) {
      this.stats.framesDropped += 1;
      return;
    }
    const packet = this.stats.framesReceived++;
    if (this.format === "opus") {
      if (!this.decoder || this.decoder.state !== "configured") return;
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: packet * this.frameUs, data: buffer }));
    } else {
      const view = new DataView(buffer);
      const pcm = new Float32Array(buffer.byteLength >> 1);
      for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(2 * i, true) / 32768;
      this.stats.framesDecoded += 1;
      this.queue(pcm, this.streamRate);
    }
  }

  onDecoded(decoder, data) {
    try {
      if (decoder !== this.decoder || this.stopped) return; // a stopped utterance's late output
      const pcm = new Float32Array(data.numberOfFrames);
      data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
      this.stats.framesDecoded += 1;
      this.queue(pcm, data.sampleRate);
    } finally {
      data.close();
    }
  }

  queue(pcm, rate) {
    this.stats.decodedRate = rate;
    if (!this.resampler || this.resampler.inRate !== rate) this.resampler = new LinearResampler(rate, this.ctx.sampleRate);
    // Segments whose first packet is this one (or earlier) start at the current queued position.
    const decodedPackets = this.stats.framesDecoded;
    while (this.pendingMarks.length && this.pendingMarks[0].packet < decodedPackets) {
      this.pendingMarks.shift().segment.startSample = this.stats.samplesQueued;
    }
    const out = this.resampler.process(pcm);
    this.stats.samplesQueued += out.length;
    this.post({ type: "push", samples: out }, [out.buffer]);
    this.maybeEos();
  }

  /** The server announced a segment; its audio starts with the next binary message. */
  markSegment(index, text) {
    if (this.stopped) return;
    const segment = { index, text, startSample: null };
    this.segments.push(segment);
    this.pendingMarks.push({ segment, packet: this.stats.framesReceived });
    this.eosWanted = false;
  }

  /**
   * No more audio is expected for now (segment_done of the last announced segment, flushed, done):
   * once everything received is decoded, playback may drain without counting an underrun.
   */
  expectNoMore() {
    this.eosWanted = true;
    this.maybeEos();
  }

  maybeEos() {
    if (this.eosWanted && this.stats.framesDecoded >= this.stats.framesReceived) {
      this.eosWanted = false;
      this.post({ type: "eos" });
    }
  }

  /** Silence now: drop buffered audio, abandon pending decodes, ignore audio until begin(). */
  stop() {
    this.stopped = true;
    this.pendingMarks = [];
    if (this.decoder) {
      if (this.decoder.state !== "closed") this.decoder.close();
      this.decoder = null;
    }
    if (this.ctx) this.post({ type: "flush" });
    this.stats.playing = false;
    this.setSegment(null);
  }

  fail(message) {
    this.stats.lastError = message;
    this.onError(message);
  }

  onReport(report) {
    if (report.epoch !== this.epoch) return; // made before the last reset reached the worklet
    const s = this.stats;
    s.samplesPlayed = report.played;
    s.secondsPlayed = report.played / this.ctx.sampleRate;
    s.underruns = report.underruns;
    s.bufferedMs = (1000 * report.buffered) / this.ctx.sampleRate;
    s.state = report.state;
    s.playing = report.state === "playing" || report.state === "cushion";
    s.level = report.level;
    let current = null;
    for (const seg of this.segments) {
      if (seg.startSample !== null && seg.startSample <= report.played) current = seg;
    }
    if (!this.stopped && report.played > 0) this.setSegment(current);
    this.onStats(s);
  }

  setSegment(segment) {
    if (segment === this.currentSegment) return;
    this.currentSegment = segment;
    this.onSegment(segment);
  }
}
