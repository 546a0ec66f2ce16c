// An app's live logs: GET /apps/NAME/logs?tail=200&follow=true streams NDJSON, one
// object a line: {at, instance, node, release, stream: "stdout"|"stderr", line, gone?}, or
// {warning}. Read with fetch and a stream reader (an EventSource could not send the
// Authorization header). At most MAX_LINES stay in the page; the stream stops when the
// user leaves the app's page, and comes back by itself if the server ends it.

import { appPath, request } from "./api.js";
import { button, h, timeText } from "./dom.js";

export const MAX_LINES = 2000;
const TAIL = 200;
const RECONNECT_MS = 3000;

/** Splits a byte stream into lines: a chunk may end in the middle of a line (or of a
 * UTF-8 character), which waits for the next chunk. */
export class LineSplitter {
  constructor() {
    this.decoder = new TextDecoder();
    this.rest = "";
  }

  push(bytes) {
    const text = this.rest + this.decoder.decode(bytes, { stream: true });
    const lines = text.split("\n");
    this.rest = lines.pop();
    return lines.filter((l) => l.trim());
  }

  end() {
    const last = (this.rest + this.decoder.decode()).trim();
    this.rest = "";
    return last ? [last] : [];
  }
}

/** One line of the stream as an object, or a warning for one that is not JSON (a
 * broken line must not stop the others). */
export function parseLine(text) {
  try {
    const item = JSON.parse(text);
    if (item && typeof item === "object") return item;
  } catch {
    // shown as a warning below
  }
  return { warning: `unreadable log line: ${text.slice(0, 200)}` };
}

export function logsPanel(name) {
  const lines = h("div", {
    class: "log", id: "log-lines", tabindex: 0, role: "log",
    // Not read aloud line by line: the status below says what arrives.
    "aria-live": "off", "aria-label": `Log lines of ${name}, newest last`,
  });
  const status = h("p", { class: "log-status", role: "status" });
  const error = h("p", { class: "form-error", role: "alert" });
  let controller = null;
  let paused = false;
  let stopped = true;
  let timer = null;
  let count = 0;
  // Where the last stream got to: a reconnect's tail may repeat lines already shown.
  let lastAt = 0;
  let seenAtLast = new Set();
  let pending = [];
  let frame = 0;

  const pause = button("Pause", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (paused) {
      end();
      status.textContent = "Paused.";
    } else {
      connect();
    }
    return "";
  }, { class: "secondary small", "aria-pressed": "false" });
  const clear = button("Clear", () => {
    lines.replaceChildren();
    count = 0;
    return "";
  }, { class: "secondary small" });
  const retry = button("Try again", () => {
    connect();
    return "";
  }, { class: "secondary small", hidden: true });

  function add(item) {
    if (item.warning !== undefined) {
      pending.push(h("div", { class: "entry warning" }, h("span", { class: "tag" }, "warning"), " ", String(item.warning)));
    } else {
      const at = Number(item.at) || 0;
      const key = `${item.instance}|${item.stream}|${item.line}`;
      if (at < lastAt || (at === lastAt && seenAtLast.has(key))) return; // shown already
      if (at > lastAt) {
        lastAt = at;
        seenAtLast = new Set();
      }
      seenAtLast.add(key);
      const stream = item.stream === "stderr" ? "stderr" : "stdout";
      pending.push(h("div", { class: "entry " + stream + (item.gone ? " gone" : "") },
        h("time", { datetime: new Date(at * 1000).toISOString() }, timeText(at)), " ",
        h("span", { class: "inst", title: `instance ${item.instance} on node ${item.node}, release ${item.release}` },
          String(item.instance ?? "?").slice(0, 8), item.node ? ` ${item.node}` : "",
          item.gone ? " (gone)" : ""), " ",
        h("span", { class: "tag " + stream }, stream), " ",
        h("span", { class: "text" }, String(item.line ?? ""))));
    }
    if (!frame) frame = requestAnimationFrame(flush);
  }

  // Lines arrive in bursts (the tail, a busy app): add them to the page once a frame.
  function flush() {
    frame = 0;
    const atBottom = lines.scrollHeight - lines.scrollTop - lines.clientHeight < 40;
    lines.append(...pending);
    count += pending.length;
    pending = [];
    while (count > MAX_LINES) {
      lines.firstElementChild.remove();
      count--;
    }
    if (atBottom) lines.scrollTop = lines.scrollHeight;
    if (controller) status.textContent = `Following: ${count} line(s) shown (at most ${MAX_LINES}).`;
  }

  function end() {
    clearTimeout(timer);
    timer = null;
    controller?.abort();
    controller = null;
  }

  async function connect() {
    end();
    stopped = false;
    error.textContent = "";
    retry.hidden = true;
    const mine = (controller = new AbortController());
    let streaming = false;
    status.textContent = "Connecting to the log stream…";
    try {
      const response = await request("GET", `${appPath(name, "/logs")}?tail=${TAIL}&follow=true`,
        { signal: mine.signal }).catch((e) => {
        // The server's own 404 for a route it does not have: an older server.
        if (e.status === 404 && !e.fromApi) {
          e.error = "This server cannot stream logs: it has no logs endpoint (HTTP 404).";
          e.hint = "";
        }
        throw e;
      });
      streaming = true;
      status.textContent = `Following: ${count} line(s) shown (at most ${MAX_LINES}).`;
      const reader = response.body.getReader();
      const splitter = new LineSplitter();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        splitter.push(value).forEach((l) => add(parseLine(l)));
      }
      splitter.end().forEach((l) => add(parseLine(l)));
      again(mine, "The log stream ended; reconnecting…");
    } catch (e) {
      if (e.name === "AbortError" || mine !== controller) return; // we stopped it
      if (streaming) {
        again(mine, "The log stream broke; reconnecting…");
        return;
      }
      controller = null;
      status.textContent = "Not following the logs.";
      error.textContent = e.words || String(e.message || e);
      retry.hidden = false;
    }
  }

  // The server ended the stream (it restarted, a proxy timed it out): follow again.
  function again(mine, words) {
    if (mine !== controller || stopped || paused) return;
    status.textContent = words;
    timer = setTimeout(connect, RECONNECT_MS);
  }

  const element = h("section", { class: "panel logs", "aria-labelledby": "logs-title" },
    h("div", { class: "title-row" }, h("h2", { id: "logs-title" }, "Logs"),
      h("div", { class: "tools" }, pause, clear, retry)),
    error, lines, status);
  return {
    element,
    start: connect,
    stop() {
      stopped = true;
      end();
    },
  };
}
