"""`dinp server|agent|router|up`: start a role. Thin adapters over `dinp.roles` (and
`dinp.router`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer

from dinp import config as cfg


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a role's main coroutine (lifecycle, and the role itself, are imported only by
    the verb that starts it: every other `dinp` command starts faster)."""
    from dinp import lifecycle

    lifecycle.run(main)


ConfigOpt = typer.Option(None, "--config", "-c", envvar="DINP_CONFIG",
                         help="dinp.toml to read (default ./dinp.toml, /etc/dinp/dinp.toml).")


def server(
    config: Path | None = ConfigOpt,
    listen: str | None = typer.Option(None, "--listen", help="API address, host:port."),
    database_url: str | None = typer.Option(
        None, "--database-url", help="mysql+pymysql://user:pw@host/db or sqlite:///path."),
    redis_url: str | None = typer.Option(None, "--redis-url",
                                         help="Where the route table is written."),
    domain: str | None = typer.Option(None, "--domain", help="Apps are served at "
                                      "<app>.<domain>."),
    router_url: str | None = typer.Option(
        None, "--router-url", help="Where users reach the routers (app URLs, --wait)."),
    node_timeout: float | None = typer.Option(None, "--node-timeout",
                                              help="Seconds of silence before a node is down."),
    migrate_only: bool = typer.Option(False, "--migrate-only",
                                      help="Bring the database's schema to this version "
                                      "and exit (for operators who migrate first)."),
) -> None:
    """Run the API server and the reconcile loop."""
    from dinp.roles import api

    conf = cfg.load(cfg.ServerConfig, "server", path=cfg.find_config_file(_s(config)), flags={
        "api_listen": listen, "database_url": database_url, "redis_url": redis_url,
        "domain": domain, "router_url": router_url, "node_timeout": node_timeout,
    })
    if migrate_only:
        from dinp import migrations
        from dinp.store import Store

        store = Store(conf.database_url)  # connecting migrates
        try:
            print(f"database at revision {migrations.current(store.engine)} (the newest)")
        finally:
            store.close()
        return
    _run(lambda: api.serve(conf))


def agent(
    config: Path | None = ConfigOpt,
    node_name: str | None = typer.Option(None, "--node-name", help="This node's name."),
    advertise: str | None = typer.Option(None, "--advertise",
                                         help="Address where this node's instances are "
                                         "published."),
    server_url: str | None = typer.Option(None, "--server", help="The server's URL."),
    capacity: str | None = typer.Option(None, "--capacity",
                                        help="Memory offered to apps, e.g. 4g."),
    heartbeat_interval: float | None = typer.Option(
        None, "--heartbeat-interval", help="Seconds between reports when nothing changes."),
) -> None:
    """Run a node: start and stop containers as the server assigns them."""
    from dinp import validation
    from dinp.roles import agent as agent_role

    conf = cfg.load(cfg.AgentConfig, "agent", path=cfg.find_config_file(_s(config)), flags={
        "node_name": node_name, "advertise": advertise, "server": server_url,
        "capacity_mb": validation.size_mb(capacity, "capacity") if capacity else None,
        "heartbeat_interval": heartbeat_interval,
    })
    _run(lambda: agent_role.serve(conf))


def router(
    config: Path | None = ConfigOpt,
    listen: str | None = typer.Option(None, "--listen", help="HTTP address, host:port."),
    admin: str | None = typer.Option(None, "--admin",
                                      help="Admin address (/health, /metrics), host:port."),
    redis_url: str | None = typer.Option(None, "--redis-url",
                                         help="Where the route table is read from."),
    workers: int | None = typer.Option(None, "--workers", min=0,
                                       help="Worker processes sharing the port; "
                                       "0: one per core (the default)."),
    access_log: str | None = typer.Option(None, "--access-log",
                                          help="Write an access log to this file "
                                          "('-': stdout)."),
    https_listen: str | None = typer.Option(None, "--https-listen",
                                            help="HTTPS address, host:port (default: none)."),
    tls_cert: str | None = typer.Option(None, "--tls-cert",
                                        help="The wildcard certificate for *.<domain> "
                                        "(PEM chain)."),
    tls_key: str | None = typer.Option(None, "--tls-key",
                                       help="Its private key (PEM; default: in --tls-cert)."),
) -> None:
    """Run an HTTP(S) router that follows the route table in Redis."""
    from dinp import router as router_role

    conf = cfg.load(cfg.RouterConfig, "router", path=cfg.find_config_file(_s(config)), flags={
        "http_listen": listen, "admin_listen": admin, "redis_url": redis_url,
        "workers": workers, "access_log": access_log, "https_listen": https_listen,
        "tls_cert_file": tls_cert, "tls_key_file": tls_key,
    })
    _run(lambda: router_role.serve(conf))


def up(
    config: Path | None = ConfigOpt,
    state_dir: Path | None = typer.Option(None, "--state-dir",
                                          help="Where the SQLite database and tokens live."),
    http_port: int | None = typer.Option(None, "--http-port", help="Router port for apps."),
    api_port: int | None = typer.Option(None, "--api-port", help="API port."),
    admin_port: int | None = typer.Option(None, "--admin-port", help="Router admin port."),
    domain: str | None = typer.Option(None, "--domain",
                                      help="Apps are served at <app>.<domain>."),
    https_port: int | None = typer.Option(None, "--https-port", min=0, max=65535,
                                          help="Router port for apps over HTTPS "
                                          "(default: none)."),
    tls_cert: str | None = typer.Option(None, "--tls-cert",
                                        help="The wildcard certificate for *.<domain> "
                                        "(PEM chain; default: one of dinp up's local CA, "
                                        "<state-dir>/tls/ca.pem)."),
    tls_key: str | None = typer.Option(None, "--tls-key",
                                       help="Its private key (PEM; default: in --tls-cert)."),
    acme_directory: str | None = typer.Option(
        None, "--acme-directory", help="ACME directory URL for the certificates of custom "
        "domains added with --tls (default: none)."),
    acme_email: str | None = typer.Option(None, "--acme-email",
                                          help="The ACME account's contact e-mail."),
    acme_ca_bundle: str | None = typer.Option(
        None, "--acme-ca-bundle", help="CA bundle (PEM) for the ACME directory's own HTTPS."),
) -> None:
    """Run server, agent and router in one process on this machine."""
    from dinp.roles import up as up_role

    conf = cfg.load(cfg.UpConfig, "up", path=cfg.find_config_file(_s(config)), flags={
        "state_dir": str(state_dir) if state_dir else None, "http_port": http_port,
        "api_port": api_port, "admin_port": admin_port, "domain": domain,
        "https_port": https_port, "tls_cert_file": tls_cert, "tls_key_file": tls_key,
        "acme_directory": acme_directory, "acme_email": acme_email,
        "acme_ca_bundle": acme_ca_bundle,
    })
    _run(lambda: up_role.serve(conf))


def _s(path: Path | None) -> str | None:
    return str(path) if path else None


def register(cli: typer.Typer) -> None:
    for fn in (server, agent, router, up):
        cli.command(fn.__name__)(fn)
