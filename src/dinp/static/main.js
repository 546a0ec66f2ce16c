// The Dashboard's shell: who is signed in, the navigation, which view shows (from the
// URL's #fragment, so Back and bookmarks work), and the poll that keeps it current.
//
// A view is `{title, mount(main, ctx)}`; mount builds the page once and returns
// `{refresh(), unmount()}`. refresh() is called every POLL_MS and only updates what shows
// data (never the inputs the user is typing in); unmount() stops what the view started
// (the log stream).

import { get, post, token, whenUnauthorized } from "./api.js";
import { forgetOldNews, say } from "./dom.js";
import { appsView, createView } from "./apps.js";
import { appView } from "./app.js";
import { nodesView } from "./nodes.js";
import { signInView } from "./signin.js";

const POLL_MS = 1500;
const main = document.getElementById("main");
let me = null; // GET /whoami once signed in
let current = null; // {view, handle, key}
let polling = false;
let lastOk = true;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "apps" && parts[1]) return { key: "app:" + parts[1], view: appView, arg: parts[1] };
  if (parts[0] === "new") return { key: "new", view: createView };
  if (parts[0] === "nodes") return { key: "nodes", view: nodesView };
  return { key: "apps", view: appsView };
}

export function navigate(hash) {
  if (location.hash === hash) show(true);
  else location.hash = hash; // hashchange shows it
}

async function show(force = false) {
  const next = me ? route() : { key: "signin", view: signInView };
  if (!force && current?.key === next.key) return;
  current?.handle?.unmount?.();
  const ctx = { me, arg: next.arg, navigate, signedIn, focusHeading };
  const mine = (current = { key: next.key, view: next.view, handle: null });
  document.title = `${next.view.title(next.arg)} — dinp`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (next.key.startsWith(link.dataset.nav)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  forgetOldNews();
  const handle = await next.view.mount(main, ctx);
  if (current !== mine) {
    handle?.unmount?.(); // the user went elsewhere while it loaded
    return;
  }
  mine.handle = handle;
  if (next.key !== "signin") focusHeading();
}

/** After navigation, focus goes to the new page's heading: a screen reader reads where
 * the user is, and Tab continues from the top of the page's content. */
function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

async function signedIn(given) {
  token.set(given);
  try {
    me = await get("/whoami");
  } catch (e) {
    token.clear();
    throw e;
  }
  showMe();
  say("");
  if (!location.hash || location.hash === "#/") location.hash = "#/apps";
  await show(true);
}

function showMe() {
  const signedInNow = Boolean(me);
  document.getElementById("nav").hidden = !signedInNow;
  document.getElementById("me").hidden = !signedInNow;
  if (!me) return;
  const scope = me.app ? `a token for app ${me.app}` : me.role;
  document.getElementById("who").textContent = `Signed in as ${me.user} (${scope})`;
  // A token for one app (CI) may not create apps nor list nodes: no links to pages that
  // would only refuse it.
  document.getElementById("nav-new").parentElement.hidden = Boolean(me.app);
  document.getElementById("nav-nodes").parentElement.hidden = Boolean(me.app);
}

function signedOut(message) {
  token.clear();
  me = null;
  showMe();
  show(true).then(() => {
    if (message) current?.handle?.tell?.(message);
  });
}

whenUnauthorized((message) => {
  if (me) signedOut(message || "You were signed out.");
});

document.getElementById("signout").addEventListener("click", async () => {
  // Revoke the session token on the server, not only forget it here.
  await post("/logout").catch(() => null);
  signedOut("You signed out.");
});

window.addEventListener("hashchange", () => show());
// The skip link must not go through the #fragment: that is where the page's route is.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

async function poll() {
  if (polling || document.hidden || !current?.handle?.refresh) return;
  polling = true;
  try {
    await current.handle.refresh();
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    if (!lastOk) say("The server answers again.");
    lastOk = true;
  } catch (e) {
    if (e.status === 0 && lastOk) say("The server does not answer; retrying…", { bad: true });
    if (e.status === 0) lastOk = false;
  } finally {
    polling = false;
  }
}

async function start() {
  let message = "";
  if (token.get()) {
    try {
      me = await get("/whoami");
    } catch (e) {
      token.clear(); // expired, revoked, or the server is down: sign in again
      me = null;
      message = e.words;
    }
  }
  showMe();
  await show(true);
  if (message) current?.handle?.tell?.(message);
  setInterval(poll, POLL_MS);
}

start();
