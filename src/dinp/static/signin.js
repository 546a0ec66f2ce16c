// Signing in: a user name and password (POST /login gives a session token), or an API
// token pasted as is. Either way the token is checked with GET /whoami before the page
// keeps it.

import { post } from "./api.js";
import { field, form, h, value } from "./dom.js";

export const signInView = {
  title: () => "Sign in",
  mount(main, ctx) {
    const notice = h("p", { class: "notice", role: "alert" });
    const withPassword = form({ "aria-labelledby": "with-password" }, [
      h("h2", { id: "with-password" }, "With your password"),
      field("User name", "user", { autocomplete: "username", autocapitalize: "none",
        spellcheck: "false" }),
      field("Password", "password", { type: "password", autocomplete: "current-password" }),
      h("button", { type: "submit" }, "Sign in"),
    ], async (f) => {
      notice.textContent = "";
      const answer = await post("/login", { user: value(f, "user"), password: f.elements.password.value },
        { auth: false });
      f.elements.password.value = "";
      await ctx.signedIn(answer.token);
    }, { progress: "Signing in…" });

    const withToken = form({ "aria-labelledby": "with-token" }, [
      h("h2", { id: "with-token" }, "Or with an API token"),
      field("API token", "token", { type: "password", autocomplete: "off",
        hint: "A token from `dinp token create`, or the one an admin gave you." }),
      h("button", { type: "submit" }, "Sign in with the token"),
    ], async (f) => {
      notice.textContent = "";
      const given = value(f, "token");
      if (!given) throw new Error("Paste a token first.");
      f.elements.token.value = "";
      await ctx.signedIn(given);
    }, { progress: "Signing in…" });

    main.append(h("h1", {}, "Sign in to dinp"), notice,
      h("div", { class: "signin" }, withPassword, withToken));
    withPassword.elements.user.focus();
    return {
      // Why the user is here again (signed out, token expired): the server's words.
      tell(message) {
        notice.textContent = message;
      },
    };
  },
};
