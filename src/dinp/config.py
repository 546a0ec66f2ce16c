"""Configuration of each role: defaults, then `dinp.toml`, then `DINP_*` env, then flags.

Each role has one frozen dataclass. A key `foo_bar` in the role's section of dinp.toml is
overridden by the environment variable `DINP_FOO_BAR`, which is overridden by a flag.
Keys that mean the same thing for several roles (redis_url, cluster_token, domain) share
one name, so one environment variable sets them for all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dinp.errors import ConfigError

ENV_PREFIX = "DINP_"
DEFAULT_CONFIG_PATHS = (Path("dinp.toml"), Path("/etc/dinp/dinp.toml"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AcmeSettings:
    """The ACME keys: [server] and [up] (which runs a server) both take them."""

    # ACME (RFC 8555): certificates for the custom domains added with --tls, ordered by
    # the leading server. The directory's URL (empty: off), the account's contact e-mail,
    # a CA bundle (PEM file) for the directory's own HTTPS when a private CA serves it,
    # the fraction of a certificate's lifetime after which it is renewed, the wait after
    # a failed order (doubled with each failure in a row, up to acme_retry_max), the
    # longest one order may take, and how often the leader looks for work (seconds).
    acme_directory: str = ""
    acme_email: str = ""
    acme_ca_bundle: str = ""
    acme_renew_after: float = 2 / 3
    acme_retry_base: float = 60.0
    acme_retry_max: float = 21600.0
    acme_timeout: float = 90.0
    acme_interval: float = 10.0

    def acme(self) -> dict[str, Any]:
        """The ACME keys, as ServerConfig names them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(AcmeSettings)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig(AcmeSettings):
    api_listen: str = "127.0.0.1:7070"
    database_url: str = "sqlite:///dinp.db"
    # Empty: keep the route table in this process only (the default of `dinp up`).
    redis_url: str = "redis://127.0.0.1:6379/0"
    domain: str = "localhost"
    # Where users reach the routers; used for app URLs and for `--wait` checks.
    router_url: str = "http://127.0.0.1:8080"
    cluster_token: str = ""
    # Used only when the database has no admin token yet (first start).
    admin_token: str = ""
    node_timeout: float = 6.0
    reconcile_interval: float = 1.0
    heartbeat_interval: float = 2.0
    # The most heartbeats a second the server asks of its agents: past it (more than
    # max x interval nodes) it hands out a longer interval, and node_timeout grows in
    # proportion. 0: no limit.
    max_heartbeats_per_second: float = 500.0
    # Instances leave only once every live router serves a table without them; a router
    # that has not taken it after this long (hung, partitioned) is not waited for.
    router_sync_timeout: float = 5.0
    # An API call (or heartbeat) that needs the database answers 503 after this long
    # when the database does not answer (hung, or the network to it).
    database_timeout: float = 2.0
    # How long a session token made by signing in with a password lasts (30 days).
    session_ttl: float = 2592000.0
    # Prometheus text at /metrics; empty: not served.
    metrics_listen: str = "127.0.0.1:7073"
    # Several servers may run on one database: one leads (a lease in the database) and
    # the others forward to it. How long the lease lasts without being renewed, and how
    # the other servers reach this one (empty: http://<api_listen>, or this machine's
    # name when it listens on every address).
    lease_ttl: float = 5.0
    advertise_url: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
    node_name: str = ""
    advertise: str = "127.0.0.1"
    server: str = "http://127.0.0.1:7070"
    cluster_token: str = ""
    # Memory this node offers to apps, in MB; 0 means the machine's total less 512 MB.
    capacity_mb: int = 0
    heartbeat_interval: float = 2.0
    health_interval: float = 2.0
    # An instance starting (or unhealthy) longer than this is replaced, with backoff.
    start_timeout: float = 60.0
    stop_timeout: float = 10.0
    docker_host: str = ""
    # Prometheus text at /metrics; empty: not served.
    metrics_listen: str = "127.0.0.1:7074"
    # The sandbox of every app container (dinp.sandbox): the one network of the engine
    # where containers cannot reach each other, the uid:gid of images that would run as
    # root, the processes a container may have, the size of each tmpfs, and CPU shares
    # per GiB of the instance's memory (0: Docker's default).
    app_network: str = "dinp"
    app_user: str = "65534:65534"
    pids_limit: int = 512
    tmp_size_mb: int = 64
    cpu_shares_per_gb: int = 1024
    # Where the server reads this node's app logs (GET /logs); empty: <advertise>:7072.
    # Port 0 takes any free port (the heartbeat tells the server which).
    logs_listen: str = ""
    # What the agent keeps across restarts (the last lines of containers it removed);
    # empty: /var/lib/dinp/agent as root, else ~/.local/share/dinp/agent.
    state_dir: str = ""

    def logs_address(self) -> tuple[str, int]:
        """(host, port) the logs listener binds."""
        return split_hostport(self.logs_listen or f"{self.advertise}:{DEFAULT_LOGS_PORT}",
                              default_port=DEFAULT_LOGS_PORT)

    def state_path(self) -> Path:
        """The state directory, with the default for who runs the agent."""
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        if os.geteuid() == 0:
            return Path("/var/lib/dinp/agent")
        return Path("~/.local/share/dinp/agent").expanduser()


DEFAULT_LOGS_PORT = 7072


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouterConfig:
    http_listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:8081"
    redis_url: str = "redis://127.0.0.1:6379/0"
    resync_interval: float = 30.0
    # Worker processes sharing http_listen (SO_REUSEPORT); 0: one per core.
    workers: int = 0
    connect_timeout: float = 3.0
    # Longest wait on an instance that owes an answer (504 after it).
    backend_timeout: float = 60.0
    # An idle keep-alive client, or one that stops sending or reading, is cut after this.
    client_timeout: float = 60.0
    # A request head must arrive whole within this (408 after it).
    header_timeout: float = 10.0
    max_header_size: int = 65536  # bytes of request line and headers (431 beyond)
    max_request_line: int = 8192  # bytes of URL (414 beyond)
    # An instance that failed (connect, reset, timeout) is skipped for this long; 0: never.
    fail_timeout: float = 5.0
    max_idle_per_backend: int = 512  # pooled keep-alive connections per instance
    # Access log: empty for none, "-" for stdout, else a file (appended to).
    access_log: str = ""
    # HTTPS: empty for no TLS listener. It opens once the first route table (with its
    # certificates) is in, so it never answers a handshake without them.
    https_listen: str = ""
    # The https port clients use, for redirects; 0: https_listen's port (443 without one).
    https_port: int = 0
    # The operator's wildcard certificate for *.<domain> (PEM chain, and its key; an
    # empty key file: the key is in the certificate file). Custom domains bring their own
    # in the route table.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Behind a load balancer: every connection on that listener starts with a PROXY
    # protocol header (v1 or v2), whose source address is the client's.
    http_proxy_protocol: bool = False
    https_proxy_protocol: bool = False
    # Peers (CIDRs) whose X-Forwarded-For is appended to and X-Forwarded-Proto kept;
    # from anyone else both are replaced.
    trusted_proxies: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpConfig(AcmeSettings):
    """`dinp up`: every role in one process, state in one directory."""

    state_dir: str = "~/.local/share/dinp"
    http_port: int = 8080
    api_port: int = 7070
    admin_port: int = 8081
    domain: str = "localhost"
    # Empty: the route table stays inside the process. Set it to also publish to Redis.
    redis_url: str = ""
    node_name: str = "local"
    capacity_mb: int = 0
    app_network: str = "dinp"  # as the agent's
    # HTTPS at https://<app>.<domain>:<https_port>/; 0: none. Without tls_cert_file,
    # dinp up's local CA (<state_dir>/tls/ca.pem, see roles/up_tls.py) signs the
    # certificates; with it, the operator's wildcard serves, as with `dinp router`.
    https_port: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # (The ACME keys of the custom domains added with --tls, as in [server].)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """`dinp build`: where images go, what they start from, how much an archive may hold."""

    # Images are tagged and pushed as <registry>/<app>:<version>.
    registry: str = "127.0.0.1:5000"
    push: bool = True
    docker_host: str = ""
    # Where a build unpacks its archive (its own subdirectory, removed afterwards).
    tmp_dir: str = ""
    # An archive that expands past either limit is refused while it is being read.
    max_unpacked_mb: int = 1024
    max_files: int = 20000
    # Base image of each type; empty: <registry>/dinp/<type>:<debian_suite>, the image
    # `dinp build base-images` makes.
    base_war: str = ""
    base_binary: str = ""
    base_python: str = ""
    base_node: str = ""
    base_php: str = ""
    base_static: str = ""
    # What `dinp build base-images` makes its Debian root from.
    debian_suite: str = "bookworm"
    debian_mirror: str = "http://deb.debian.org/debian"
    # `dinp build serve`: where it listens, the token clients send (also what
    # `dinp build --remote` sends), the largest upload, and builds run at once.
    serve_listen: str = "127.0.0.1:7071"
    build_token: str = ""
    # The dinp server's URL: then the service also takes any API token that may deploy
    # the app it builds (a CI token of that app, say), as the server says.
    server: str = ""
    max_upload_mb: int = 1024
    max_builds: int = 2
    # For python apps that bring a requirements.txt instead of vendored libraries.
    pip_index_url: str = ""
    # A CA bundle (PEM) pip trusts during such builds, e.g. behind a TLS-inspecting proxy.
    pip_ca_bundle: str = ""

    def base_image(self, app_type: str) -> str:
        """The image an app of `app_type` is built FROM."""
        configured: str = getattr(self, f"base_{app_type}", "")
        return configured or self.default_base_image(app_type)

    def default_base_image(self, app_type: str) -> str:
        """The name `dinp build base-images` gives the base image of `app_type`."""
        return f"{self.registry}/dinp/{app_type}:{self.debian_suite}"


C = TypeVar("C")

MIN_SECRET_LENGTH = 24
# Values seen in examples and tutorials: anyone could guess them.
KNOWN_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "changethis", "secret", "s3cret", "password",
    "passw0rd", "token", "dinp", "admin", "example", "test", "default", "xxx",
})
MAKE_SECRET = "Make one with `openssl rand -hex 32` (or `python3 -c 'import secrets; " \
    "print(secrets.token_hex(32))'`)"


def require_secret(value: str, *, key: str, section: str, needed: bool = True) -> None:
    """Refuse to start with a missing, example or short token: whoever guesses the
    cluster token can join a node and receive every app's env secrets."""
    where = f"{key} in [{section}] of dinp.toml or DINP_{key.upper()}"
    if not value:
        if needed:
            raise ConfigError(f"no {key} is set", hint=f"Set {where}. {MAKE_SECRET}.")
        return
    if value.strip().lower() in KNOWN_SECRETS or len(set(value)) < 6:
        raise ConfigError(f"{key} is an example value anyone can guess",
                          hint=f"Set {where} to a random value. {MAKE_SECRET}.")
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{key} is too short ({len(value)} characters; at least "
                          f"{MIN_SECRET_LENGTH})", hint=f"{MAKE_SECRET}.")


def find_config_file(explicit: str | None = None) -> Path | None:
    """The config file in use: --config, then $DINP_CONFIG, then ./dinp.toml, /etc/dinp."""
    chosen = explicit or os.environ.get("DINP_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def read_section(path: Path | None, section: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    return value


def _coerce(name: str, kind: Any, raw: Any, source: str) -> Any:
    if typing.get_origin(kind) is tuple:  # a list: TOML array, or comma-separated text
        return _coerce_list(name, kind, raw, source)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int and not isinstance(raw, bool):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)  # 0.5 is no count, and inf none either
            return int(raw)
        if kind is float and not isinstance(raw, bool):
            return float(raw)
        if kind is str:
            return str(raw)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(f"{source}: {name} = {raw!r} is not a valid {kind.__name__}")


def _coerce_list(name: str, kind: Any, raw: Any, source: str) -> tuple[Any, ...]:
    """A `tuple[T, ...]` key: a TOML array, or text with comma-separated items (from the
    environment or a flag); empty items are dropped, so "" is the empty list."""
    args = typing.get_args(kind)
    if len(args) != 2 or args[1] is not Ellipsis:  # pragma: no cover - a typo in a role
        raise TypeError(f"{name}: only tuple[T, ...] keys are supported")
    if isinstance(raw, str):
        items: list[Any] = [item.strip() for item in raw.split(",")]
        items = [item for item in items if item]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise ConfigError(f"{source}: {name} = {raw!r} is not a list")
    item_kind = args[0]
    if item_kind is str and not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{source}: {name} = {raw!r} is not a list of strings")
    return tuple(_coerce(name, item_kind, item, source) for item in items)


def load(
    cls: type[C],
    section: str,
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> C:
    """Build `cls` from defaults, the file's [section], DINP_* env and non-None flags."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    file_values = read_section(path, section)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(file_values) - names
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in names:
        kind = hints[name]
        if isinstance(kind, types.UnionType):  # pragma: no cover - no optional keys yet
            kind = typing.get_args(kind)[0]
        if name in file_values:
            sources[name] = str(path)
            values[name] = _coerce(name, kind, file_values[name], sources[name])
        env_name = ENV_PREFIX + name.upper()
        if env_name in env:
            sources[name] = f"${env_name}"
            values[name] = _coerce(name, kind, env[env_name], sources[name])
        if flags and flags.get(name) is not None:
            sources[name] = f"--{name.replace('_', '-')}"
            values[name] = _coerce(name, kind, flags[name], sources[name])
        if name in values and kind in (int, float):
            _check_number(name, values[name], sources[name])
    return cls(**values)


# Number keys that 0 would break: a loop that never waits, a timeout that cuts every
# call, a limit that refuses everything. Every other number key takes 0 (the comment
# beside it says what 0 means), and no number key takes a negative value.
POSITIVE = frozenset({
    # server (and up's ACME keys)
    "node_timeout", "reconcile_interval", "heartbeat_interval", "router_sync_timeout",
    "database_timeout", "session_ttl", "lease_ttl", "acme_renew_after", "acme_retry_base",
    "acme_retry_max", "acme_timeout", "acme_interval",
    # agent
    "health_interval", "start_timeout", "pids_limit", "tmp_size_mb",
    # router
    "resync_interval", "connect_timeout", "backend_timeout", "client_timeout",
    "header_timeout", "max_header_size", "max_request_line",
    # build
    "max_unpacked_mb", "max_files", "max_upload_mb", "max_builds",
})
# Keys that are fractions (of a certificate's lifetime).
FRACTIONS = frozenset({"acme_renew_after"})


def _check_number(name: str, value: float, source: str) -> None:
    """A number key's value in its range; ConfigError naming where it came from."""
    if not math.isfinite(value):
        raise ConfigError(f"{source}: {name} = {value!r} is not a finite number")
    if name.endswith("_port") and not 0 <= value <= 65535:
        raise ConfigError(f"{source}: {name} = {value!r} is not a port (0-65535)")
    if name in FRACTIONS and not 0 < value < 1:
        raise ConfigError(f"{source}: {name} = {value!r} must be between 0 and 1 "
                          "(a fraction of the certificate's lifetime, such as 0.66)")
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"{source}: {name} = {value!r} must be more than 0")
    if value < 0:
        raise ConfigError(f"{source}: {name} = {value!r} must not be negative")


def split_hostport(value: str, *, default_port: int) -> tuple[str, int]:
    """`host:port`, `:port` or `host` into a (host, port) pair."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError as exc:
        raise ConfigError(f"{value!r} is not host:port") from exc
