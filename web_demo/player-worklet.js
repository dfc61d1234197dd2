// AudioWorklet side of the player: a PlaybackRing fed with float32 chunks from the main thread.
// Messages in (port): {type:"push", samples: Float32Array}, {type:"eos"}, {type:"flush"},
// {type:"reset", epoch}. Messages out: {type:"stats", state, played, buffered, underruns, dropped, level}
// about every 20 ms, and right after a flush/reset so the page sees silence at once.

import { PlaybackRing } from "./ring.js";

const REPORT_EVERY_BLOCKS = 8; // 8 x 128 frames = 21 ms at 48 kHz

class RingPlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const cushionMs = options?.processorOptions?.cushionMs ?? 150;
    this.ring = new PlaybackRing(sampleRate, cushionMs);
    this.blocks = 0;
    this.epoch = 0; // echoed in reports so the page can ignore reports from before a reset
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    switch (msg.type) {
      case "push":
        this.ring.push(msg.samples);
        break;
      case "eos":
        this.ring.endOfStream();
        break;
      case "flush":
        this.ring.flush();
        this.report();
        break;
      case "reset":
        this.epoch = msg.epoch;
        this.ring.reset();
        this.report();
        break;
    }
  }

  report() {
    this.port.postMessage({ type: "stats", epoch: this.epoch, ...this.ring.snapshot() });
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    this.ring.render(out[0]);
    for (let ch = 1; ch < out.length; ch++) out[ch].set(out[0]); // mono to every output channel
    if (++this.blocks % REPORT_EVERY_BLOCKS === 0) this.report();
    return true;
  }
}

registerProcessor("ring-player", RingPlayerProcessor);
