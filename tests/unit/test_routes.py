"""The pure parts of the route table: resolving a Host, computing the table, the in-process
store."""

from __future__ import annotations

import dataclasses

import pytest

from dinp.routes import HttpsPolicy, MemoryRouteStore, RouteTable, app_host, compute
from dinp.scheduler import (
    READY,
    AppSpec,
    ContainerReport,
    Desired,
    NodeReport,
    NodeSpec,
    Placed,
    Real,
)

DOMAIN = "apps.test"

TABLE = RouteTable(
    backends={"web.apps.test": ("10.0.0.1:30001", "10.0.0.2:30002")},
    cnames={"www.example.com": "web.apps.test"},
    hosts={"web.apps.test": "web", "idle.apps.test": "idle"},
)
WEB = ("web", ("10.0.0.1:30001", "10.0.0.2:30002"))


# --- RouteTable.resolve ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "web.apps.test",
        "web.apps.test:8080",  # the port is not part of the host
        "WEB.Apps.TEST",  # hosts are case-insensitive
        "Web.apps.test:80",
        "web.apps.test.",  # a fully qualified name
        "web.apps.test.:8080",
        "www.example.com",  # a custom domain
        "WWW.Example.com:443",
        "www.example.com.",
    ],
)
def test_resolve_finds_the_app_and_its_backends(host: str) -> None:
    assert TABLE.resolve(host) == WEB


def test_resolve_app_without_healthy_backends() -> None:
    assert TABLE.resolve("idle.apps.test") == ("idle", ())


@pytest.mark.parametrize(
    "host", ["nope.apps.test", "apps.test", "", "web.apps.test.evil.com", "[::1]:8080", "::1"]
)
def test_resolve_unknown_host(host: str) -> None:
    assert TABLE.resolve(host) == (None, ())


def test_resolve_on_an_empty_table() -> None:
    assert RouteTable().resolve("web.apps.test") == (None, ())


# --- compute ---------------------------------------------------------------------------


def row(id_: str, app: str, node: str) -> Placed:
    return Placed(id_, app, 1, node, 256)


def seen(inst: Placed, *, address: str | None, running: bool = True, healthy: bool = True) -> (
    ContainerReport
):
    return ContainerReport(inst.id, inst.app, inst.release, running, healthy, address)


def world() -> tuple[Desired, Real]:
    rows = {
        "ok1": row("ok1", "web", "n1"),
        "ok2": row("ok2", "web", "n2"),
        "sick": row("sick", "web", "n1"),
        "stopped": row("stopped", "web", "n2"),
        "noaddr": row("noaddr", "web", "n2"),
        "unseen": row("unseen", "web", "n1"),
        "stale": row("stale", "web", "n3"),
        "orphan": row("orphan", "gone", "n1"),
        "api1": row("api1", "api2", "n1"),
    }
    nodes = {n: NodeSpec(n, READY, 4096) for n in ("n1", "n2", "n3")}
    apps = {
        "web": AppSpec("web", 6, 256, 1),
        "idle": AppSpec("idle", 1, 256, 1),
        "api2": AppSpec("api2", 1, 256, 1),
    }
    reports = {
        "n1": NodeReport("n1", 100.0, 4096, (
            seen(rows["ok1"], address="10.0.0.1:30001"),
            seen(rows["sick"], address="10.0.0.1:30002", healthy=False),
            seen(rows["orphan"], address="10.0.0.1:30003"),
            seen(rows["api1"], address="10.0.0.1:30004"),
            # a container with no row is not routed, whatever it reports
            ContainerReport("stray", "web", 1, True, True, "10.0.0.1:30009"),
        )),
        "n2": NodeReport("n2", 100.0, 4096, (
            seen(rows["ok2"], address="10.0.0.2:30001"),
            seen(rows["stopped"], address="10.0.0.2:30002", running=False),
            seen(rows["noaddr"], address=None),
        )),
        # n3's last report is old; its row still exists, so it still counts.
        "n3": NodeReport("n3", 1.0, 4096, (seen(rows["stale"], address="10.0.0.3:30001"),)),
    }
    return Desired(apps, tuple(rows.values()), nodes), Real(reports, complete=True)


def test_compute_routes_healthy_running_instances_only() -> None:
    desired, real = world()

    table = compute(desired, real, domain=DOMAIN)

    assert table.backends == {
        "web.apps.test": ("10.0.0.1:30001", "10.0.0.2:30001", "10.0.0.3:30001"),
        "api2.apps.test": ("10.0.0.1:30004",),
    }


def test_compute_lists_every_app_as_a_host_even_without_backends() -> None:
    desired, real = world()

    table = compute(desired, real, domain=DOMAIN)

    assert table.hosts == {
        "web.apps.test": "web", "idle.apps.test": "idle", "api2.apps.test": "api2",
    }
    assert table.resolve("idle.apps.test") == ("idle", ())
    assert table.resolve("gone.apps.test") == (None, ())  # deleted app: not served at all


def test_compute_does_not_depend_on_row_order() -> None:
    desired, real = world()
    reversed_rows = Desired(desired.apps, desired.instances[::-1], desired.nodes)

    assert compute(reversed_rows, real, domain=DOMAIN) == compute(desired, real, domain=DOMAIN)


def test_compute_custom_domains_of_existing_apps_only() -> None:
    desired, real = world()

    table = compute(
        desired, real, domain=DOMAIN,
        custom_domains={"web": ["www.example.com", "example.com"], "gone": ["old.example.com"]},
    )

    assert table.cnames == {"www.example.com": "web.apps.test", "example.com": "web.apps.test"}
    assert table.resolve("example.com")[0] == "web"
    assert table.resolve("old.example.com") == (None, ())


def test_compute_with_no_reports_serves_hosts_without_backends() -> None:
    desired, _ = world()

    table = compute(desired, Real({}, complete=False), domain=DOMAIN)

    assert table.backends == {}
    assert set(table.hosts.values()) == {"web", "idle", "api2"}


def test_app_host() -> None:
    assert app_host("web", "apps.example.com") == "web.apps.example.com"


# --- MemoryRouteStore ------------------------------------------------------------------


def test_publish_bumps_the_revision_only_on_change() -> None:
    store = MemoryRouteStore()
    seen_tables: list[RouteTable] = []
    store.subscribe(seen_tables.append)

    assert seen_tables == []  # nothing published yet: no table, not an empty one
    assert store.publish(TABLE) == 1
    assert store.publish(TABLE) == 1
    # Same routes under another revision number: still no change.
    assert store.publish(RouteTable(TABLE.backends, TABLE.cnames, TABLE.hosts, rev=42)) == 1
    changed = RouteTable({"web.apps.test": ("10.0.0.1:30001",)}, TABLE.cnames, TABLE.hosts)
    assert store.publish(changed) == 2

    assert [t.rev for t in seen_tables] == [1, 2]
    assert seen_tables[0].same_routes(TABLE)
    assert seen_tables[1].same_routes(changed)
    assert store.table is seen_tables[-1]
    late: list[RouteTable] = []
    store.subscribe(late.append)
    assert late == [store.table]  # subscribing after a publish hands over the current table


def test_the_first_publish_counts_even_when_empty() -> None:
    """A cluster without apps publishes an empty table: that is a table (404 for every
    host), unlike no table at all (503 until one arrives)."""
    store = MemoryRouteStore()
    calls: list[RouteTable] = []
    store.subscribe(calls.append)

    assert store.publish(RouteTable()) == 1
    assert store.publish(RouteTable()) == 1
    assert [t.rev for t in calls] == [1]


@pytest.mark.parametrize(
    "change",
    [
        RouteTable(TABLE.backends, {}, TABLE.hosts),  # a custom domain removed
        RouteTable(TABLE.backends, TABLE.cnames, {"web.apps.test": "web"}),  # an app deleted
        RouteTable({}, TABLE.cnames, TABLE.hosts),  # no backend left
    ],
)
def test_every_kind_of_change_notifies(change: RouteTable) -> None:
    store = MemoryRouteStore()
    store.publish(TABLE)
    calls: list[RouteTable] = []
    store.subscribe(calls.append)

    assert store.publish(change) == 2
    assert [t.rev for t in calls] == [1, 2]


def test_every_subscriber_is_notified() -> None:
    store = MemoryRouteStore()
    first: list[int] = []
    second: list[int] = []
    store.subscribe(lambda t: first.append(t.rev))
    store.subscribe(lambda t: second.append(t.rev))

    store.publish(TABLE)

    assert first == [1]
    assert second == [1]


# --- HTTPS: policies, certificates in the table ------------------------------------------

TLS_TABLE = RouteTable(
    backends=TABLE.backends, cnames=TABLE.cnames, hosts=TABLE.hosts,
    certs={"www.example.com": ("-----BEGIN CERTIFICATE-----\nMIIB", "PRIVATE-KEY-BYTES")},
    https={"web.apps.test": '{"redirect":true,"hsts":31536000}'},
    challenges={"tok": "tok.thumb"},
)


def test_https_policy_follows_custom_domains() -> None:
    assert TLS_TABLE.https_policy("web.apps.test") == '{"redirect":true,"hsts":31536000}'
    assert TLS_TABLE.https_policy("WWW.example.com:443") == TLS_TABLE.https["web.apps.test"]
    assert TLS_TABLE.https_policy("idle.apps.test") is None


@pytest.mark.parametrize(("text", "policy"), [
    ('{"redirect":true,"hsts":31536000}', HttpsPolicy(redirect=True, hsts=31536000)),
    ("{}", HttpsPolicy()),
    ('{"hsts":60,"preload":true}', HttpsPolicy(hsts=60)),  # unknown keys: a newer server
])
def test_https_policy_from_json(text: str, policy: HttpsPolicy) -> None:
    assert HttpsPolicy.from_json(text) == policy


@pytest.mark.parametrize("text", ['{"redirect":"yes"}', '{"hsts":-1}', '{"hsts":true}',
                                  '{"hsts":1.5}', "[]", "null", "{", ""])
def test_https_policy_refuses_what_it_cannot_trust(text: str) -> None:
    with pytest.raises(ValueError):
        HttpsPolicy.from_json(text)


def test_https_policy_round_trips_as_compact_json() -> None:
    policy = HttpsPolicy(redirect=True, hsts=31536000)
    assert policy.to_json() == '{"redirect":true,"hsts":31536000}'
    assert HttpsPolicy.from_json(policy.to_json()) == policy


def test_the_repr_of_a_table_never_shows_key_material() -> None:
    text = repr(TLS_TABLE)
    assert "www.example.com" in text
    assert "PRIVATE-KEY-BYTES" not in text and "BEGIN CERTIFICATE" not in text


@pytest.mark.parametrize("change", [
    dataclasses.replace(TLS_TABLE, certs={}),  # a certificate removed
    dataclasses.replace(TLS_TABLE, certs={"www.example.com": ("NEW", "NEWKEY")}),  # renewed
    dataclasses.replace(TLS_TABLE, https={}),  # a policy dropped
    dataclasses.replace(TLS_TABLE, challenges={"tok": "tok.other"}),
])
def test_https_changes_notify(change: RouteTable) -> None:
    store = MemoryRouteStore()
    store.publish(TLS_TABLE)
    calls: list[RouteTable] = []
    store.subscribe(calls.append)

    assert store.publish(change) == 2
    assert [t.rev for t in calls] == [1, 2]
    assert calls[-1].same_routes(change) and not change.same_routes(TLS_TABLE)
    assert dict(calls[-1].certs) == dict(change.certs)
