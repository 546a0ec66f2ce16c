"""The route table: which `addr:port` backends serve each host, and what the routers need
for HTTPS (certificates, each app's HTTPS policy, pending ACME challenges).

The server computes it from desired and real state and writes it to a RouteStore; routers
read it (from Redis with dinp.router.follower). In Redis it keeps the original DINP layout
(see const.py and docs/architecture.md): `/rs/<host>` lists, `/cname/<domain>` strings, plus
dinp's `/dinp/hosts` hash so a router can answer 503 (app exists, nothing healthy) apart
from 404, and the HTTPS keys `/dinp/certs/<domain>`, `/dinp/https`, `/dinp/acme/<token>`.
Every change is one MULTI/EXEC that also bumps `/dinp/rev` and publishes it.
Routers report the revision they serve under `/dinp/routers/<router>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from dinp import const
from dinp.errors import Unavailable
from dinp.scheduler import Desired, Real

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpsPolicy:
    """What an app asks of HTTPS: plain-HTTP requests redirected (308) to https, and
    `Strict-Transport-Security: max-age=<hsts>` on its TLS responses (0: no header).
    In the table (and Redis) it is compact JSON: `{"redirect":true,"hsts":31536000}`."""

    redirect: bool = False
    hsts: int = 0

    def to_json(self) -> str:
        return json.dumps({"redirect": self.redirect, "hsts": self.hsts},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> HttpsPolicy:
        """Strict on the keys it knows, blind to others (a newer server may add some).
        ValueError when it is not such an object."""
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("an HTTPS policy is a JSON object")
        redirect = value.get("redirect", False)
        hsts = value.get("hsts", 0)
        if not isinstance(redirect, bool):
            raise ValueError(f"redirect = {redirect!r} is not true or false")
        if isinstance(hsts, bool) or not isinstance(hsts, int) or not 0 <= hsts < 1 << 31:
            raise ValueError(f"hsts = {hsts!r} is not a number of seconds")
        return cls(redirect=redirect, hsts=hsts)


@dataclass(frozen=True)
class RouteTable:
    """An immutable snapshot; routers swap whole snapshots, never edit one in place.

    Its repr names certificates by domain only: key material never reaches a log."""

    backends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cnames: Mapping[str, str] = field(default_factory=dict)  # custom domain -> host
    hosts: Mapping[str, str] = field(default_factory=dict)  # host -> app
    rev: int = 0
    # domain (lowercase, exact, or a wildcard such as `*.shop.example.com`) ->
    # (certificate chain PEM, private key PEM); out of repr, so that a table in a log line
    # or a failed assertion never shows a private key
    certs: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # an app's host -> its HTTPS policy (HttpsPolicy as JSON); custom domains follow it
    https: Mapping[str, str] = field(default_factory=dict)
    # ACME HTTP-01: token -> key authorization
    challenges: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, host: str) -> tuple[str | None, tuple[str, ...]]:
        """(app, backends) for a request's Host; app is None when nothing is served there."""
        host = hostname(host)
        target = self.cnames.get(host, host)
        return self.hosts.get(target), self.backends.get(target, ())

    def https_policy(self, host: str) -> str | None:
        """The HTTPS policy (JSON) of the app served at `host`, custom domains included."""
        host = hostname(host)
        return self.https.get(self.cnames.get(host, host))

    def same_routes(self, other: RouteTable) -> bool:
        """The same content, whatever the revisions."""
        return (self.backends, self.cnames, self.hosts, self.certs, self.https,
                self.challenges) == (other.backends, other.cnames, other.hosts, other.certs,
                                     other.https, other.challenges)

    def __len__(self) -> int:
        return len(self.hosts)

    def __repr__(self) -> str:
        return (f"RouteTable(rev={self.rev}, hosts={dict(self.hosts)!r}, "
                f"backends={dict(self.backends)!r}, cnames={dict(self.cnames)!r}, "
                f"certs={sorted(self.certs)!r}, https={dict(self.https)!r}, "
                f"challenges={sorted(self.challenges)!r})")


def hostname(host: str) -> str:
    """A Host header as the table names hosts: no port, lowercase, no trailing dot."""
    if host.startswith("["):  # [IPv6]:port
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.lower().rstrip(".")


def app_host(app: str, domain: str) -> str:
    return f"{app}.{domain}"


def compute(
    desired: Desired,
    real: Real,
    *,
    domain: str,
    custom_domains: Mapping[str, Iterable[str]] | None = None,
) -> RouteTable:
    """Healthy, running containers of placed instances, by the host of their app.

    An instance counts while its row exists, even on a node that went silent: its last
    report is the best knowledge there is, and the planner removes the row only once
    enough replacements are healthy.
    """
    backends: dict[str, list[str]] = {}
    for inst in sorted(desired.instances, key=lambda i: (i.app, i.node, i.id)):
        if inst.app not in desired.apps:
            continue
        c = real.container(inst)
        if c is not None and c.running and c.healthy and c.address:
            backends.setdefault(app_host(inst.app, domain), []).append(c.address)
    hosts = {app_host(name, domain): name for name in desired.apps}
    cnames = {
        d: app_host(app, domain)
        for app, domains in (custom_domains or {}).items()
        if app in desired.apps
        for d in domains
    }
    return RouteTable(
        backends={h: tuple(b) for h, b in backends.items()}, cnames=cnames, hosts=hosts
    )


class RouteStore(Protocol):
    """Where the server publishes the table, and where an in-process router reads it."""

    def publish(self, table: RouteTable) -> int:
        """Make `table` the current one; return its revision."""
        ...

    def current(self) -> RouteTable:
        """The table as published (by a previous server process too)."""
        ...

    def router_revisions(self) -> dict[str, int]:
        """The table revision each live router reports serving (router id -> revision);
        empty when the routers take tables at once (in the same process)."""
        ...


class MemoryRouteStore:
    """The route table inside one process (`dinp up` without Redis)."""

    def __init__(self) -> None:
        self.table = RouteTable()
        self.published = False  # listeners get nothing before the first publish
        self._listeners: list[Callable[[RouteTable], None]] = []

    def publish(self, table: RouteTable) -> int:
        if not self.published or not table.same_routes(self.table):
            self.table = dataclasses.replace(table, rev=self.table.rev + 1)
            self.published = True
            for listener in self._listeners:
                listener(self.table)
        return self.table.rev

    def current(self) -> RouteTable:
        return self.table

    def router_revisions(self) -> dict[str, int]:
        return {}  # the router in this process takes each table as it is published

    def subscribe(self, listener: Callable[[RouteTable], None]) -> None:
        self._listeners.append(listener)
        if self.published:
            listener(self.table)


def _rs_key(host: str) -> str:
    return const.RS_PREFIX + host


def _cname_target(value: str) -> str:
    """A `/cname/` value names the `/rs/<host>` key; older writers stored the bare host."""
    return value[len(const.RS_PREFIX):] if value.startswith(const.RS_PREFIX) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# What read_redis SCANs for, and how each key's value is read.
_SCANNED = (const.RS_PREFIX, const.CNAME_PREFIX, const.CERT_PREFIX, const.ACME_PREFIX)


def read_redis(client: redis.Redis) -> RouteTable:
    """The whole table from Redis: keys by SCAN (never KEYS), values in one MULTI, so
    they are one consistent table."""
    rs_keys, cname_keys, cert_keys, acme_keys = (
        list(client.scan_iter(match=prefix + "*", count=1000)) for prefix in _SCANNED)
    pipe = client.pipeline(transaction=True)
    for key in rs_keys:
        pipe.lrange(key, 0, -1)
    for key in cname_keys:
        pipe.get(key)
    for key in cert_keys:
        pipe.hgetall(key)
    for key in acme_keys:
        pipe.get(key)
    pipe.hgetall(const.HOSTS_KEY)
    pipe.hgetall(const.HTTPS_KEY)
    pipe.get(const.ROUTES_REV_KEY)
    results = iter(pipe.execute())

    def values(keys: list[Any], prefix: str) -> Iterable[tuple[str, Any]]:
        """(name after the prefix, value) of each key; a key deleted between SCAN and
        MULTI reads as empty and is left out."""
        for key, value in zip(keys, results, strict=False):
            if value:
                yield _text(key)[len(prefix):], value

    backends = {host: tuple(_text(a) for a in addrs)
                for host, addrs in values(rs_keys, const.RS_PREFIX)}
    cnames = {domain: _cname_target(_text(target))
              for domain, target in values(cname_keys, const.CNAME_PREFIX)}
    certs: dict[str, tuple[str, str]] = {}
    for domain, fields in values(cert_keys, const.CERT_PREFIX):
        pair = {_text(k): _text(v) for k, v in fields.items()}
        if const.CERT_FIELD in pair and const.KEY_FIELD in pair:
            certs[domain] = (pair[const.CERT_FIELD], pair[const.KEY_FIELD])
    challenges = {token: _text(value) for token, value in values(acme_keys, const.ACME_PREFIX)}
    hosts = {_text(k): _text(v) for k, v in (next(results) or {}).items()}
    https = {_text(k): _text(v) for k, v in (next(results) or {}).items()}
    rev = int(next(results) or 0)
    # Tables written by an original DINP server have no hosts hash: every /rs/ key is an app.
    for host in backends:
        hosts.setdefault(host, host.split(".", 1)[0])
    return RouteTable(backends=backends, cnames=cnames, hosts=hosts, rev=rev, certs=certs,
                      https=https, challenges=challenges)


def redact(url: str) -> str:
    """A URL fit for logs: any password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return str(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))


def redis_error(url: str, exc: Exception) -> Unavailable:
    return Unavailable(
        f"Redis at {redact(url)} is unreachable: {exc}",
        hint="Check that Redis runs and that redis_url (DINP_REDIS_URL) points at it.",
    )


class RedisRouteStore:
    """Writes the table to Redis as the smallest atomic change against what is there.

    The first write after start (and any write that finds the revision key missing, as
    after a Redis restart) compares against a full SCAN of Redis, so stale keys of deleted
    apps are removed and an emptied Redis is rebuilt.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=3, socket_connect_timeout=3
        )
        self._written: RouteTable | None = None

    def publish(self, table: RouteTable) -> int:
        try:
            return self._publish(table)
        except redis.RedisError as exc:
            self._written = None  # whatever Redis holds now, the next write re-reads it
            raise redis_error(self.url, exc) from exc

    def router_revisions(self) -> dict[str, int]:
        """The revision each live router serves, as the routers report it (their keys
        expire when they stop reporting)."""
        try:
            keys = list(self.client.scan_iter(match=const.ROUTER_KEY_PREFIX + "*",
                                              count=1000))
            values = self.client.mget(keys) if keys else []
        except redis.RedisError as exc:
            raise redis_error(self.url, exc) from exc
        out: dict[str, int] = {}
        for key, value in zip(keys, values, strict=True):
            with contextlib.suppress(ValueError):
                if value is not None:  # expired between SCAN and MGET
                    out[_text(key)[len(const.ROUTER_KEY_PREFIX):]] = int(_text(value))
        return out

    def current(self) -> RouteTable:
        try:
            self._written = read_redis(self.client)
        except redis.RedisError as exc:
            raise redis_error(self.url, exc) from exc
        return self._written

    def _publish(self, table: RouteTable) -> int:
        for _ in range(5):
            with contextlib.suppress(redis.WatchError):  # another writer came in between
                return self._publish_once(table)
        raise redis.RedisError("the route table kept changing under us (another writer?)")

    def _publish_once(self, table: RouteTable) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            # WATCH the revision: the change below applies only to the table we compared
            # it with. If Redis holds another revision than we wrote (emptied, restored
            # from an old snapshot, written by someone else), read it all again first.
            pipe.watch(const.ROUTES_REV_KEY)  # type: ignore[no-untyped-call]
            current = int(pipe.get(const.ROUTES_REV_KEY) or 0)
            before = self._written
            full = before is None or current != before.rev
            if before is None or full:
                before = self._written = read_redis(self.client)
            if table.same_routes(before) and before.rev and before.rev == current:
                return before.rev
            pipe.multi()
            if full:  # keys of older dinps, without a `/`, crash the original routers
                pipe.delete(*const.LEGACY_KEYS)
            for host in set(before.backends) - set(table.backends):
                pipe.delete(_rs_key(host))
            for host, addrs in table.backends.items():
                if before.backends.get(host) != addrs:
                    pipe.delete(_rs_key(host))
                    pipe.rpush(_rs_key(host), *addrs)
            for domain in set(before.cnames) - set(table.cnames):
                pipe.delete(const.CNAME_PREFIX + domain)
            for domain, host in table.cnames.items():
                if before.cnames.get(domain) != host:
                    pipe.set(const.CNAME_PREFIX + domain, _rs_key(host))
            gone = set(before.hosts) - set(table.hosts)
            if gone:
                pipe.hdel(const.HOSTS_KEY, *gone)
            for host, app in table.hosts.items():
                if before.hosts.get(host) != app:
                    pipe.hset(const.HOSTS_KEY, host, app)
            _queue_https(pipe, before, table)
            rev = current + 1
            pipe.incr(const.ROUTES_REV_KEY)
            # The notification is in the same MULTI: a connection lost after EXEC cannot
            # leave a change unannounced.
            pipe.publish(const.ROUTES_CHANNEL, str(rev))
            pipe.execute()
        self._written = dataclasses.replace(table, rev=rev)
        log.debug("route table rev %d: %d hosts, %d certificates", rev, len(table.hosts),
                  len(table.certs))
        return rev


def _queue_https(pipe: Any, before: RouteTable, table: RouteTable) -> None:
    """Queue the changes to the HTTPS keys: what is gone is deleted (a removed domain's
    certificate leaves Redis, and every router, with this change), what changed is
    written whole."""
    for domain in set(before.certs) - set(table.certs):
        pipe.delete(const.CERT_PREFIX + domain)
    for domain, (cert, key) in table.certs.items():
        if before.certs.get(domain) != (cert, key):
            pipe.delete(const.CERT_PREFIX + domain)
            pipe.hset(const.CERT_PREFIX + domain,
                      mapping={const.CERT_FIELD: cert, const.KEY_FIELD: key})
    gone = set(before.https) - set(table.https)
    if gone:
        pipe.hdel(const.HTTPS_KEY, *gone)
    for host, policy in table.https.items():
        if before.https.get(host) != policy:
            pipe.hset(const.HTTPS_KEY, host, policy)
    for token in set(before.challenges) - set(table.challenges):
        pipe.delete(const.ACME_PREFIX + token)
    for token, answer in table.challenges.items():
        if before.challenges.get(token) != answer:
            pipe.set(const.ACME_PREFIX + token, answer)
