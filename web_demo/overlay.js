// OBS overlay: reads queued texts aloud and shows the caption of the segment being heard.
//
// The server hands out one text at a time on WS /v1/overlay/events ({type:"say", id, text, voice,
// author}); the page speaks it through an ordinary /v1/stream session (start, text, end), then
// reports {type:"played", id} and gets the next. {type:"skip", id} stops the current text at once.
//
// Query parameters: voice (default voice), size (font px, default 40), lines (max caption lines,
// default 2), author=0 to hide author names, token (a streaming token: short-lived, see auth.js).
// With access control on, an OBS browser source uses the URL fragment #key=KEY once (stored in
// its localStorage, removed from the URL); the page then streams with short-lived tokens.
// For tests: window.ttsOverlay.stats = {spoken: [id...], captions: [text...], current, lastError,
// connected, audioEnabled} and window.ttsOverlay.player.

import { ACCESS_CODES, Credentials } from "./auth.js";
import { StreamPlayer, opusUnavailableReason } from "./player.js";
import { StreamSession } from "./session.js";

const credentials = new Credentials();

const params = new URLSearchParams(window.location.search);
const defaultVoice = params.get("voice") ?? "";
const showAuthor = params.get("author") !== "0";
const fontPx = Number(params.get("size"));
const lines = Number(params.get("lines"));
if (fontPx > 0) document.documentElement.style.setProperty("--size", `${Math.min(fontPx, 200)}px`);
if (lines > 0) document.documentElement.style.setProperty("--lines", String(Math.min(Math.floor(lines), 10)));

const box = document.getElementById("caption-box");
const caption = document.getElementById("caption");
const author = document.getElementById("author");
const enableButton = document.getElementById("enable-audio");

const stats = { spoken: [], captions: [], current: null, lastError: null, connected: false, audioEnabled: false };
let events = null; // the /v1/overlay/events socket
let current = null; // {item, session, doneReceived}
let format = "opus";

const player = new StreamPlayer({
  cushionMs: 150,
  onStats: () => checkFinished(),
  onSegment: (segment) => {
    if (!segment || !current) return;
    caption.textContent = segment.text;
    author.textContent = showAuthor ? current.item.author : "";
    box.hidden = false;
    stats.captions.push(segment.text);
  },
  onError: (message) => (stats.lastError = message),
});

function hideCaption() {
  box.hidden = true;
  caption.textContent = "";
}

function report(id) {
  if (events && events.readyState === WebSocket.OPEN) events.send(JSON.stringify({ type: "played", id }));
}

/** The current text is over (played, failed or skipped): tidy up and ask for the next. */
function finish(tell) {
  if (!current) return;
  const { item, session } = current;
  current = null;
  stats.current = null;
  player.stop();
  session.close();
  hideCaption();
  stats.spoken.push(item.id);
  if (tell) report(item.id);
}

function checkFinished() {
  if (!current?.doneReceived) return;
  const s = player.stats;
  if (s.framesDecoded >= s.framesReceived && s.samplesPlayed >= s.samplesQueued && !s.playing) finish(true);
}

async function say(item) {
  if (current) finish(false); // the server moved on (several pages, or a skip we missed)
  const entry = { item, session: null, doneReceived: false };
  current = entry;
  stats.current = item.id;
  const session = new StreamSession(player, {
    url: () => credentials.wsUrl("/v1/stream"),
    onMessage: (msg) => {
      if (msg.type === "done") {
        entry.doneReceived = true;
        checkFinished();
      } else if (msg.type === "error") {
        stats.lastError = `${msg.code}: ${msg.message}`;
        if (ACCESS_CODES.has(msg.code)) credentials.refused(msg.code);
      }
    },
    onClose: () => {
      if (current === entry && !entry.doneReceived) finish(true); // failed: do not stall the queue
    },
  });
  entry.session = session;
  try {
    await session.open({ voice: item.voice || defaultVoice || undefined, format });
    session.sendText(item.text);
    session.end();
  } catch (err) {
    stats.lastError = String(err.message ?? err);
    if (current === entry) finish(true);
  }
}

async function connectEvents(delayMs = 1000) {
  let ws;
  try {
    ws = new WebSocket(await credentials.wsUrl("/v1/overlay/events"));
  } catch (err) {
    stats.lastError = String(err.message ?? err); // e.g. the key was refused when minting
    setTimeout(() => connectEvents(Math.min(delayMs * 2, 5000)), delayMs);
    return;
  }
  events = ws;
  ws.onopen = () => {
    stats.connected = true;
    delayMs = 1000;
  };
  ws.onmessage = (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (msg.type === "say") say(msg);
    else if (msg.type === "skip" && current?.item.id === msg.id) finish(false);
    else if (msg.type === "error") {
      stats.lastError = `${msg.code}: ${msg.message}`;
      if (ACCESS_CODES.has(msg.code)) credentials.refused(msg.code);
      if (msg.code === "unauthorized" && !credentials.key) credentials.askForKey(msg.message);
    }
  };
  ws.onclose = () => {
    stats.connected = false;
    if (current) finish(false); // the server re-queues an unfinished text when no page is left
    setTimeout(() => connectEvents(Math.min(delayMs * 2, 5000)), delayMs);
  };
}

async function enableAudio() {
  await player.resume();
  stats.audioEnabled = !player.suspended;
  enableButton.hidden = stats.audioEnabled;
}

async function main() {
  if (await opusUnavailableReason()) format = "pcm_s16le";
  await player.init();
  // OBS (and Chromium with an autoplay policy) lets the context run; a normal browser wants a click.
  await Promise.race([player.ctx.resume(), new Promise((resolve) => setTimeout(resolve, 300))]);
  stats.audioEnabled = !player.suspended;
  enableButton.hidden = stats.audioEnabled;
  enableButton.addEventListener("click", enableAudio);
  player.ctx.addEventListener("statechange", () => {
    stats.audioEnabled = !player.suspended;
    enableButton.hidden = stats.audioEnabled;
  });
  connectEvents();
}

main().catch((err) => (stats.lastError = String(err.message ?? err)));
window.ttsOverlay = { stats, player, credentials };
