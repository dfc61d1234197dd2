// Credentials for a server with access control on (docs/INTEGRATIONS.md, "Access control").
//
// A WebSocket URL never carries a key: with a key (asked for once when the server answers 401,
// kept in localStorage) the page mints a short-lived streaming token (POST /v1/tokens) and
// connects with ?token=...; a page opened with ?token=... in its own URL uses that token. HTTP calls
// carry `Authorization: Bearer` (the key, or the URL's token). `#key=...` in the page URL (for an
// OBS browser source, which cannot answer a prompt) stores the key and is removed from the address
// bar. On a server without keys nothing here changes what the page sends, except a harmless token.

const KEY_STORAGE = "stream-tts.api-key";
const REFRESH_MARGIN_S = 30; // mint a new token this long before the old one expires
export const ACCESS_CODES = new Set([
  "unauthorized", "invalid_token", "token_expired", "token_scope", "forbidden_origin",
]);

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: the key lives as long as the page
  }
}

async function errorText(response) {
  try {
    const body = await response.clone().json(); // the caller may still read the body
    const err = body.error ?? body;
    return `${err.code ?? response.status}: ${err.message ?? response.statusText}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

export class Credentials {
  /** @param {{ask?: (message: string) => string | null}} options ask: how to ask for a key */
  constructor({ ask = (message) => window.prompt(message) } = {}) {
    const here = new URL(window.location.href);
    this.urlToken = here.searchParams.get("token");
    const fragmentKey = new URLSearchParams(here.hash.slice(1)).get("key");
    if (fragmentKey) {
      storage()?.setItem(KEY_STORAGE, fragmentKey);
      window.history.replaceState(null, "", here.pathname + here.search);
    }
    this.key = fragmentKey || storage()?.getItem(KEY_STORAGE) || null;
    this.ask = ask;
    this.token = null;
    this.tokenExpiresMs = 0;
    this.asked = false;
  }

  headers(extra = {}) {
    const bearer = this.key ?? this.urlToken;
    return bearer ? { ...extra, Authorization: `Bearer ${bearer}` } : extra;
  }

  /** fetch() with credentials; a 401 asks for a key (once per page) and retries. */
  async fetch(path, init = {}) {
    let response = await fetch(path, { ...init, headers: this.headers(init.headers ?? {}) });
    if (response.status === 401 && this.askForKey(await errorText(response))) {
      response = await fetch(path, { ...init, headers: this.headers(init.headers ?? {}) });
    }
    return response;
  }

  /** Ask the user for a key; true when one was given. */
  askForKey(reason) {
    if (this.asked) return false;
    this.asked = true;
    const key = this.ask(`This stream-tts server needs an API key (${reason}). Key:`);
    if (!key || !key.trim()) return false;
    this.setKey(key.trim());
    return true;
  }

  setKey(key) {
    this.key = key;
    this.token = null;
    storage()?.setItem(KEY_STORAGE, key);
  }

  /** The server refused our credentials on a socket: drop the token (and a key it rejects). */
  refused(code) {
    this.token = null;
    if (code === "unauthorized" && this.key) {
      this.key = null;
      storage()?.removeItem(KEY_STORAGE);
      this.asked = false;
    }
  }

  /** A token for the streaming routes: minted with the key, or the page URL's; null = none. */
  async streamToken() {
    if (!this.key) return this.urlToken;
    if (!this.token || Date.now() > this.tokenExpiresMs - REFRESH_MARGIN_S * 1000) {
      const response = await fetch("v1/tokens", {
        method: "POST",
        headers: { Authorization: `Bearer ${this.key}`, "Content-Type": "application/json" },
        body: "{}",
      });
      if (!response.ok) {
        const text = await errorText(response);
        if (response.status === 401) this.refused("unauthorized");
        throw new Error(text);
      }
      const body = await response.json();
      this.token = body.token;
      this.tokenExpiresMs = Date.now() + body.expires_in * 1000;
    }
    return this.token;
  }

  /** ws:// or wss:// URL of a path on this server, with a streaming token when there is one. */
  async wsUrl(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const token = await this.streamToken();
    if (token) url.searchParams.set("token", token);
    return url.href;
  }
}
