// Playback buffer shared by the AudioWorklet (player-worklet.js) and the ScriptProcessor fallback
// (player.js). Mono float32 samples at the AudioContext rate go in with push(); render() fills one
// output block. Pure logic, no Web Audio calls, so both audio paths behave identically.
//
// States: "idle" (nothing expected), "cushion" (collecting the start-up cushion), "playing",
// "drained" (the stream ended and every sample was played).
// An underrun is counted only while playing and while more audio is expected (eos not received):
// then playback pauses and re-cushions, so a late packet costs one pause instead of crackle.

export class PlaybackRing {
  /**
   * @param {number} sampleRate output rate in Hz
   * @param {number} cushionMs audio buffered before playback (re)starts
   * @param {number} maxSeconds bound on buffered audio; beyond it new samples are dropped (counted)
   */
  constructor(sampleRate, cushionMs = 150, maxSeconds = 600) {
    this.sampleRate = sampleRate;
    this.cushion = Math.round((sampleRate * cushionMs) / 1000);
    this.maxSamples = Math.round(sampleRate * maxSeconds);
    this.reset();
  }

  /** Forget everything: buffered audio, counters, state (a new utterance or a barge-in). */
  reset() {
    this.chunks = []; // Float32Array[], oldest first
    this.readOffset = 0; // samples already consumed from chunks[0]
    this.buffered = 0;
    this.state = "idle";
    this.eos = false; // true: no more audio is expected for now
    this.played = 0; // real samples rendered (silence of a pause not counted)
    this.underruns = 0;
    this.dropped = 0;
    this.levelSum = 0;
    this.levelCount = 0;
  }

  /** Drop buffered audio now (stop); counters stay, so a test can see playback stop. */
  flush() {
    this.chunks = [];
    this.readOffset = 0;
    this.buffered = 0;
    this.state = "idle";
    this.eos = false;
  }

  /** @param {Float32Array} samples mono at the output rate */
  push(samples) {
    if (samples.length === 0) return;
    if (this.buffered + samples.length > this.maxSamples) {
      this.dropped += samples.length;
      return;
    }
    this.chunks.push(samples);
    this.buffered += samples.length;
    this.eos = false;
    if (this.state === "idle" || this.state === "drained") this.state = "cushion";
  }

  /** No more audio is expected until the next push (end of utterance or of a flushed turn). */
  endOfStream() {
    this.eos = true;
  }

  /**
   * Fill `out` (Float32Array, one block) with the next samples, zero-padding what is missing.
   * @returns {number} real samples written
   */
  render(out) {
    if (this.state === "cushion" && (this.buffered >= this.cushion || (this.eos && this.buffered > 0))) {
      this.state = "playing";
    }
    if (this.state === "drained" && this.buffered > 0) this.state = "playing";
    let written = 0;
    if (this.state === "playing") {
      while (written < out.length && this.chunks.length > 0) {
        const head = this.chunks[0];
        const n = Math.min(out.length - written, head.length - this.readOffset);
        out.set(head.subarray(this.readOffset, this.readOffset + n), written);
        written += n;
        this.readOffset += n;
        if (this.readOffset === head.length) {
          this.chunks.shift();
          this.readOffset = 0;
        }
      }
      this.buffered -= written;
      this.played += written;
      if (this.buffered === 0) {
        if (this.eos) {
          this.state = "drained";
        } else {
          this.underruns += 1;
          this.state = "cushion";
        }
      }
    }
    out.fill(0, written);
    for (let i = 0; i < written; i++) this.levelSum += out[i] * out[i];
    this.levelCount += out.length;
    return written;
  }

  /** RMS level of everything rendered since the last call (0..1). */
  takeLevel() {
    const rms = this.levelCount > 0 ? Math.sqrt(this.levelSum / this.levelCount) : 0;
    this.levelSum = 0;
    this.levelCount = 0;
    return rms;
  }

  snapshot() {
    return {
      state: this.state,
      played: this.played,
      buffered: this.buffered,
      underruns: this.underruns,
      dropped: this.dropped,
      level: this.takeLevel(),
    };
  }
}
