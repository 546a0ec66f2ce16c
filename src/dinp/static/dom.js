// Small DOM helpers shared by the views: building elements, updating a region only when
// its data changed (so polling neither flickers nor steals focus), labelled form fields
// with their error slots, and the page's status line.

import { ApiError } from "./api.js";

/** h("p", {class: "x"}, "text", child…): an element. Attributes starting with "on" are
 * listeners; `false`/null/undefined attributes and children are left out. Text is never
 * parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === false || child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace the content of `region` with build(data), unless `data` is what it shows
 * already. Focus inside the region comes back to the element with the same data-key
 * (a button in a table row, say), so a user tabbing through it is not thrown out. */
export function update(region, data, build) {
  const key = JSON.stringify(data);
  if (region.dataset.shown === key) return false;
  region.dataset.shown = key;
  const focused = region.contains(document.activeElement)
    ? document.activeElement.dataset.key : undefined;
  region.replaceChildren(...[build(data)].flat(Infinity).filter((c) => c != null));
  if (focused !== undefined) {
    const again = [...region.querySelectorAll("[data-key]")].find((e) => e.dataset.key === focused);
    // Gone (the row it was in was removed): the section's heading, not the page's end.
    const heading = region.closest("section")?.querySelector("h2");
    if (!again && heading) heading.tabIndex = -1;
    (again || heading)?.focus();
  }
  return true;
}

/** A table inside a region that scrolls sideways on a narrow window (and can be scrolled
 * with the keyboard: it takes focus). */
export function table(caption, head, rows, { empty = "None." } = {}) {
  if (!rows.length) return h("p", { class: "dim" }, empty);
  return h("div", { class: "scroll", role: "region", "aria-label": caption + " table", tabindex: 0 },
    h("table", {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) =>
        i === 0 ? h("th", { scope: "row" }, c) : h("td", {}, c)))))));
}

let ids = 0;

/** A labelled input (or select/textarea via `tag`) with a hint and a slot for the
 * server's message about it. `name` is the API's field name: a 400 naming it puts the
 * message here. */
export function field(label, name, { tag = "input", hint = "", options = null, ...attrs } = {}) {
  const id = `f-${name}-${++ids}`;
  const hintId = hint ? id + "-hint" : null;
  const errorId = id + "-error";
  const control = h(tag, { id, name, "aria-describedby": [hintId, errorId].filter(Boolean).join(" "),
    ...attrs });
  if (tag === "input" && !attrs.type) control.type = "text";
  if (tag === "textarea" && attrs.value !== undefined) control.value = attrs.value;
  for (const option of options || []) {
    control.append(h("option", { value: option.value, selected: option.selected }, option.label));
  }
  return h("div", { class: "field", "data-field": name },
    h("label", { for: id }, label),
    control,
    hint && h("p", { class: "hint", id: hintId }, hint),
    h("p", { class: "field-error", id: errorId }));
}

/** Clear the messages a form shows (next to fields and for the whole form). */
export function clearErrors(form) {
  for (const slot of form.querySelectorAll(".field-error, .form-error")) slot.textContent = "";
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

/** Show an error: next to the field it names (focused, so the user is where to fix it),
 * else for the whole form. */
export function showError(form, error) {
  const words = error instanceof ApiError ? error : new ApiError(0, { error: String(error.message || error) });
  const slot = words.field && form.querySelector(`[data-field="${CSS.escape(words.field)}"]`);
  if (slot) {
    const control = slot.querySelector("input, select, textarea");
    slot.querySelector(".field-error").textContent = words.fieldMessage;
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
  // The form's own alert always says it too, so it is announced even when focus moves.
  form.querySelector(".form-error").textContent = slot
    ? `${labelOf(slot)}: ${words.fieldMessage}` : words.words;
}

function labelOf(slot) {
  return slot.querySelector("label").textContent;
}

/** A form whose submit runs `action(form)`; while it runs the submit button is inert
 * and `progress` is announced; an error is shown in words. Resolves the action's value. */
export function form(attrs, children, action, { progress = "Working…" } = {}) {
  const el = h("form", { novalidate: true, ...attrs }, children,
    h("p", { class: "form-error", role: "alert" }));
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = el.querySelector("button[type=submit]");
    if (el.getAttribute("aria-busy") === "true") return; // submitted already
    clearErrors(el);
    busy(el, button, true);
    say(progress);
    try {
      const done = await action(el);
      if (done) say(done);
    } catch (e) {
      say("");
      showError(el, e);
    } finally {
      busy(el, button, false);
    }
  });
  return el;
}

// While a request runs its button says so, and stays focusable: a disabled button loses
// focus, which would throw a keyboard user back to the top of the page.
function busy(el, button, on) {
  el.setAttribute("aria-busy", String(on));
  if (button) button.setAttribute("aria-disabled", String(on));
}

/** A button that runs `action`, inert while it runs; an error is shown in `errorSlot`
 * (an element with role=alert) or announced. A second click while it runs does nothing. */
export function button(label, action, { errorSlot = null, ...attrs } = {}) {
  const el = h("button", { type: "button", ...attrs }, label);
  el.addEventListener("click", async () => {
    if (el.getAttribute("aria-busy") === "true") return;
    busy(el, el, true);
    if (errorSlot) errorSlot.textContent = "";
    try {
      const done = await action();
      if (done) say(done);
    } catch (e) {
      const words = e instanceof ApiError ? e.words : String(e.message || e);
      if (errorSlot) errorSlot.textContent = words;
      else say(words, { bad: true });
    } finally {
      busy(el, el, false);
    }
  });
  return el;
}

let saidAt = 0;

/** The page's status line (a polite live region): progress and outcomes; `bad` for
 * what went wrong (shown in the error colour). */
export function say(message, { bad = false } = {}) {
  const line = document.getElementById("status");
  line.textContent = message;
  line.classList.toggle("bad", bad);
  saidAt = Date.now();
}

/** On navigation: an outcome said just now (by the action that navigated: "App web
 * created") stays; an older one was about the page being left. */
export function forgetOldNews() {
  if (Date.now() - saidAt > 1000) document.getElementById("status").textContent = "";
}

export const value = (form, name) => form.elements[name]?.value.trim() ?? "";

/** A whole number as a number; anything else as typed, for the server to refuse in
 * words (the API's message is the one the CLI shows too). */
export function wholeNumber(text) {
  return /^[0-9]{1,9}$/.test(text) ? Number(text) : text;
}

export function timeText(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function timeEl(unixSeconds) {
  return h("time", { datetime: new Date(unixSeconds * 1000).toISOString() }, timeText(unixSeconds));
}

/** The class that colours an app's or an instance's state: ok, busy or bad. */
export function tone(state) {
  if (/^(running|healthy|ready|deployed)\b/.test(state)) return "ok";
  if (/^(deploying|starting|pending|draining|unknown|-)/.test(state)) return "busy";
  return "bad";
}
