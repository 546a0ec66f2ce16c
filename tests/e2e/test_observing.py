"""Watching the platform as its operators do: `dinp status`, `dinp app show`, events of
each kind, and every /metrics (server, agents, router) parsed as Prometheus text."""

from __future__ import annotations

import secrets
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import IMAGE, Cluster, running_cluster
from tests.support import DINP, docker_ids, wait_for

APP = "watched"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("observing"),
                         f"o{secrets.token_hex(3)}") as c:
        c.cli.run("app", "create", APP, "--image", IMAGE, "--instances", "2", "--memory",
                  "32m", "--health-path", "/health", "--wait", "--timeout", "60")
        yield c


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, by name and labels; it must parse as Prometheus
    text (the parser raises on anything else)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def messages(c: Cluster) -> list[str]:
    return [e["message"] for e in c.cli.json("events", "--app", APP, "--limit", "1000")]


def test_every_metrics_page_parses_and_counts_what_happened(cluster: Cluster) -> None:
    c = cluster
    server = scrape(f"http://127.0.0.1:{c.metrics_port}/metrics")
    assert server['dinp_server_instances{state="healthy"}'] == 2
    assert server['dinp_server_nodes{status="ready"}'] == 3
    assert server["dinp_server_reconciles_total{outcome=\"done\"}"] > 0
    assert server["dinp_server_reconcile_seconds_count"] > 0
    assert server['dinp_server_actions_total{action="place"}'] == 2
    assert server['dinp_server_heartbeats_total{outcome="ok"}'] > 3
    assert server['dinp_server_rollouts_total{outcome="deployed"}'] == 1
    starts = 0.0
    for node, address in c.addresses.items():
        agent = scrape(f"http://{address}:{c.metrics_port}/metrics")
        assert agent["dinp_agent_server_connected"] == 1, node
        assert agent['dinp_agent_heartbeats_total{outcome="ok"}'] > 0, node
        starts += agent.get('dinp_agent_container_starts_total{outcome="ok"}', 0)
    assert starts == 2
    admin = c.env["DINP_ADMIN_LISTEN"]
    router = scrape(f"http://{admin}/metrics")
    assert router["dinp_router_ready"] == 1


def test_status_shows_nodes_apps_and_routers_in_80_columns(cluster: Cluster) -> None:
    c = cluster
    data = c.cli.json("status")
    assert {n["status"] for n in data["nodes"]} == {"ready"}
    assert all(n["last_seen_s"] is not None and n["last_seen_s"] < 5 for n in data["nodes"])
    (app,) = [a for a in data["apps"] if a["name"] == APP]
    assert app["state"] == "running" and app["status"]["healthy"] == 2
    # Each worker process of the router follows the table and reports on its own.
    routers = wait_for(lambda: c.cli.json("status")["routers"], 10, "the router to be seen")
    assert all(r["rev"] == data["route_table"]["rev"] and not r["behind"] for r in routers)

    narrow = dict(c.cli.env, COLUMNS="80")
    shown = c.cli.json("app", "show", APP)
    url, address = shown["url"], shown["instance_list"][0]["address"]
    for args in (["status"], ["app", "list"], ["app", "show", APP], ["node", "list"],
                 ["app", "releases", APP], ["events", "--app", APP]):
        out = subprocess.run([DINP, *args], env=narrow, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, (args, out.stdout)
        assert "…" not in out.stdout, (args, out.stdout)  # nothing cut
        if args[:2] in (["app", "list"], ["app", "show"]):
            assert url in out.stdout, (args, out.stdout)  # on one line, whole
        if args[:2] == ["app", "show"]:
            assert address in out.stdout and "UP" in out.stdout


def test_app_show_has_uptime_restarts_and_memory(cluster: Cluster) -> None:
    shown = cluster.cli.json("app", "show", APP)
    for inst in shown["instance_list"]:
        assert inst["uptime_s"] is not None and 0 < inst["uptime_s"] < 600
        assert inst["restarts"] == 0
        assert inst["memory_mb"] is not None and 0 <= inst["memory_mb"] <= 32


def test_events_of_each_kind_are_recorded(cluster: Cluster) -> None:
    """User actions, placements, starts, health, deploys, crashes, nodes down and up."""
    c = cluster
    seen = messages(c)
    assert any(m.startswith("created with 2 instance(s)") for m in seen)
    assert sum(m.startswith("placed instance") for m in seen) == 2
    assert sum(m.startswith("instance ") and "started (release 1)" in m for m in seen) == 2
    assert sum(m.endswith(" is healthy") for m in seen) == 2
    assert "release 1 deployed" in seen
    creator = next(e for e in c.cli.json("events", "--app", APP, "--limit", "1000")
                   if e["message"].startswith("created"))
    assert creator["user"] == "admin" and creator["source"] == "127.0.0.1"

    victim = c.cli.json("app", "show", APP)["instance_list"][0]
    (container,) = docker_ids(f"io.dinp.instance={victim['id']}")
    subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    wait_for(lambda: any(f"instance {victim['id']} crashed" in m for m in messages(c)), 20,
             "the crash to be recorded")
    wait_for(lambda: next(i for i in c.cli.json("app", "show", APP)["instance_list"]
                          if i["id"] == victim["id"])["restarts"] == 1, 20,
             "the restart to be counted")

    node = next(n for n in c.addresses if n != victim["node"])
    c.agents[node].kill()
    wait_for(lambda: any(e["message"] == f"node {node} is down"
                         for e in c.cli.json("events", "--limit", "200")), 20,
             "the node to be marked down")
    c.agent(node).start()
    wait_for(lambda: any(e["message"] == f"node {node} is ready"
                         for e in c.cli.json("events", "--limit", "200")), 30,
             "the node to be ready again")
