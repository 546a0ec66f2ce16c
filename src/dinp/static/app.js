// One app's page: its state in words, instances, releases and events, the actions the
// user may take (GET /apps/NAME/access says which), its env and domains, and its logs.

import { appPath, del, get } from "./api.js";
import { actionsPanel } from "./actions.js";
import { domainsPanel } from "./domains.js";
import { envPanel } from "./env.js";
import { button, h, table, timeEl, tone, update } from "./dom.js";
import { logsPanel } from "./logs.js";

const MAX_EVENTS = 100;

export const appView = {
  title: (name) => name,
  async mount(main, ctx) {
    const name = ctx.arg;
    let app, access;
    try {
      [app, access] = await Promise.all([get(appPath(name)), get(appPath(name, "/access"))]);
    } catch (e) {
      main.append(h("h1", {}, name), h("p", { role: "alert", class: "notice" }, e.words),
        h("p", {}, h("a", { href: "#/apps" }, "Back to the apps")));
      return {};
    }
    const page = new AppPage(name, app, access, ctx);
    main.append(...page.elements);
    await page.refresh(app);
    page.logs.start();
    return { refresh: () => page.refresh(), unmount: () => page.logs.stop() };
  },
};

class AppPage {
  constructor(name, app, access, ctx) {
    this.name = name;
    this.access = access;
    this.showEnv = false;
    this.events = [];
    this.lastEvent = 0;
    this.alert = h("p", { role: "alert", class: "notice" });
    this.overview = h("div", { class: "overview" });
    // The state in words is announced when it changes (deploying → running, failed).
    this.state = h("p", { class: "app-state", "aria-live": "polite" });
    this.instances = h("div");
    this.releases = h("div");
    this.eventList = h("div");
    this.logs = logsPanel(name);
    const refresh = () => this.refresh();
    this.actions = actionsPanel(name, app, access, refresh);
    this.env = envPanel(name, access, (shown) => {
      this.showEnv = shown;
      return this.refresh();
    });
    this.domains = domainsPanel(name, access, refresh);
    const gone = h("p", { class: "form-error", role: "alert" });
    this.elements = [
      h("div", { class: "title-row" },
        h("h1", {}, name),
        h("p", { class: "dim" }, app.team ? `team ${app.team}` : "")),
      this.alert,
      h("section", { "aria-labelledby": "overview-title", class: "panel" },
        h("h2", { id: "overview-title", class: "sr-only" }, "Overview"),
        this.state, this.overview),
      h("div", { class: "app-grid" },
        h("div", { class: "app-main" },
          section("Instances", this.instances),
          this.logs.element,
          section("Releases", this.releases),
          section("Events", this.eventList)),
        h("div", { class: "app-side" },
          this.actions.element,
          this.env.element,
          this.domains.element,
          access.change && h("section", { class: "panel", "aria-labelledby": "delete-title" },
            h("h2", { id: "delete-title" }, "Delete"),
            h("p", {}, "Stops every instance and removes the app's domains. Releases and events are kept."),
            button("Delete this app", async () => {
              if (!window.confirm(`Delete ${name}? Its instances stop and its domains are removed.`)) return "";
              await del(appPath(name));
              ctx.navigate("#/apps");
              return `App ${name} deleted.`;
            }, { class: "danger", errorSlot: gone }),
            gone))),
    ];
  }

  async refresh(given = null) {
    const query = this.showEnv ? "?show_env=true" : "";
    let app, releases, events;
    try {
      [app, releases, events] = await Promise.all([
        given && !this.showEnv ? given : get(appPath(this.name, query)),
        get(appPath(this.name, "/releases")),
        get(`/events?app=${encodeURIComponent(this.name)}&` +
            (this.lastEvent ? `after=${this.lastEvent}&limit=200` : "limit=30")),
      ]);
    } catch (e) {
      if (e.status === 0) throw e; // the shell says the server does not answer
      this.alert.textContent = e.words;
      return;
    }
    this.alert.textContent = "";
    update(this.state, [app.state], () => [
      h("span", { class: "dim" }, "State: "), h("strong", { class: "state " + tone(app.state) }, app.state)]);
    update(this.overview, [app.release, app.image, app.url, app.instances, app.status, app.memory_mb,
      app.port, app.health_path, app.domains, app.https_redirect, app.hsts], () => overview(app));
    update(this.instances, app.instance_list, () => instancesTable(app.instance_list));
    update(this.releases, releases, () => releasesTable(releases));
    if (events.length) {
      this.lastEvent = Math.max(this.lastEvent, ...events.map((e) => e.id));
      this.events = [...events, ...this.events].slice(0, MAX_EVENTS);
    }
    update(this.eventList, this.events.map((e) => e.id), () => eventsList(this.events));
    this.actions.refresh(app, releases);
    this.env.refresh(app.env);
    this.domains.refresh(app);
  }
}

function section(title, body) {
  const id = "sec-" + title.toLowerCase();
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), body);
}

function overview(app) {
  const item = (term, ...desc) => [h("dt", {}, term), h("dd", {}, ...desc)];
  return h("dl", { class: "facts" },
    item("Release", String(app.release)),
    item("Image", h("code", {}, app.image)),
    item("URL", h("a", { href: app.url, rel: "noreferrer" }, app.url)),
    item("Instances", `${app.status.healthy} healthy of ${app.instances} wanted (${app.status.routed} routed)`),
    item("Memory", `${app.memory_mb} MB each`),
    item("Port", String(app.port)),
    item("Health check", app.health_path ? `GET ${app.health_path}` : "a TCP connection"),
    item("HTTPS", `redirect ${app.https_redirect ? "on" : "off"}, HSTS ` +
      (app.hsts ? `${app.hsts} s` : "off")),
    app.domains?.length ? item("Domains", app.domains.join(", ")) : []);
}

function instancesTable(instances) {
  return table("Instances", ["Instance", "Node", "Address", "State", "Health", "Release", "Detail"],
    instances.map((i) => [
      h("code", {}, i.id), i.node + (i.node_status !== "ready" ? ` (${i.node_status})` : ""),
      i.address ?? "-",
      h("span", { class: "state " + tone(i.state) }, i.state),
      h("span", { class: "state " + tone(i.health) }, i.health + (i.routed ? ", routed" : "")),
      String(i.release),
      detail(i),
    ]), { empty: "No instances: the app is scaled to 0." });
}

function detail(i) {
  const parts = [];
  if (i.error) parts.push(h("span", { class: "bad" }, i.error + (i.failures > 1 ? ` (${i.failures} times in a row)` : "")));
  if (i.health_detail) parts.push(h("span", {}, i.health_detail));
  return parts.length ? parts : "-";
}

function releasesTable(releases) {
  return table("Releases", ["Release", "Image", "Change", "By", "When", "Status"],
    releases.map((r) => [
      String(r.version) + (r.current ? " (current)" : ""),
      h("code", {}, r.image),
      r.change,
      r.created_by || "-",
      r.created_at ? timeEl(r.created_at) : "-",
      h("span", { class: "state " + tone(r.status || "-") },
        (r.status || "-") + (r.failure ? `: ${r.failure}` : "")),
    ]));
}

function eventsList(events) {
  if (!events.length) return h("p", { class: "dim" }, "No events yet.");
  return h("ol", { class: "events", tabindex: 0, "aria-label": "Events, newest first" }, events.map((e) => h("li", {},
    timeEl(e.at), " ",
    h("span", { class: "who" }, e.user || "dinp"), " ",
    e.message,
    e.node ? h("span", { class: "dim" }, ` (node ${e.node})`) : null)));
}
