// The apps the user may see (GET /apps), and the form that creates one (POST /apps).

import { ApiError, get, post } from "./api.js";
import { field, form, h, table, tone, update, value, wholeNumber } from "./dom.js";

export const appsView = {
  title: () => "Apps",
  async mount(main, ctx) {
    const list = h("div", { id: "apps" });
    main.append(
      h("div", { class: "title-row" },
        h("h1", {}, "Apps"),
        !ctx.me.app && h("a", { href: "#/new", class: "button-link" }, "New app")),
      list);
    const refresh = async () => {
      const apps = await get("/apps");
      update(list, apps.map(row), () => appsTable(apps, ctx));
    };
    await refresh().catch((e) => list.replaceChildren(h("p", { role: "alert" }, e.words)));
    return { refresh };
  },
};

// What the list shows of an app: polling re-renders only when one of these changed.
const row = (a) => [a.name, a.team, a.state, a.status.healthy, a.instances, a.release, a.image, a.url];

function appsTable(apps, ctx) {
  return table("Apps", ["App", "State", "Healthy", "Release", "Image", "URL", "Team"],
    apps.map((a) => [
      h("a", { href: `#/apps/${encodeURIComponent(a.name)}`, "data-key": a.name }, a.name),
      h("span", { class: "state " + tone(a.state) }, a.state),
      `${a.status.healthy} of ${a.instances}`,
      String(a.release),
      h("code", {}, a.image),
      h("a", { href: a.url, rel: "noreferrer" }, a.url),
      a.team ?? "-",
    ]),
    { empty: ctx.me.app ? "This token's app does not exist (yet)." : "No apps yet: create one with New app." });
}

export const createView = {
  title: () => "New app",
  async mount(main, ctx) {
    // An admin may put an app in any team; a member in one of theirs. With only one
    // choice the server picks it, so the field is left out.
    let teams = ctx.me.teams;
    if (ctx.me.role === "admin") {
      teams = await get("/teams").then((all) => all.map((t) => t.name)).catch(() => teams);
    }
    const teamField = teams.length > 1 && field("Team", "team", {
      tag: "select",
      options: [{ value: "", label: "Choose a team" },
        ...teams.map((t) => ({ value: t, label: t, selected: teams.length === 1 }))],
    });
    const create = form({ id: "create", "aria-labelledby": "create-title" }, [
      field("Name", "name", { required: true, autocomplete: "off", spellcheck: "false",
        autocapitalize: "none",
        hint: "Lowercase letters, digits and -, at most 63 characters: the app is served at http://NAME.<domain>/." }),
      teamField,
      field("Image", "image", { required: true, autocomplete: "off", spellcheck: "false",
        autocapitalize: "none", hint: "A Docker image reference, e.g. registry.internal:5000/web:1." }),
      h("div", { class: "row" },
        field("Instances", "instances", { value: "1", inputmode: "numeric", autocomplete: "off" }),
        field("Memory per instance", "memory", { value: "256m", autocomplete: "off",
          hint: "16m to 64g, e.g. 256m or 1g." }),
        field("Port", "port", { value: "8080", inputmode: "numeric", autocomplete: "off",
          hint: "The port the app listens on ($PORT)." })),
      field("Health path", "health_path", { autocomplete: "off", spellcheck: "false",
        hint: "An HTTP path that answers 2xx/3xx when the app is ready, e.g. /health. Empty: a TCP connection is enough." }),
      field("Environment", "env", { tag: "textarea", rows: 4, spellcheck: "false",
        hint: "One KEY=value per line." }),
      h("button", { type: "submit" }, "Create app"),
    ], async (f) => {
      const body = {
        name: value(f, "name"), image: value(f, "image"),
        instances: wholeNumber(value(f, "instances")), memory: wholeNumber(value(f, "memory")),
        port: wholeNumber(value(f, "port")), env: parseEnv(f.elements.env.value),
        health_path: value(f, "health_path") || null,
      };
      if (f.elements.team) body.team = f.elements.team.value || null;
      const app = await post("/apps", body);
      ctx.navigate(`#/apps/${encodeURIComponent(app.name)}`);
      return `App ${app.name} created: release 1 is rolling out.`;
    }, { progress: "Creating the app…" });
    main.append(h("h1", { id: "create-title" }, "New app"), create);
    return {};
  },
};

/** KEY=value lines as an object; a line that is not one is refused with the field's
 * name, as the server would. */
export function parseEnv(text) {
  const env = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const at = line.indexOf("=");
    if (at < 1) {
      const reason = `line ${i + 1}, ${JSON.stringify(line)}, is not KEY=value`;
      throw new ApiError(400, { error: "env: " + reason, field: "env", reason });
    }
    env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return env;
}
