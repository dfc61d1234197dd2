// The demo page: compose text, speak it through /v1/stream, show live measurements.
//
// For tests and curious users: window.ttsDemo
//   .stats            a fresh snapshot (getter): framesReceived, framesDecoded, framesDropped,
//                     samplesPlayed (AudioContext rate), secondsPlayed, outputRate, underruns,
//                     ttfaMs (client: Speak click or first typed text -> first audio frame),
//                     serverTtfaMs, rtf, serverDone (last done/flushed message), lastError,
//                     playing, finished (done received and everything played), format, segment.
//   .speak(text)      -> Promise resolving with the stats when the utterance has played to the end
//                     (or was stopped); rejects when the server refuses it.
//   .stop()           -> sends `clear` and silences playback at once (returns undefined).
//   .ready            Promise resolved once voices and /v1/info are loaded.
//
// With access control on, the page asks for an API key once (or uses ?token= from its URL) and
// streams with short-lived tokens: see auth.js.

import { ACCESS_CODES, Credentials } from "./auth.js";
import { StreamPlayer, opusUnavailableReason } from "./player.js";
import { StreamSession } from "./session.js";

const credentials = new Credentials();

const $ = (id) => document.getElementById(id);
const ui = {
  text: $("text"), voice: $("voice"), format: $("format"), nfe: $("nfe"), nfeField: $("nfe-field"),
  speed: $("speed"), speedOut: $("speed-out"), speak: $("speak"), stop: $("stop"), live: $("live"),
  notice: $("notice"), caption: $("caption"), segments: $("segments"), scope: $("scope"),
  enginePill: $("engine-pill"), connPill: $("conn-pill"), meter: $("meter"),
  ttfa: $("stat-ttfa"), serverTtfa: $("stat-server-ttfa"), rtf: $("stat-rtf"), played: $("stat-played"),
  underruns: $("stat-underruns"), frames: $("stat-frames"), buffer: $("stat-buffer"),
};

const state = {
  session: null, // the open session, if any
  shown: null, // the session whose numbers are on screen (stays after it closes)
  info: null,
  serverDone: null,
  doneReceived: false,
  lastError: null,
  finishWaiters: [],
  liveSent: 0, // characters of the textarea already sent in live mode
};

const player = new StreamPlayer({
  cushionMs: 150,
  onStats: () => {
    render();
    checkFinished();
  },
  onSegment: (segment) => showSegment(segment),
  onError: (message) => showError(message),
});

function notice(text) {
  ui.notice.hidden = !text;
  ui.notice.textContent = text ?? "";
}

function showError(message) {
  state.lastError = message;
  ui.connPill.textContent = "error";
  ui.connPill.dataset.state = "error";
  notice(message);
}

function setConn(text, st) {
  ui.connPill.textContent = text;
  ui.connPill.dataset.state = st;
}

const fmtMs = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);

function stats() {
  const s = player.stats;
  return {
    ...s,
    ttfaMs: state.shown?.ttfaMs ?? null,
    serverTtfaMs: state.serverDone?.ttfa_ms ?? null,
    rtf: state.serverDone?.rtf ?? null,
    serverDone: state.serverDone,
    lastError: state.lastError ?? s.lastError ?? null,
    // everything the server sent is decoded and played out
    finished:
      state.doneReceived && s.framesDecoded >= s.framesReceived && s.samplesPlayed >= s.samplesQueued && !s.playing,
    format: state.shown?.ready?.format ?? null,
    segment: player.currentSegment?.text ?? null,
  };
}

function render() {
  const s = stats();
  ui.ttfa.textContent = fmtMs(s.ttfaMs);
  ui.serverTtfa.textContent = fmtMs(s.serverTtfaMs);
  ui.rtf.textContent = s.rtf === null ? "–" : s.rtf.toFixed(3);
  ui.played.textContent = `${s.secondsPlayed.toFixed(2)} s`;
  ui.underruns.textContent = String(s.underruns);
  ui.frames.textContent = `${s.framesReceived} / ${s.framesDecoded}`;
  ui.buffer.textContent = fmtMs(s.bufferedMs);
  ui.meter.style.width = `${Math.min(100, Math.round(s.level * 400))}%`;
}

function showSegment(segment) {
  ui.caption.textContent = segment ? segment.text : "";
  for (const li of ui.segments.children) {
    const index = Number(li.dataset.index);
    li.classList.toggle("current", segment !== null && index === segment.index);
    li.classList.toggle("played", segment !== null && index < segment.index);
  }
}

function addSegment(msg) {
  const li = document.createElement("li");
  li.dataset.index = String(msg.index);
  li.textContent = msg.text;
  ui.segments.append(li);
}

function checkFinished() {
  if (!state.finishWaiters.length) return;
  const s = stats();
  // finished playing, stopped, or the connection ended without `done` (an error)
  if (s.finished || state.stopped || (state.session === null && !state.doneReceived)) {
    for (const resolve of state.finishWaiters.splice(0)) resolve(s);
    ui.stop.disabled = !ui.live.checked;
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "ready":
      setConn(`${msg.format} · ${msg.sample_rate / 1000} kHz`, "open");
      break;
    case "segment":
      addSegment(msg);
      break;
    case "flushed":
      state.serverDone = msg;
      break;
    case "done":
      state.serverDone = msg;
      state.doneReceived = true;
      break;
    case "cleared":
      if (!ui.live.checked) state.session?.end(); // a stopped Speak: finish the session cleanly
      break;
    case "error":
      showError(`${msg.code}: ${msg.message}`);
      if (ACCESS_CODES.has(msg.code)) credentials.refused(msg.code);
      break;
  }
  render();
  checkFinished();
}

/** The `start` message for the current controls. */
function startMessage() {
  const format = ui.format.value;
  const start = { voice: ui.voice.value || undefined, format, options: { speed: Number(ui.speed.value) } };
  if (format === "pcm_s16le") {
    // Ask for the AudioContext's own rate when the server offers it: nothing to resample then.
    const all = state.info?.sample_rates ?? {};
    const rates = Array.isArray(all) ? all : (all[format] ?? []);
    const rate = player.ctx?.sampleRate;
    start.sample_rate = rates.includes(rate) ? rate : 24000;
  }
  if (!ui.nfeField.hidden && ui.nfe.value) start.options.nfe = Number(ui.nfe.value);
  return start;
}

/**
 * Open a session for the current controls. The socket and `state.session` exist when this returns
 * (messages sent before `ready` are queued by the session); `.ready` resolves once the server is ready.
 */
function openSession(t0) {
  closeSession();
  state.serverDone = null;
  state.doneReceived = false;
  state.stopped = false;
  state.lastError = null;
  notice(state.fallbackNotice ?? "");
  ui.segments.replaceChildren();
  showSegment(null);
  const session = new StreamSession(player, {
    url: () => credentials.wsUrl("/v1/stream"),
    onMessage,
    onClose: (event) => {
      if (state.session === session) {
        state.session = null;
        if (!state.lastError) setConn(event.code === 1000 ? "idle" : `closed ${event.code}`, event.code === 1000 ? "idle" : "error");
        if (!state.doneReceived) player.stop();
        checkFinished();
      }
    },
  });
  state.session = session;
  state.shown = session;
  setConn("connecting…", "idle");
  ui.stop.disabled = false;
  const opened = session.open(startMessage(), t0);
  return { session, ready: Promise.all([opened, player.resume()]).then(() => session) };
}

function closeSession() {
  const old = state.session;
  state.session = null;
  if (old) {
    player.stop();
    old.close();
    checkFinished();
  }
}

/** Speak `text` in a fresh session; resolves with the stats once it has played (or was stopped). */
async function speak(text) {
  const t0 = performance.now();
  closeSession(); // settles the previous utterance's promise first
  const finished = new Promise((resolve) => state.finishWaiters.push(resolve));
  try {
    const session = await openSession(t0).ready;
    session.sendText(text);
    session.end();
  } catch (err) {
    showError(String(err.message ?? err));
    closeSession();
    throw err;
  }
  return finished;
}

/** Barge-in: clear on the server, silence here immediately. */
function stop() {
  state.stopped = !ui.live.checked; // a stopped Speak is over; live mode goes on
  if (state.session) state.session.clear(ui.live.checked);
  else player.stop();
  state.liveSent = ui.text.value.length;
  showSegment(null);
  render();
}

// --- live mode: the textarea streams like an LLM would --------------------------------------------
function liveInput() {
  if (!ui.live.checked) return;
  const value = ui.text.value;
  if (value.length < state.liveSent) state.liveSent = value.length; // edits behind the cursor: ignore
  const delta = value.slice(state.liveSent);
  if (!delta) return;
  state.liveSent = value.length;
  if (!state.session || state.session.closed) {
    openSession().ready.catch((err) => showError(String(err.message ?? err)));
  }
  state.session.sendText(delta); // in order, even while the socket is still connecting
}

function liveKey(event) {
  if (ui.live.checked && event.key === "Enter" && !event.shiftKey) {
    // Enter = "this turn is complete": flush it (the newline itself is still sent as text).
    // after the input event, so the newline goes out with this turn
    setTimeout(() => {
      liveInput();
      state.session?.flush();
    });
  }
}

function liveToggle() {
  ui.speak.disabled = ui.live.checked;
  if (ui.live.checked) {
    state.liveSent = ui.text.value.length; // only what is typed from now on is spoken
    ui.text.focus();
  } else if (state.session) {
    state.session.end();
  }
}

// --- waveform ---------------------------------------------------------------------------------------
function drawScope() {
  const canvas = ui.scope;
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const height = canvas.height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  if (player.analyser) {
    const data = new Float32Array(player.analyser.fftSize);
    player.analyser.getFloatTimeDomainData(data);
    g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--accent");
    g.lineWidth = 2;
    g.beginPath();
    for (let i = 0; i < data.length; i++) {
      const x = (i / (data.length - 1)) * width;
      const y = height / 2 - data[i] * height * 0.9;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    }
    g.stroke();
  }
  requestAnimationFrame(drawScope);
}

// --- start-up ---------------------------------------------------------------------------------------
async function loadServerInfo() {
  const get = async (path) => {
    const response = await credentials.fetch(path);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const err = body.error ?? body;
      throw new Error(`${err.code ?? response.status}: ${err.message ?? response.statusText}`);
    }
    return response.json();
  };
  const info = await get("v1/info"); // first, alone: a 401 asks for the key once
  const voices = await get("v1/voices");
  state.info = info;
  ui.enginePill.textContent = `${info.engine} · ${info.device}`;
  ui.voice.replaceChildren(
    ...voices.voices.map((v) => {
      const label = v.description ? `${v.name} — ${v.description}` : v.name;
      const opt = new Option(label, v.name, v.name === voices.default, v.name === voices.default);
      return opt;
    }),
  );
  // `options` lists the start options this engine supports; NFE only for engines that have it.
  const options = Array.isArray(info.options) ? info.options : Object.keys(info.options ?? {});
  if (options.includes("nfe")) {
    const steps = [5, 6, 7, 10, 12, 16, 32];
    ui.nfe.replaceChildren(new Option("default", "", true, true), ...steps.map((n) => new Option(String(n), String(n))));
    ui.nfeField.hidden = false;
  }
}

async function main() {
  ui.speak.addEventListener("click", () => speak(ui.text.value).catch(() => {}));
  ui.stop.addEventListener("click", stop);
  ui.live.addEventListener("change", liveToggle);
  ui.text.addEventListener("input", liveInput);
  ui.text.addEventListener("keydown", liveKey);
  ui.speed.addEventListener("input", () => (ui.speedOut.textContent = `${Number(ui.speed.value).toFixed(1)}×`));

  const reason = await opusUnavailableReason();
  if (reason) {
    ui.format.value = "pcm_s16le";
    ui.format.querySelector('option[value="opus"]').disabled = true;
    state.fallbackNotice = `Opus playback is unavailable (${reason}); using PCM instead.`;
    notice(state.fallbackNotice);
  }
  await player.init();
  render();
  requestAnimationFrame(drawScope);
  await loadServerInfo();
}

const ready = main().catch((err) => {
  showError(`could not load the server's info: ${err.message ?? err}`);
  ui.enginePill.textContent = "offline";
});

window.ttsDemo = {
  get stats() {
    return stats();
  },
  speak,
  stop,
  ready,
  player,
  credentials,
};
