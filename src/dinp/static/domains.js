// An app's custom domains: listed for anyone who may read the app, with each one's
// certificate (state, expiry, and why it needs attention: a failed or soon-expiring
// certificate is shown in the error colour, with the CA's reason, never only in a
// tooltip); added (with or without HTTPS) and removed by who may change it.

import { appPath, del, post } from "./api.js";
import { button, field, form, h, timeText, update, value } from "./dom.js";

// GET /apps/NAME gives custom_domains (with certificates); without them (the database
// did not answer) the bare names of app.domains.
function entries(app) {
  if (Array.isArray(app.custom_domains)) return app.custom_domains;
  return (app.domains || []).map((domain) => ({ domain, tls: null, certificate: null }));
}

function certificate(d) {
  if (d.tls === null) return h("span", { class: "dim" }, "certificate unknown (the server's database does not answer)");
  const c = d.certificate;
  if (!c) return h("span", { class: "dim" }, "HTTP only");
  const expires = c.not_after ? h("span", { class: "dim" }, ` · expires ${timeText(c.not_after)}`) : null;
  const tone = c.attention ? "bad" : c.state === "issued" || c.state === "renewing" ? "ok" : "busy";
  return [
    h("span", { class: `cert-state state ${tone}` }, "HTTPS " + c.state), expires,
    c.attention ? h("p", { class: "cert-attention" }, c.attention) : null,
  ];
}

export function domainsPanel(name, access, refresh) {
  const list = h("div", { id: "domains" });
  const listError = h("p", { class: "form-error", role: "alert" });
  const render = (domains) => domains.length
    ? h("ul", { class: "domains" }, domains.map((d) => h("li", { class: d.certificate?.attention ? "attention" : null },
      h("span", { class: "domain" }, d.domain), " ",
      certificate(d), " ",
      access.change && button("Remove", async () => {
        await del(appPath(name, "/domains/" + encodeURIComponent(d.domain)));
        await refresh();
        return `${d.domain} removed.`;
      }, { class: "secondary small", "data-key": "remove:" + d.domain, "aria-label": `Remove ${d.domain}`, errorSlot: listError }))))
    : h("p", { class: "dim" }, "No custom domains.");

  const add = access.change && form({ "aria-labelledby": "domain-add-title", class: "action" }, [
    h("h3", { id: "domain-add-title" }, "Add a domain"),
    field("Domain", "domain", { autocomplete: "off", spellcheck: "false", autocapitalize: "none",
      hint: "e.g. www.example.com; point its DNS at the routers." }),
    h("div", { class: "check", "data-field": "tls" },
      h("input", { type: "checkbox", id: "domain-tls", name: "tls" }),
      h("label", { for: "domain-tls" }, "Serve it over HTTPS too (certificate ordered by ACME)"),
      h("p", { class: "field-error" })),
    h("button", { type: "submit" }, "Add domain"),
  ], async (f) => {
    const tls = f.elements.tls.checked;
    const answer = await post(appPath(name, "/domains"), { domain: value(f, "domain"), tls });
    f.elements.domain.value = "";
    f.elements.tls.checked = false;
    await refresh();
    return `${answer.domain} now routes to ${name}` + (tls ? "; its certificate is being ordered." : ".");
  }, { progress: "Adding the domain…" });

  const element = h("section", { class: "panel", "aria-labelledby": "domains-title" },
    h("h2", { id: "domains-title" }, "Domains"), list, listError, add);
  return { element, refresh: (app) => update(list, entries(app), render) };
}
