// What tests/e2e/test_dashboard.py checks on every page of the Dashboard (`audit`):
// every control has a label, every button and link a name, ids are unique and every
// reference to one exists, there is one h1, and text contrast is at least 4.5:1 (3:1 for
// large text) against the background it is drawn on (WCAG AA). Returns the problems.
() => {
  const problems = [];
  const shown = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
  const rgba = (c) => { const m = c.match(/[0-9.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (e) => { for (; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
    if (c[3] > 0) return c; } return [255, 255, 255, 1]; };
  for (const c of document.querySelectorAll("input, select, textarea")) {
    if (!shown(c)) continue;
    const name = [...(c.labels || [])].map((l) => l.textContent.trim()).join(" ") || c.getAttribute("aria-label");
    if (!name) problems.push("no label: " + c.outerHTML.slice(0, 90));
  }
  for (const b of document.querySelectorAll("button, a[href], [role=button]")) {
    if (shown(b) && !(b.getAttribute("aria-label") || b.textContent).trim()) problems.push("no name: " + b.outerHTML.slice(0, 90));
  }
  const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
  for (const id of new Set(ids.filter((id, i) => ids.indexOf(id) !== i))) problems.push("duplicate id " + id);
  for (const e of document.querySelectorAll("[aria-describedby], [aria-labelledby], label[for]")) {
    const refs = (e.getAttribute("aria-describedby") || e.getAttribute("aria-labelledby") || e.htmlFor).split(/\s+/);
    for (const r of refs.filter(Boolean)) if (!document.getElementById(r)) problems.push("missing #" + r);
  }
  const h1s = [...document.querySelectorAll("h1")].filter(shown);
  if (h1s.length !== 1) problems.push(h1s.length + " h1 elements");
  for (const e of document.querySelectorAll("body *")) {
    if (!shown(e) || e.closest("[disabled]")) continue;
    if (![...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(e);
    const fg = rgba(style.color), bg = background(e);
    const mix = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3]));
    const [a, b] = [lum(mix), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) problems.push(`contrast ${ratio.toFixed(2)} < ${need}: ` + e.textContent.trim().slice(0, 40));
  }
  return problems;
}
