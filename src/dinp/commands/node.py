"""`dinp node …`: the machines that run apps."""

from __future__ import annotations

from typing import Any

import typer

from dinp.commands.common import JsonOpt, ServerOpt, TokenOpt, client
from dinp.output import console, print_json, table

cli = typer.Typer(no_args_is_help=True)


@cli.command("list")
def list_nodes(as_json: bool = JsonOpt, server: str | None = ServerOpt,
               token: str | None = TokenOpt) -> None:
    """List nodes with their memory and instances."""
    nodes = client(server, token).get("/nodes")
    if as_json:
        print_json(nodes)
        return
    node_table(nodes)


def node_table(nodes: list[dict[str, Any]]) -> None:
    """Nodes with their memory and heartbeat age (`dinp node list`, `dinp status`)."""
    table(None, ["NODE", "ADDRESS", "STATUS", "CAPACITY", "RESERVED", "FREE", "INSTANCES",
                 "SEEN"], [
        (n["name"], n["address"], n["status"], f"{n['capacity_mb']}m", f"{n['reserved_mb']}m",
         f"{n['free_mb']}m" if n["free_mb"] is not None else None, n["instances"],
         f"{n['last_seen_s']}s ago" if n["last_seen_s"] is not None else "never")
        for n in nodes
    ], keep=("NODE", "ADDRESS"), optional=("FREE", "CAPACITY"))


@cli.command("drain")
def drain(
    name: str = typer.Argument(..., help="Node name."),
    undo: bool = typer.Option(False, "--undo", help="Make the node take instances again."),
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Move every instance off a node (for maintenance): new ones start elsewhere and are
    routed before these leave."""
    node = client(server, token).post(f"/nodes/{name}/drain", {"undo": undo})
    console.print(f"node {node['name']} is {node['status']}")


@cli.command("credential")
def credential(
    name: str = typer.Argument(..., help="Node name."),
    server: str | None = ServerOpt,
    token: str | None = TokenOpt,
) -> None:
    """Make a new agent credential for a node (the one before stops working).

    Give it to that node's agent as its cluster_token (DINP_CLUSTER_TOKEN): it may
    report only for this node."""
    reply = client(server, token).post(f"/nodes/{name}/credential", {})
    console.print(f"agent credential of node {name} (the one before no longer works):\n"
                  f"{reply['credential']}")


def status(as_json: bool = JsonOpt, server: str | None = ServerOpt,
           token: str | None = TokenOpt) -> None:
    """The whole platform at a glance: nodes, apps and their state, routers."""
    data = client(server, token).get("/status")
    if as_json:
        print_json(data)
        return
    node_table(data["nodes"])
    table(None, ["APP", "HEALTHY", "RELEASE", "STATE"], [
        (a["name"], f"{a['status']['healthy']}/{a['instances']}", a["release"], a["state"])
        for a in data["apps"]], keep=("APP",))
    rev = data["route_table"]["rev"]
    table(None, ["ROUTER", "SERVES", "SEEN"], [
        (r["id"], f"rev {r['rev']}" + (f" (behind {rev})" if r["behind"] else ""),
         f"{r['seen_s']}s ago") for r in data["routers"]], keep=("ROUTER",))
    if not data["routers"]:
        console.print("no router has reported lately (routers report the table they "
                      "serve to Redis every few seconds)")
