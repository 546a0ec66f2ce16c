// An app's env vars: names always, values only when the user asks (GET /apps/NAME with
// show_env=true, which needs `deploy`); set and unset make a new release.

import { appPath, post } from "./api.js";
import { button, field, form, h, table, update, value } from "./dom.js";

export function envPanel(name, access, setShown) {
  const list = h("div", { id: "env" });
  const listError = h("p", { class: "form-error", role: "alert" });
  let shown = false;
  const toggle = access.deploy && button("Show values", async () => {
    shown = !shown;
    await setShown(shown);
    toggle.textContent = shown ? "Hide values" : "Show values";
    toggle.setAttribute("aria-pressed", String(shown));
    return shown ? "Values shown." : "Values hidden.";
  }, { class: "secondary", "aria-pressed": "false", errorSlot: listError });

  const setForm = access.deploy && form({ "aria-labelledby": "env-set-title", class: "action" }, [
    h("h3", { id: "env-set-title" }, "Set a variable"),
    h("div", { class: "row" },
      // The API names a bad variable `env`: its message goes next to the name.
      field("Variable name", "env", { autocomplete: "off", spellcheck: "false", autocapitalize: "none" }),
      field("Value", "value", { autocomplete: "off", spellcheck: "false" })),
    h("button", { type: "submit" }, "Set"),
  ], async (f) => {
    const key = value(f, "env");
    const answer = await post(appPath(name, "/env"), { set: { [key]: f.elements.value.value } });
    f.elements.env.value = f.elements.value.value = "";
    await setShown(shown);
    return `${key} set: release ${answer.release} is rolling out.`;
  }, { progress: "Setting the variable…" });

  const render = (env) => table("Environment", ["Name", "Value", access.deploy ? "Unset" : ""].filter(Boolean),
    Object.keys(env).sort().map((key) => [
      h("code", {}, key),
      env[key] === null ? h("span", { class: "dim" }, "hidden") : h("code", { class: "value" }, env[key]),
      access.deploy && button("Unset", async () => {
        const answer = await post(appPath(name, "/env"), { unset: [key] });
        await setShown(shown);
        return `${key} unset: release ${answer.release} is rolling out.`;
      }, { class: "secondary small", "data-key": "unset:" + key, "aria-label": `Unset ${key}`, errorSlot: listError }),
    ].filter((c) => c !== false)), { empty: "No variables." });

  const element = h("section", { class: "panel", "aria-labelledby": "env-title" },
    h("div", { class: "title-row" }, h("h2", { id: "env-title" }, "Environment"), toggle),
    list, listError, setForm);
  return { element, refresh: (env) => update(list, env, render) };
}
