"""`dinp up`: server, one agent and a router in one process on one machine.

SQLite under the state directory, the route table handed from server to router in memory
(and also to Redis when redis_url is set), domain `localhost` so `http://<app>.localhost:8080/`
opens in a browser; with https_port, also `https://<app>.localhost:<port>/`, with the
operator's certificate or one of dinp up's local CA (up_tls.py), and custom domains'
certificates by ACME as the server orders them. It writes the user's CLI credentials,
so `dinp app create …` works right after without a login step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import secrets
import threading
from pathlib import Path

from dinp import routes
from dinp.client import save_credentials
from dinp.config import AgentConfig, RouterConfig, ServerConfig, UpConfig
from dinp.container import DockerRuntime
from dinp.errors import ConfigError
from dinp.lifecycle import run_until_stopped
from dinp.roles import api, certificates, up_tls
from dinp.roles.agent import Agent
from dinp.roles.up_tls import HostCertificates, LocalCA
from dinp.router import Router
from dinp.router.tls import load_files
from dinp.sandbox import Policy

log = logging.getLogger(__name__)

# How often the local CA's certificates are checked for renewal (they last LEAF_DAYS).
RENEW_CHECK = 3600.0


class TeeRouteStore:
    """Publish to the in-process table and to Redis: `dinp up` with routers elsewhere."""

    def __init__(self, memory: routes.MemoryRouteStore, redis: routes.RedisRouteStore) -> None:
        self.memory, self.redis = memory, redis

    def publish(self, table: routes.RouteTable) -> int:
        self.memory.publish(table)
        return self.redis.publish(table)

    def current(self) -> routes.RouteTable:
        return self.redis.current()

    def router_revisions(self) -> dict[str, int]:
        return self.redis.router_revisions()


def lock_state(state: Path) -> int:
    """Hold `<state>/up.lock` for as long as this process runs (the descriptor returned;
    the system frees it when the process ends, however it ends). A second `dinp up` on
    the same state directory is refused before it touches anything: it would share the
    SQLite database and could replace the running one's local CA before failing on the
    taken ports."""
    path = state / "up.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"another dinp up (pid {holder}) runs with the state directory "
                          f"{state}", hint=f"Stop it (kill {holder}, or `make stop`), or give "
                          "this one its own --state-dir.") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _secret(path: Path) -> str:
    """A token kept in the state directory, made on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value


def _flag(key: str) -> str:
    """An [up] key as a `dinp up` user gives it, for an error's hint: the router's own
    names (https_listen, [router]) are not dinp up's."""
    return f"--{key.replace('_', '-')} ({key} in [up])"


def _router_config(conf: UpConfig, state: Path) -> tuple[RouterConfig, LocalCA | None]:
    """The in-process router's settings: with https_port, the operator's certificate
    files, else dinp up's local CA (made or reused here, before anything listens; its
    certificates come with each route table). Bad files fail here, so nothing is half
    started."""
    if not conf.https_port:
        if conf.tls_cert_file or conf.tls_key_file:
            raise ConfigError("--tls-cert/--tls-key are given but HTTPS is off",
                              hint="Add --https-port PORT (https_port in [up]).")
        return RouterConfig(), None
    if not 0 < conf.https_port < 65536:
        raise ConfigError(f"https_port = {conf.https_port} is not a port (1-65535)")
    if conf.tls_key_file and not conf.tls_cert_file:
        raise ConfigError("--tls-key is given without --tls-cert",
                          hint="Give both (or neither: dinp up makes its own).")
    https = RouterConfig(https_listen=f"127.0.0.1:{conf.https_port}")
    if conf.tls_cert_file:
        router_conf = dataclasses.replace(https, tls_cert_file=conf.tls_cert_file,
                                          tls_key_file=conf.tls_key_file)
        try:
            load_files(router_conf.tls_cert_file, router_conf.tls_key_file)  # refused now
        except ConfigError as exc:  # its hint names [router]'s keys, not dinp up's flags
            raise ConfigError(exc.message, hint=exc.hint and (
                "--tls-cert is the PEM chain (the certificate first), --tls-key its "
                "unencrypted private key (tls_cert_file, tls_key_file in [up]).")) from exc
        return router_conf, None
    # The CA's certificates come with each route table (HostCertificates), not as files.
    return https, LocalCA.load_or_make(state / "tls", up_tls.check_domain(conf.domain))


async def serve(conf: UpConfig) -> None:
    state = Path(conf.state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    lock = lock_state(state)
    try:
        await _serve(conf, state)
    finally:
        os.close(lock)


async def _serve(conf: UpConfig, state: Path) -> None:
    api_url = f"http://127.0.0.1:{conf.api_port}"
    admin_token = _secret(state / "admin.token")
    server_conf = ServerConfig(
        api_listen=f"127.0.0.1:{conf.api_port}",
        database_url=f"sqlite:///{state / 'dinp.db'}",
        redis_url=conf.redis_url, domain=conf.domain,
        router_url=f"http://127.0.0.1:{conf.http_port}",
        cluster_token=_secret(state / "cluster.token"), admin_token=admin_token,
        **conf.acme(),
    )
    # A bad ACME setting is refused before anything opens, named as dinp up takes it.
    certificates.policy(server_conf, section="up", flags=("acme_ca_bundle",))
    router_conf, ca = await asyncio.to_thread(_router_config, conf, state)
    hosts = HostCertificates(ca) if ca is not None else None
    memory = routes.MemoryRouteStore()
    store: routes.RouteStore = memory
    if conf.redis_url:
        store = TeeRouteStore(memory, routes.RedisRouteStore(conf.redis_url))

    runtime = await asyncio.to_thread(
        lambda: DockerRuntime(node=conf.node_name, advertise="127.0.0.1",
                              policy=Policy(network=conf.app_network))
    )
    router = Router(router_conf)
    if router.proxy.cert_files is not None:
        router.proxy.cert_files.warn_for_router()
    try:
        # The server publishes from a worker thread; the router lives on this loop. The
        # local CA's certificates for app hosts are made there too, off the loop.
        loop = asyncio.get_running_loop()
        pushing = threading.Lock()  # a renewal must never hand the router an older table

        def to_router(table: routes.RouteTable | None = None) -> None:
            with pushing:
                table = memory.current() if table is None else table
                if hosts is not None:
                    table = hosts.add_to(table)
                loop.call_soon_threadsafe(router.set_table, table)

        async def renew_local_certificates(hosts: HostCertificates) -> None:
            """Hand the table again when a local certificate is due: tables come only
            when routes change, and a quiet `dinp up` must not outlive its certificates."""
            while True:
                await asyncio.sleep(RENEW_CHECK)
                if memory.published and hosts.due():
                    await asyncio.to_thread(to_router)

        memory.subscribe(to_router)
        # The router's ports first: one that is taken fails the start before the API
        # listens. The HTTPS listener opens once the first table's certificates are in.
        await router.start_http("127.0.0.1", conf.http_port, setting=_flag("http_port"))
        https = ""
        if conf.https_port:
            await router.start_https("127.0.0.1", conf.https_port,
                                     setting=_flag("https_port"))
            https = f" and https://<app>.{conf.domain}:{conf.https_port}/"
        await router.start_admin("127.0.0.1", conf.admin_port, setting=_flag("admin_port"))
        server, runner = await api.start(server_conf, store)
        try:
            # Its logs listener takes any free port: the server, in this process, learns
            # it from the heartbeat, and two `dinp up` on one machine never compete for one.
            agent = Agent(AgentConfig(node_name=conf.node_name, advertise="127.0.0.1",
                                      server=api_url, cluster_token=server_conf.cluster_token,
                                      capacity_mb=conf.capacity_mb, logs_listen="127.0.0.1:0",
                                      state_dir=str(state / "agent")), runtime)
            path = save_credentials(api_url, admin_token)
            log.info("dinp is up: API %s, apps at http://<app>.%s:%d/%s (CLI configured in "
                     "%s)", api_url, conf.domain, conf.http_port, https, path)
            if ca is not None:
                log.info("HTTPS certificates from dinp up's local CA: trust %s (e.g. curl "
                         "--cacert %s)", ca.path, ca.path)
            renewing = [] if hosts is None else [renew_local_certificates(hosts)]
            await run_until_stopped(server.run(), agent.run(), router.watch(), *renewing)
        finally:
            server.release_waiters()
            await runner.cleanup()
            server.close()
    finally:
        await router.close()
