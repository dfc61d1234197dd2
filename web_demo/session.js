// A client of the /v1/stream wire protocol (docs/PROTOCOL.md) that plays through a StreamPlayer.
//
// Client -> server JSON: start, text, flush, clear, end. Server -> client: ready, segment,
// segment_done, flushed, cleared, done, error (JSON) and binary frames that are audio only.
// Used by the demo page (one session per "Speak", one long session in live mode) and the overlay
// (one session per queued message).

/** ws:// or wss:// URL of a path on the server that served this page. */
export function wsUrl(path) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

const MAX_UNSENT = 4096; // typed characters while the socket opens; far more than anyone types

export class StreamSession {
  /**
   * @param {import("./player.js").StreamPlayer} player
   * @param {{onMessage?: Function, onClose?: Function, url?: () => Promise<string>}} handlers
   *   onMessage(msg) for every JSON message (after the session handled it); onClose(event) once
   *   the socket is closed; url() the socket's URL (e.g. with a token, see auth.js).
   */
  constructor(player, handlers = {}) {
    this.player = player;
    this.onMessage = handlers.onMessage ?? (() => {});
    this.onClose = handlers.onClose ?? (() => {});
    this.url = handlers.url ?? (async () => wsUrl("/v1/stream"));
    this.ws = null;
    this.ready = null;
    this.lastSegment = -1;
    this.clearing = false; // between our `clear` and the server's `cleared`
    this.resumeAfterClear = false; // live mode: keep the session and play the next turn
    this.closed = false;
    this.unsent = []; // messages sent while still connecting; go out right after `start`
    this.turnStart = null; // performance.now() of the first text of the current turn
    this.ttfaMs = null; // client TTFA of the current turn: first text (or t0) -> first audio frame
  }

  /**
   * Connect and send `start`; resolves with the server's `ready` message.
   * @param {object} start fields of the start message (voice, format, sample_rate, options)
   * @param {number} [t0] performance.now() the TTFA clock starts at (default: first text sent)
   */
  open(start, t0) {
    if (t0 !== undefined) this.turnStart = t0;
    return this.url().then((url) => new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error("session closed before it connected"));
        return;
      }
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "start", ...start }));
        for (const queued of this.unsent.splice(0)) ws.send(queued);
      };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") {
          this.onAudio(event.data);
          return;
        }
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        if (msg.type === "ready") resolve(msg);
        if (msg.type === "error" && !this.ready) reject(new Error(`${msg.code}: ${msg.message}`));
        this.handle(msg);
      };
      ws.onclose = (event) => {
        this.closed = true;
        if (!this.ready) reject(new Error(`connection closed (${event.code}) before ready`));
        this.onClose(event);
      };
      ws.onerror = () => {}; // the close event that follows carries the outcome
    }));
  }

  handle(msg) {
    switch (msg.type) {
      case "ready":
        this.ready = msg;
        this.player.begin({ format: msg.format, sampleRate: msg.sample_rate, frameMs: msg.frame_ms });
        break;
      case "segment":
        if (this.clearing) return;
        this.lastSegment = msg.index;
        this.player.markSegment(msg.index, msg.text);
        break;
      case "segment_done":
        if (this.clearing) return;
        if (msg.index === this.lastSegment) this.player.expectNoMore();
        break;
      case "flushed":
        this.turnStart = null;
        this.player.expectNoMore();
        break;
      case "done":
        this.player.expectNoMore();
        break;
      case "cleared":
        this.clearing = false;
        if (this.resumeAfterClear && this.ready) {
          const r = this.ready;
          this.player.begin({ format: r.format, sampleRate: r.sample_rate, frameMs: r.frame_ms });
        }
        break;
    }
    this.onMessage(msg);
  }

  onAudio(buffer) {
    if (this.clearing) return; // audio of the text we just cleared
    if (this.ttfaMs === null && this.turnStart !== null) this.ttfaMs = performance.now() - this.turnStart;
    this.player.pushAudio(buffer);
  }

  send(msg) {
    if (this.closed) return;
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
    else if ((!this.ws || this.ws.readyState === WebSocket.CONNECTING) && this.unsent.length < MAX_UNSENT) {
      this.unsent.push(JSON.stringify(msg)); // still finding the URL (token) or connecting
    }
  }

  sendText(text) {
    if (!text) return;
    if (this.turnStart === null) {
      this.turnStart = performance.now();
      this.ttfaMs = null;
    }
    this.send({ type: "text", text });
  }

  flush() {
    this.send({ type: "flush" });
  }

  end() {
    this.send({ type: "end" });
  }

  /**
   * Barge-in: silence now, tell the server, ignore audio until `cleared`.
   * @param {boolean} resume true: the session goes on (live mode) and plays what comes next
   */
  clear(resume = false) {
    this.clearing = true;
    this.resumeAfterClear = resume;
    this.turnStart = null;
    this.player.stop();
    this.send({ type: "clear" });
  }

  close() {
    if (!this.ws) this.closed = true; // still minting a token: never connect
    else if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }
}
