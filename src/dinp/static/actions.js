// What a user may do to an app's releases and size: deploy an image, restart, roll back,
// cancel a deploy (needs `deploy`), scale (needs `change`). The forms are built once;
// refresh() only updates the release choices and the cancel button, never a typed value.

import { appPath, post } from "./api.js";
import { button, field, form, h, value, wholeNumber } from "./dom.js";

export function actionsPanel(name, app, access, refresh) {
  if (!access.deploy && !access.change) {
    return { element: null, refresh() {} };
  }
  const done = async (promise, words) => {
    const answer = await promise;
    await refresh();
    return typeof words === "function" ? words(answer) : words;
  };
  const rolling = (a) => `Release ${a.release} created: rolling out.`;

  const deploy = access.deploy && form({ "aria-labelledby": "deploy-title", class: "action" }, [
    h("h3", { id: "deploy-title" }, "Deploy a new image"),
    field("Image", "image", { value: app.image, autocomplete: "off", spellcheck: "false",
      autocapitalize: "none" }),
    h("button", { type: "submit" }, "Deploy"),
  ], (f) => done(post(appPath(name, "/deploy"), { image: value(f, "image") }), rolling),
  { progress: "Deploying…" });

  const scale = access.change && form({ "aria-labelledby": "scale-title", class: "action" }, [
    h("h3", { id: "scale-title" }, "Scale"),
    field("Instances", "instances", { value: String(app.instances), inputmode: "numeric",
      autocomplete: "off" }),
    h("button", { type: "submit" }, "Scale"),
  ], (f) => done(post(appPath(name, "/scale"), { instances: wholeNumber(value(f, "instances")) }),
    (a) => `Scaling ${name} to ${a.instances} instance(s).`), { progress: "Scaling…" });

  const choices = h("select", { id: `rollback-${name}`, name: "release" });
  const rollback = access.deploy && form({ "aria-labelledby": "rollback-title", class: "action" }, [
    h("h3", { id: "rollback-title" }, "Roll back"),
    h("div", { class: "field", "data-field": "release" },
      h("label", { for: choices.id }, "To release"),
      choices,
      h("p", { class: "field-error" })),
    h("button", { type: "submit" }, "Roll back"),
  ], (f) => {
    const chosen = f.elements.release.value;
    return done(post(appPath(name, "/rollback"), chosen ? { release: Number(chosen) } : {}),
      (a) => `Release ${a.release} created from ${chosen ? "release " + chosen : "the previous release"}: rolling out.`);
  }, { progress: "Rolling back…" });

  const restartError = h("p", { class: "form-error", role: "alert" });
  const restart = access.deploy && h("div", { class: "action" },
    h("h3", {}, "Restart"),
    h("p", { class: "hint" }, "Replaces every instance, a few at a time."),
    button("Restart all instances", () => done(post(appPath(name, "/restart")), rolling),
      { errorSlot: restartError, class: "secondary" }),
    restartError);

  const cancelError = h("p", { class: "form-error", role: "alert" });
  const cancel = access.deploy && h("div", { class: "action", hidden: true },
    h("h3", {}, "Deploy in progress"),
    button("Cancel this deploy", () => done(post(appPath(name, "/deploy/cancel")),
      (a) => `Deploy cancelled: release ${a.release} serves.`), { errorSlot: cancelError, class: "danger" }),
    cancelError);

  const element = h("section", { class: "panel", "aria-labelledby": "actions-title" },
    h("h2", { id: "actions-title" }, "Actions"), cancel, deploy, scale, restart, rollback);

  let shownReleases = "";
  return {
    element,
    refresh(current, releases) {
      if (cancel) cancel.hidden = !(current.rollout?.status === "deploying" && current.release > 1);
      // Rebuild the choices only when the releases changed and the user is not in the
      // list: an open select must not change under them.
      const key = JSON.stringify(releases.map((r) => [r.version, r.current]));
      if (!rollback || key === shownReleases || document.activeElement === choices) return;
      shownReleases = key;
      const selected = choices.value;
      choices.replaceChildren(
        h("option", { value: "" }, "the previous release"),
        ...releases.filter((r) => !r.current).map((r) => h("option", {
          value: String(r.version), selected: String(r.version) === selected,
        }, `${r.version}: ${r.image} (${r.change})`)));
    },
  };
}
