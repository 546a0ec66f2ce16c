// An app's custom domains: listed for anyone who may read the app, added and removed by
// who may change it (routed at once through every router).

import { appPath, del, post } from "./api.js";
import { button, field, form, h, update, value } from "./dom.js";

export function domainsPanel(name, access, refresh) {
  const list = h("div", { id: "domains" });
  const listError = h("p", { class: "form-error", role: "alert" });
  const render = (domains) => domains.length
    ? h("ul", { class: "domains" }, domains.map((d) => h("li", {},
      h("span", {}, d), " ",
      access.change && button("Remove", async () => {
        await del(appPath(name, "/domains/" + encodeURIComponent(d)));
        await refresh();
        return `${d} removed.`;
      }, { class: "secondary small", "data-key": "remove:" + d, "aria-label": `Remove ${d}`, errorSlot: listError }))))
    : h("p", { class: "dim" }, "No custom domains.");

  const add = access.change && form({ "aria-labelledby": "domain-add-title", class: "action" }, [
    h("h3", { id: "domain-add-title" }, "Add a domain"),
    field("Domain", "domain", { autocomplete: "off", spellcheck: "false", autocapitalize: "none",
      hint: "e.g. www.example.com; point its DNS at the routers." }),
    h("button", { type: "submit" }, "Add domain"),
  ], async (f) => {
    const answer = await post(appPath(name, "/domains"), { domain: value(f, "domain") });
    f.elements.domain.value = "";
    await refresh();
    return `${answer.domain} now routes to ${name}.`;
  }, { progress: "Adding the domain…" });

  const element = h("section", { class: "panel", "aria-labelledby": "domains-title" },
    h("h2", { id: "domains-title" }, "Domains"), list, listError, add);
  return { element, refresh: (domains) => update(list, domains || [], render) };
}
