// The dinp server's JSON API, as the Dashboard calls it: the token, requests, and errors
// turned into words. Every other module goes through `api()`.

export const API = "/api/v1";
const TOKEN_KEY = "dinp-token";

// The token lives as long as the tab: sessionStorage, never localStorage or a cookie
// (a cookie would be sent by requests other sites make the browser send).
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An answer that was not a success, or no answer at all (status 0). `message` is the
 * server's `error` and `hint` together; `field` names the input a 400 is about. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = typeof body?.error === "string" && body.error ? body.error : fallback(status);
    super(error);
    this.status = status;
    this.error = error;
    this.hint = typeof body?.hint === "string" ? body.hint : "";
    this.field = typeof body?.field === "string" ? body.field : "";
    this.reason = typeof body?.reason === "string" ? body.reason : "";
    // Whether the API itself said what is wrong (else: a proxy, or a route it lacks).
    this.fromApi = typeof body?.error === "string";
  }

  /** What to show next to the field (the reason alone: the label names the field). */
  get fieldMessage() {
    return sentences(this.reason || this.error, this.hint);
  }

  /** The error and what to do about it, as the server says them. */
  get words() {
    return sentences(this.error, this.hint);
  }
}

// "error" and "hint" as two sentences (the API's errors end without a full stop).
function sentences(error, hint) {
  if (!hint) return error;
  return /[.!?:]$/.test(error) ? `${error} ${hint}` : `${error}. ${hint}`;
}

function fallback(status) {
  if (status === 0) return "The server did not answer: it may be down or unreachable.";
  if (status === 404) return "Not found (HTTP 404).";
  if (status === 403) return "You may not do this (HTTP 403).";
  return `The server answered HTTP ${status}.`;
}

// Called with the server's message when it says the token is no good (expired, revoked,
// the user disabled): the page goes back to signing in.
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** Read an error answer's body: the API's JSON, or whatever a proxy or aiohttp's own
 * 404 sent (text), which becomes a message with the status. */
export async function errorOf(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  return new ApiError(response.status, body && typeof body === "object" ? body : null);
}

/** Send a request to the API; resolve with the Response when it is a success, reject
 * with an ApiError otherwise (a 401 also sends the page back to signing in). */
export async function request(method, path, { body, signal, auth = true } = {}) {
  const headers = {};
  if (auth && token.get()) headers.Authorization = "Bearer " + token.get();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, null);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && auth) onUnauthorized(error.words);
    throw error;
  }
  return response;
}

/** Call the API; resolve with the JSON answer, reject with an ApiError. */
export async function api(method, path, body = undefined, { signal, auth = true } = {}) {
  return (await request(method, path, { body, signal, auth })).json();
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body = {}, opts) => api("POST", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

/** `/apps/NAME` with the name escaped for a URL. */
export const appPath = (name, rest = "") => "/apps/" + encodeURIComponent(name) + rest;
