// The nodes (GET /nodes: users, not CI tokens) and, for admins, draining one (its
// instances start elsewhere first, then leave it) and making it take instances again.

import { get, post } from "./api.js";
import { button, h, table, tone, update } from "./dom.js";

export const nodesView = {
  title: () => "Nodes",
  async mount(main, ctx) {
    const list = h("div", { id: "nodes" });
    const problem = h("p", { role: "alert", class: "notice" });
    main.append(h("h1", {}, "Nodes"), problem, list);
    const admin = ctx.me.role === "admin" && !ctx.me.app;
    const refresh = async () => {
      let nodes;
      try {
        nodes = await get("/nodes");
      } catch (e) {
        if (e.status === 0) throw e;
        // A CI token gets a 403 here: say so in the server's words.
        problem.textContent = e.words;
        list.replaceChildren();
        delete list.dataset.shown;
        return;
      }
      problem.textContent = "";
      update(list, nodes.map((n) => [n.name, n.address, n.status, n.capacity_mb, n.reserved_mb,
        n.free_mb, n.instances, n.containers, n.last_seen_s === null ? null : Math.round(n.last_seen_s)]),
      () => nodesTable(nodes, admin, refresh, problem));
    };
    await refresh();
    return { refresh };
  },
};

function nodesTable(nodes, admin, refresh, problem) {
  const head = ["Node", "Address", "Status", "Memory reserved", "Free (reported)", "Instances",
    "Containers", "Last report"];
  return table("Nodes", admin ? [...head, "Drain"] : head, nodes.map((n) => {
    const cells = [
      n.name, n.address,
      h("span", { class: "state " + tone(n.status) }, n.status),
      `${n.reserved_mb} of ${n.capacity_mb} MB`,
      n.free_mb === null ? "-" : `${n.free_mb} MB`,
      String(n.instances),
      n.containers === null ? "-" : String(n.containers),
      n.last_seen_s === null ? "never" : `${Math.round(n.last_seen_s)} s ago`,
    ];
    if (admin) {
      const draining = n.status === "draining";
      cells.push(button(draining ? "Stop draining" : "Drain", async () => {
        const answer = await post(`/nodes/${encodeURIComponent(n.name)}/drain`, { undo: draining });
        await refresh();
        return answer.status === "draining"
          ? `Node ${n.name} drains: its instances move to other nodes.`
          : `Node ${n.name} takes instances again.`;
      }, { class: "secondary small", "data-key": "drain:" + n.name, errorSlot: problem,
        "aria-label": `${draining ? "Stop draining" : "Drain"} node ${n.name}` }));
    }
    return cells;
  }), { empty: "No nodes have reported yet: start `dinp agent` on a machine." });
}
