"""The database of desired state: every read and write the server makes.

Blocking (SQLAlchemy/PyMySQL): the server calls it from one worker thread, so writes are
serialised and the event loop never waits on the database. Every failure to reach the
database becomes `Unavailable` naming where it is; a write either happens whole or not
at all (one transaction each).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy import case, create_engine, delete, insert, or_, text, tuple_, update
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, col, select

from dinp import acme_orders, migrations, quotas, rollouts
from dinp import releases as rel
from dinp.access import DEFAULT_TEAM, SYSTEM, Actor
from dinp.errors import Conflict, Contended, DinpError, NotFound, Unavailable
from dinp.models import (
    AcmeAccountRow,
    AppRow,
    CertificateRow,
    ClusterRow,
    DomainRow,
    EventRow,
    InstanceRow,
    LeaseRow,
    NodeCredentialRow,
    NodeRow,
    ReleaseRow,
    TeamRow,
)
from dinp.releases import ReleaseSpec
from dinp.scheduler import (
    DOWN,
    READY,
    Action,
    AppSpec,
    Desired,
    NodeSpec,
    Place,
    Placed,
    Remove,
    SetNodeStatus,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=SQLModel)


def new_id() -> str:
    """A short random instance id: 10 hex digits, unique enough per cluster."""
    return secrets.token_hex(5)


class NotLeader(DinpError):
    """This server's lease was taken over: it must change nothing (another leads)."""

    exit_code = 6
    http_status = 503


@dataclass(frozen=True)
class Lease:
    """Who leads, how to reach it, its epoch, and for how many seconds more."""

    holder: str
    url: str
    epoch: int
    remaining: float


LEADER = "leader"


@dataclass(frozen=True)
class TlsPair:
    """A certificate chain and its key, as the routers get them (never in a repr)."""

    chain_pem: str = field(repr=False)
    key_pem: str = field(repr=False)


def cert_rules(row: CertificateRow) -> acme_orders.Cert:
    return acme_orders.Cert(row.state, row.not_before, row.not_after, row.attempts,
                            row.next_attempt_at)


@dataclass(frozen=True)
class Snapshot:
    """Desired state as the planner sees it, plus the app rows the API and agents need,
    and the release every placed instance runs (by app and version)."""

    desired: Desired
    apps: dict[str, AppRow]
    nodes: dict[str, NodeRow]
    releases: dict[tuple[str, int], ReleaseSpec] = field(default_factory=dict)
    # Each app's current release and any newer one (a failed deploy), newest first.
    recent: dict[str, list[ReleaseRow]] = field(default_factory=dict)
    domains: dict[str, list[str]] = field(default_factory=dict)  # app -> custom domains
    # The generation of each node's agent credential (tokens.node_credential).
    node_generations: dict[str, int] = field(default_factory=dict)
    # The valid ACME certificates of the custom domains, by domain.
    certs: dict[str, TlsPair] = field(default_factory=dict)
    # by_app as grouped before for the same instance rows (snapshots share it).
    grouped: dict[str, list[Placed]] | None = None
    # The cluster's counters the rows are at (-1: not counted, no cluster row yet).
    instances_rev: int = -1
    desired_rev: int = -1

    @functools.cached_property
    def by_app(self) -> dict[str, list[Placed]]:
        """The instance rows by app, grouped once per snapshot (the API's app views and
        the rollout judge look them up by app)."""
        return self.grouped if self.grouped is not None else by_app(self.desired.instances)


def newest(current: Snapshot, offered: Snapshot) -> Snapshot:
    """What to answer from when `offered` comes after `current`: each part (the instance
    rows, the rest of desired state) from whichever of the two is further along by its
    counter, so that a snapshot read before a write, and offered after it, does not hide
    it. Snapshots without counters are taken as offered."""
    if min(current.instances_rev, current.desired_rev) < 0 or \
            min(offered.instances_rev, offered.desired_rev) < 0:
        return offered
    if offered.instances_rev >= current.instances_rev and \
            offered.desired_rev >= current.desired_rev:
        return offered
    if offered.instances_rev <= current.instances_rev and \
            offered.desired_rev <= current.desired_rev:
        return current
    rows, rest = (offered, current) if offered.instances_rev > current.instances_rev \
        else (current, offered)
    return replace(rest, desired=replace(rest.desired, instances=rows.desired.instances),
                   releases=rows.releases, grouped=rows.by_app,
                   instances_rev=rows.instances_rev)


def by_app(instances: Sequence[Placed]) -> dict[str, list[Placed]]:
    """`instances` by app (nobody changes the lists)."""
    out: dict[str, list[Placed]] = {}
    for inst in instances:
        out.setdefault(inst.app, []).append(inst)
    return out


# The tables as Core sees them: bulk inserts into them are one statement per chunk,
# every value written as given (the ORM's bulk path would group rows and drop NULLs).
INSTANCES: sqlalchemy.Table = InstanceRow.__table__  # type: ignore[attr-defined]
APPS: sqlalchemy.Table = AppRow.__table__  # type: ignore[attr-defined]
NODES: sqlalchemy.Table = NodeRow.__table__  # type: ignore[attr-defined]
RELEASES: sqlalchemy.Table = ReleaseRow.__table__  # type: ignore[attr-defined]
EVENTS: sqlalchemy.Table = EventRow.__table__  # type: ignore[attr-defined]

# MySQL's error for a transaction it rolled back to end a deadlock (ER_LOCK_DEADLOCK).
MYSQL_DEADLOCK = 1213

# Rows held longer than this are read again even if their counter did not move.
RELOAD_SECONDS = 60.0
# How held instance rows are checked after RELOAD_SECONDS: their count, the newest row's
# time, the memory they reserve (see Store._read_instances).
INSTANCE_SUMMARY = sqlalchemy.select(
    sqlalchemy.func.count(), sqlalchemy.func.max(col(InstanceRow.created_at)),
    sqlalchemy.func.sum(col(InstanceRow.memory_mb)))


def _holds(held: _DesiredRows | _Instances, rev: int | None) -> bool:
    """Whether rows held at a counter's value still stand for `rev`: the counter did
    not move and they are not older than RELOAD_SECONDS (a writer that does not count,
    such as a server of an older dinp during an upgrade, is caught up with then)."""
    return (rev is not None and held.rev == rev
            and time.monotonic() - held.read_at < RELOAD_SECONDS)


@dataclass
class _DesiredRows:
    """The rows of desired state besides instances, as a Store holds them between
    snapshots, at `rev` of the cluster's desired_rev."""

    rev: int
    apps: dict[str, AppRow]
    nodes: dict[str, NodeRow]
    releases: dict[tuple[str, int], ReleaseRow]  # current and newer, by (app, version)
    recent: dict[str, list[ReleaseRow]]
    domains: dict[str, list[str]]
    generations: dict[str, int]
    app_specs: dict[str, AppSpec]
    node_specs: dict[str, NodeSpec]
    read_at: float = field(default_factory=time.monotonic)


# The tables _DesiredRows holds: a transaction that writes any of them moves desired_rev.
DESIRED_TABLES = frozenset({"apps", "releases", "nodes", "domains", "certificates",
                            "node_credentials"})
# The tables whose rows get a new updated_at on every write (their _RowCache probe).
STAMPED_TABLES = frozenset({"apps", "nodes"})


@dataclass
class _Instances:
    """The instance rows a Store holds between snapshots, at `rev` of the cluster's
    instances_rev."""

    rev: int
    by_id: dict[str, Placed]
    read_at: float = field(default_factory=time.monotonic)  # when read whole

    @functools.cached_property
    def placed(self) -> tuple[Placed, ...]:
        return tuple(self.by_id.values())

    @functools.cached_property
    def apps(self) -> frozenset[str]:
        """The apps these rows place instances of."""
        return frozenset(p.app for p in self.by_id.values())

    @functools.cached_property
    def summary(self) -> tuple[int, float | None, int | None]:
        """What INSTANCE_SUMMARY gives for these rows."""
        if not self.by_id:
            return 0, None, None
        rows = self.by_id.values()
        return (len(rows), max(p.created for p in rows), sum(p.memory_mb for p in rows))


class _RowCache(Generic[M]):
    """The rows of a table a snapshot reads, as model objects made only for rows that
    changed since the last read. Whether a row changed is told by its `probe` columns
    (its key and what every change of the row changes: `updated_at`, which the session
    hooks set on every write of an app or a node, or a release's status), so a read
    first selects only those, then the whole rows of what changed: a 5,000-app snapshot
    reads 5,000 short rows, not 5,000 long ones made into ORM objects. The objects are
    shared by the snapshots that read the same rows, and nobody changes them."""

    def __init__(self, model: type[M], key: tuple[str, ...], probe: tuple[str, ...]) -> None:
        self.model = model
        self.table: sqlalchemy.Table = model.__table__  # type: ignore[attr-defined]
        self.names = [c.name for c in self.table.columns]
        self.key = key
        self.key_index = [self.names.index(k) for k in key]  # in a whole row
        self.probe_columns = [self.table.c[c] for c in (*key, *probe)]
        self.held: dict[Any, tuple[tuple[Any, ...], M]] = {}

    def _key(self, values: Sequence[Any], index: Sequence[int]) -> Any:
        """The key of a row's `values`, its columns at `index`."""
        return values[index[0]] if len(index) == 1 else tuple(values[i] for i in index)

    def read(self, s: Session, where: Callable[[Any], Any] | None = None, *,
             keep: bool = False) -> dict[Any, M]:
        """The rows `where(select)` selects (every row without it), by key, in the
        order selected. With `keep`, rows held from other reads stay held (releases are
        read by two)."""
        probe = sqlalchemy.select(*self.probe_columns)
        held = self.held
        seen: list[tuple[Any, tuple[Any, ...]]] = []
        changed: list[Any] = []
        probe_key = range(len(self.key))  # a probe's key comes first
        for row in s.execute(where(probe) if where is not None else probe):
            values = tuple(row)
            key = self._key(values, probe_key)
            seen.append((key, values))
            was = held.get(key)
            if was is None or was[0] != values:
                changed.append(key)
        made: dict[Any, M] = {}
        key_columns = [self.table.c[k] for k in self.key]
        for chunk in _chunks(changed):
            match = (key_columns[0].in_(chunk) if len(key_columns) == 1
                     else tuple_(*key_columns).in_(chunk))
            for row in s.execute(sqlalchemy.select(self.table).where(match)):
                values = tuple(row)
                made[self._key(values, self.key_index)] = \
                    self.model(**dict(zip(self.names, values, strict=True)))
        fresh: dict[Any, tuple[tuple[Any, ...], M]] = dict(held) if keep else {}
        out: dict[Any, M] = {}
        for key, values in seen:
            if key in made:
                obj = made[key]
            elif key in held and held[key][0] == values:
                obj = held[key][1]
            else:
                continue  # deleted between the two reads (outside one transaction)
            fresh[key] = (values, obj)
            out[key] = obj
        self.held = fresh
        return out


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.safe_url = make_url(url).render_as_string(hide_password=True)
        self.engine = self._connect(url)
        # The certificates the snapshots hand to the routers, with the row's updated_at
        # they were read at: a snapshot (every second) reads their PEM only when changed.
        self._tls: dict[str, tuple[float, TlsPair]] = {}
        # The instance rows as last read or written here, at the cluster's instances_rev.
        self._instances: _Instances | None = None
        self._desired: _DesiredRows | None = None
        # The snapshot's other rows, made into objects only when their values changed.
        self._apps = _RowCache(AppRow, ("name",), ("updated_at",))
        self._nodes = _RowCache(NodeRow, ("name",), ("updated_at",))
        # (The id too: an app deleted and made again numbers its releases from 1 again.)
        self._releases = _RowCache(ReleaseRow, ("app", "version"),
                                   ("id", "status", "failure"))
        self._specs: dict[tuple[str, int], tuple[ReleaseRow, ReleaseSpec]] = {}
        # Guards what is held above: the server calls a Store from several threads (the
        # API's writes beside the reconcile's snapshots), and a snapshot and a write's
        # patch of the held instance rows must not interleave.
        self._held_lock = threading.Lock()
        # The last snapshot's instance rows, other rows, and the releases made of them.
        self._last: tuple[tuple[Placed, ...], _DesiredRows,
                          dict[tuple[str, int], ReleaseSpec]] | None = None
        # The certificates the last snapshot served (a new dict each time, never changed).
        self._last_certs: dict[str, TlsPair] = {}
        # This Store's committed writes of desired rows not yet in the held ones, by the
        # desired_rev each moved it to: applied in order (writes commit in the order of
        # the counter, their threads may get here in another).
        self._pending: dict[int, Callable[[_DesiredRows], _DesiredRows]] = {}
        self._pending_lock = threading.Lock()
        self._grouped: tuple[tuple[Placed, ...], dict[str, list[Placed]]] | None = None

    # -- connection -----------------------------------------------------------------

    def _connect(self, url: str) -> Engine:
        parsed = make_url(url)
        kwargs: dict[str, object] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_recycle"] = 600
            kwargs["connect_args"] = {"connect_timeout": 5, "read_timeout": 10,
                                      "write_timeout": 10}
        engine = create_engine(url, **kwargs)
        with self.errors():
            if parsed.get_backend_name() == "mysql" and parsed.database:
                self._create_database(parsed.set(database=""), parsed.database, kwargs)
            migrations.upgrade(engine)
        return engine

    @staticmethod
    def _create_database(server_url: object, name: str, kwargs: dict[str, object]) -> None:
        server = create_engine(server_url, **kwargs)  # type: ignore[call-overload]
        try:
            with server.connect() as conn:
                conn.execute(text(
                    f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
                ))
        finally:
            server.dispose()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn driver failures into one message naming the database and what to do."""
        try:
            yield
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            orig = getattr(exc, "orig", None)
            reason = str(orig) if orig else str(exc)
            if orig is not None and getattr(orig, "args", ())[:1] == (MYSQL_DEADLOCK,):
                raise Contended(
                    f"database {self.safe_url} ended this change in a deadlock with "
                    "another one; nothing was changed", hint="Try again.") from exc
            raise Unavailable(
                f"database {self.safe_url} is unreachable: {reason}",
                hint="Check that the database runs and database_url (DINP_DATABASE_URL) "
                "points at it.",
            ) from exc

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self.errors(), Session(self.engine, expire_on_commit=False) as session:
            _count_writes(session)
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- leadership -------------------------------------------------------------------

    def _db_now(self, s: Session) -> float:
        """The database's clock, in Unix seconds: one clock for every server's lease."""
        if self.engine.dialect.name == "sqlite":
            expr = "(julianday('now') - 2440587.5) * 86400.0"
        else:
            expr = "UNIX_TIMESTAMP(NOW(6))"
        return float(s.execute(text(f"SELECT {expr}")).scalar_one())

    def claim_lease(self, holder: str, url: str, ttl: float) -> Lease:
        """Take the leader lease, or renew it, if it is ours or has expired: one
        conditional UPDATE, so of several servers trying at once one wins. Return who
        holds it now."""
        with self.session() as s:
            now = self._db_now(s)
            took = s.execute(
                update(LeaseRow).where(
                    col(LeaseRow.name) == LEADER,
                    or_(col(LeaseRow.holder) == holder, col(LeaseRow.expires_at) < now))
                # epoch first: MySQL's later assignments see the earlier ones' values.
                .ordered_values(
                    ("epoch", case((col(LeaseRow.holder) == holder, col(LeaseRow.epoch)),
                                   else_=col(LeaseRow.epoch) + 1)),
                    ("holder", holder), ("url", url), ("expires_at", now + ttl)))
            if took.rowcount == 0 and s.get(LeaseRow, LEADER) is None:  # type: ignore[attr-defined]
                s.add(LeaseRow(name=LEADER, holder=holder, url=url, epoch=1,
                               expires_at=now + ttl))
                try:
                    s.commit()
                except sqlalchemy.exc.IntegrityError:  # another server was first
                    s.rollback()
            else:
                s.commit()
            s.expire_all()
            row = s.get(LeaseRow, LEADER)
            assert row is not None
            return Lease(row.holder, row.url, row.epoch, row.expires_at - now)

    def release_lease(self, holder: str) -> None:
        """Give the lease up at once (a server that stops), so a standby need not wait
        for it to expire."""
        with self.session() as s:
            s.execute(update(LeaseRow).where(col(LeaseRow.name) == LEADER,
                                             col(LeaseRow.holder) == holder)
                      .values(expires_at=0.0))
            s.commit()

    @staticmethod
    def _commit_fenced(s: Session, fence: tuple[str, int] | None) -> None:
        """Commit a leader's write: with `fence` (holder, epoch), only if the lease is
        still this server's, in the same epoch; else roll it back (NotLeader).

        The lease row is locked for the check and the commit only, at the end of the
        write: a write that locked it first held it for all its statements, and a
        renewal of the lease (an UPDATE of that row) waited for them. Placing 10,000
        instances on 5,000 nodes made the renewal wait past database_timeout, and the
        lone server stepped down in the middle of its own placements. A take-over
        waits for the lock all the same, so a deposed leader's write never lands."""
        if fence is not None:
            row = s.exec(select(LeaseRow).where(LeaseRow.name == LEADER)
                         .with_for_update()).first()
            if row is None or (row.holder, row.epoch) != fence:
                s.rollback()
                raise NotLeader("another server leads now: this one changes nothing")
        s.commit()

    # -- reads ----------------------------------------------------------------------

    def cluster_id(self) -> str:
        """The cluster's identity: made at the first start, the same ever after."""
        with self.session() as s:
            row = s.get(ClusterRow, 1)
            if row is not None:
                return row.id
            s.add(ClusterRow(id=secrets.token_hex(8)))
            try:
                s.commit()
            except sqlalchemy.exc.IntegrityError:  # another server made it meanwhile
                s.rollback()
            row = s.get(ClusterRow, 1)
            assert row is not None
            return row.id

    def snapshot(self) -> Snapshot:
        """Desired state as of now, in one transaction. What did not change since the
        last snapshot taken here is not read again: the instance rows while the
        cluster's instances_rev stands, everything else (apps, nodes, releases, domains,
        credentials) while its desired_rev stands. Every write made through a Store
        session moves them (see _count_writes), and held rows are read again after
        RELOAD_SECONDS in any case."""
        with self._held_lock, self.session() as s:
            revs = s.execute(sqlalchemy.select(
                col(ClusterRow.instances_rev), col(ClusterRow.desired_rev)).where(
                col(ClusterRow.key) == 1)).first()
            instances = self._read_instances(s, revs[0] if revs else None)
            rows = self._read_desired(s, revs[1] if revs else None)
            last = self._last
            if last is not None and last[0] is instances and last[1] is rows:
                releases = last[2]  # the same rows as the last snapshot's: its releases
            else:
                releases = self._placed_releases(s, instances, rows)
                self._last = (instances, rows, releases)
            certs = self._last_certs = self._served_certs(
                s, {d for names in rows.domains.values() for d in names})
            self._apply_pending()
        counted = revs[0] if revs else -1
        return self._made(instances, rows, releases, certs, counted)

    def _made(self, instances: tuple[Placed, ...], rows: _DesiredRows,
              releases: dict[tuple[str, int], ReleaseSpec],
              certs: dict[str, TlsPair], instances_rev: int) -> Snapshot:
        """A snapshot of these rows; their grouping by app made once per instance rows
        (every reconcile pass and app view needs it: 150,000 rows take 20 ms)."""
        grouped = self._grouped
        if grouped is None or grouped[0] is not instances:
            grouped = self._grouped = (instances, by_app(instances))
        desired = Desired(apps=rows.app_specs, instances=instances, nodes=rows.node_specs)
        return Snapshot(desired, rows.apps, rows.nodes, releases, rows.recent, rows.domains,
                        rows.generations, certs, grouped[1], instances_rev=instances_rev,
                        desired_rev=rows.rev)

    def held_snapshot(self) -> Snapshot | None:
        """The snapshot of the rows held here, without the database: the last one read,
        with the writes made through this Store since (see _patch_desired); None when
        they do not make one (nothing read yet, or instance rows changed since the last
        read made the releases). Takes no lock, so the event loop may call it: what it
        reads is replaced whole, never changed, and three references that do not
        belong together are told by their identity."""
        instances, rows, last = self._instances, self._desired, self._last
        if instances is None or rows is None or last is None or last[1] is not rows \
                or last[0] is not instances.placed:
            return None
        return self._made(last[0], rows, last[2], self._last_certs, instances.rev)

    def _patch_desired(self, rev: int, change: Callable[[_DesiredRows], _DesiredRows]) -> None:
        """After a committed write that moved desired_rev to `rev`: bring the held rows
        along with `change`, so that the next snapshot (and held_snapshot) need not read
        5,000 apps and nodes again for one new app. Applied now if no snapshot is being
        read, else by that snapshot as it ends: a write never waits for a read."""
        with self._pending_lock:
            self._pending[rev] = change
        if self._held_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._held_lock.release()

    def _apply_pending(self) -> None:
        """Apply the pending writes that follow the held rows' revision, in order (with
        _held_lock); forget those the held rows already include."""
        with self._pending_lock:
            held = self._desired
            if held is None:
                self._pending.clear()
                return
            while (change := self._pending.pop(held.rev + 1, None)) is not None:
                new = change(held)
                last = self._last
                if last is not None and last[1] is held:
                    self._last = (last[0], new, last[2])
                held = self._desired = new
            self._pending = {r: c for r, c in self._pending.items() if r > held.rev}

    def _placed_releases(self, s: Session, instances: tuple[Placed, ...],
                         rows: _DesiredRows) -> dict[tuple[str, int], ReleaseSpec]:
        """What each release that instance rows place runs (older releases read only
        while instances of them are placed)."""
        apps = rows.apps
        wanted = {(i.app, i.release) for i in instances if i.app in apps}
        missing = sorted(wanted - rows.releases.keys())
        extra = self._releases.read(s, lambda q: q.where(
            tuple_(RELEASES.c.app, RELEASES.c.version).in_(missing)),
            keep=True) if missing else {}
        releases: dict[tuple[str, int], ReleaseSpec] = {}
        for app, version in wanted:
            row = rows.releases.get((app, version)) or extra.get((app, version))
            if row is not None:  # (else the app's own settings stand in: server.py)
                releases[(app, version)] = self._spec(row, apps[app])
        return releases

    def _read_desired(self, s: Session, rev: int | None) -> _DesiredRows:
        """The rows of desired state besides instances: those held here while the
        cluster's desired_rev is `rev` (and they are fresh enough), else read now."""
        held = self._desired
        if held is not None and _holds(held, rev):
            return held
        apps = self._apps.read(s)
        nodes = self._nodes.read(s)
        recent: dict[str, list[ReleaseRow]] = {}
        # Each app's current release and any newer one (a failed deploy), newest first;
        # older releases are read only while instances of them are placed (snapshot).
        current = self._releases.read(s, lambda q: q.join(
            APPS, RELEASES.c.app == APPS.c.name).where(
            RELEASES.c.version >= APPS.c.release)
            .order_by(RELEASES.c.version.desc()), keep=True)
        for row in current.values():
            recent.setdefault(row.app, []).append(row)
        # Releases of apps that are gone are held no longer (nor their specs).
        self._releases.held = {k: v for k, v in self._releases.held.items() if k[0] in apps}
        self._specs = {k: v for k, v in self._specs.items() if k[0] in apps}
        domains: dict[str, list[str]] = {}
        for d in s.exec(select(DomainRow).order_by(col(DomainRow.domain))):
            domains.setdefault(d.app, []).append(d.domain)
        generations = {node: generation for node, generation in s.execute(
            sqlalchemy.select(col(NodeCredentialRow.node),
                              col(NodeCredentialRow.generation)))}
        rows = _DesiredRows(
            rev=rev if rev is not None else -1, apps=apps, nodes=nodes, releases=current,
            recent=recent, domains=domains, generations=generations,
            app_specs={a.name: _app_spec(a) for a in apps.values()},
            node_specs={n.name: NodeSpec(n.name, n.status, n.capacity_mb)
                        for n in nodes.values()})
        self._desired = rows if rev is not None else None
        return rows

    def _spec(self, row: ReleaseRow, app: AppRow) -> ReleaseSpec:
        """What a release runs, made once per release row: its env is parsed again
        only when the row changed (or it falls back on the app's settings, old rows)."""
        held = self._specs.get((row.app, row.version))
        if held is not None and held[0] is row and row.port is not None:
            return held[1]
        spec = row.spec(app)
        self._specs[(row.app, row.version)] = (row, spec)
        return spec

    def _read_instances(self, s: Session, rev: int | None) -> tuple[Placed, ...]:
        """Every instance row, first in the snapshot's transaction: read from the
        database only when the rows held here no longer stand (_holds), as plain tuples,
        not ORM objects, which cost ten times as much."""
        held = self._instances
        if held is not None and _holds(held, rev):
            return held.placed
        if held is not None and rev is not None and held.rev == rev:
            # Held past RELOAD_SECONDS, the counter unmoved: the rows are read again only
            # if their count, newest row or memory differ (a writer that does not count).
            # Reading 150,000 rows every minute held the database thread for seconds,
            # and the API's calls behind it answered 503.
            count, newest, memory = s.execute(INSTANCE_SUMMARY).one()
            if (count, newest, int(memory) if memory is not None else None) == held.summary:
                held.read_at = time.monotonic()
                return held.placed
        rows = s.execute(sqlalchemy.select(*(col(c) for c in (
            InstanceRow.id, InstanceRow.app, InstanceRow.release, InstanceRow.node,
            InstanceRow.memory_mb, InstanceRow.created_at))))
        by_id = {r[0]: Placed(*r) for r in rows}
        if rev is None:
            self._instances = None
            return tuple(by_id.values())
        # The held tuple itself: the next snapshot gives the same object, and what is
        # cached on it (the last plan, routes, assignments) stands.
        self._instances = _Instances(rev, by_id)
        return self._instances.placed

    @staticmethod
    def _count_instance_change(s: Session) -> int | None:
        """The cluster's instances_rev as moved by this write of instance rows."""
        return Store._counted(s, "instances_rev")

    @staticmethod
    def _counted(s: Session, counter: str) -> int | None:
        """The cluster's `counter` as moved by this transaction's write (the session hook
        moved it with the write's first statement; None: no cluster row yet). The row
        stays locked until the write commits, so such writes take their turns and each
        gets its own value."""
        _count(s, counter)
        return s.execute(sqlalchemy.select(getattr(ClusterRow, counter)).where(
            col(ClusterRow.key) == 1)).scalar()

    def _patch_instances(self, rev: int | None, added: Sequence[Placed] = (),
                         removed: Callable[[Placed], bool] | None = None) -> None:
        """After a committed write that moved instances_rev to `rev`: bring the rows
        held here along, if they were the ones just before it; else forget them (the
        next snapshot reads them all). Rows a snapshot read after the write committed
        (in another thread) include it already."""
        with self._held_lock:
            held = self._instances
            if held is not None and rev is not None and held.rev >= rev:
                return
            if held is None or rev is None or held.rev != rev - 1:
                self._instances = None
                return
            self._instances = self._patched(held, rev, added, removed)

    @staticmethod
    def _patched(held: _Instances, rev: int, added: Sequence[Placed],
                 removed: Callable[[Placed], bool] | None) -> _Instances:
        by_id = held.by_id
        if removed is not None:
            by_id = {k: v for k, v in by_id.items() if not removed(v)}
        else:
            by_id = dict(by_id)
        for p in added:
            by_id[p.id] = p
        return _Instances(rev, by_id, held.read_at)

    def _served_certs(self, s: Session, routed: set[str]) -> dict[str, TlsPair]:
        """The valid certificates of routed domains, their PEM read only when their row
        changed since the last snapshot."""
        now = time.time()
        current: dict[str, float] = {}
        for domain, state, not_after, updated in s.exec(select(
                CertificateRow.domain, CertificateRow.state, CertificateRow.not_after,
                CertificateRow.updated_at).where(col(CertificateRow.not_after) > now)):
            if domain in routed and acme_orders.serve(
                    acme_orders.Cert(state, not_after=not_after), now):
                current[domain] = updated
        stale = [d for d, updated in current.items()
                 if d not in self._tls or self._tls[d][0] != updated]
        if stale:
            for row in s.exec(select(CertificateRow).where(
                    col(CertificateRow.domain).in_(stale))):
                self._tls[row.domain] = (row.updated_at, TlsPair(row.chain_pem, row.key_pem))
        self._tls = {d: self._tls[d] for d in current if d in self._tls}
        return {d: pair for d, (_, pair) in self._tls.items()}

    def get_app(self, name: str) -> AppRow:
        with self.session() as s:
            app = s.get(AppRow, name)
        if app is None:
            raise NotFound(f"no app named {name!r}", hint="`dinp app list` shows the apps.")
        return app

    def find_app(self, name: str) -> AppRow | None:
        with self.session() as s:
            return s.get(AppRow, name)

    def releases(self, app: str) -> list[ReleaseRow]:
        with self.session() as s:
            return list(s.exec(
                select(ReleaseRow).where(ReleaseRow.app == app)
                .order_by(ReleaseRow.version.desc())  # type: ignore[attr-defined]
            ))

    def events(self, *, app: str | None = None, user: str | None = None,
               visible: tuple[frozenset[str], str] | None = None,
               after: int = 0, limit: int = 50) -> list[EventRow]:
        """The newest events (newer than event `after`), of `app` and by `user` if given.
        `visible` (apps, user): only events of those apps or made by that user (what a
        member may see)."""
        with self.session() as s:
            query = select(EventRow)
            if after:
                query = query.where(col(EventRow.id) > after)
            if app is not None:
                query = query.where(EventRow.app == app)
            if user is not None:
                query = query.where(EventRow.user == user)
            if visible is not None:
                apps, me = visible
                query = query.where(or_(col(EventRow.app).in_(sorted(apps)),
                                        col(EventRow.user) == me))
            query = query.order_by(EventRow.id.desc()).limit(limit)  # type: ignore[union-attr]
            return list(s.exec(query))

    # -- app writes -----------------------------------------------------------------

    def create_app(
        self, *, name: str, image: str, instances: int, memory_mb: int, port: int,
        env: dict[str, str], health_path: str | None, team: str = DEFAULT_TEAM,
        actor: Actor = SYSTEM, surge: int = 0, deploy_timeout: float = 120.0,
        stop_grace: float = 10.0, https_redirect: bool = False, hsts: int = 0,
    ) -> AppRow:
        app = AppRow(
            name=name, image=image, instances=instances, memory_mb=memory_mb, port=port,
            env_json=json.dumps(env, sort_keys=True), health_path=health_path, release=1,
            team=team, surge=surge, deploy_timeout=deploy_timeout, stop_grace=stop_grace,
            https_redirect=https_redirect, hsts=hsts,
        )
        release = ReleaseRow(app=name, version=1, image=image, env_json=app.env_json,
                             port=port, memory_mb=memory_mb, health_path=health_path,
                             change=rel.describe(None, rel.ReleaseSpec(image)),
                             created_by=actor.user or "", status=rollouts.DEPLOYING)
        with self.session() as s:
            if s.get(AppRow, name) is not None:
                raise Conflict(f"an app named {name!r} already exists")
            self._check_quota(s, team, quotas.Usage(), quotas.Usage.of(instances, memory_mb))
            s.add(app)
            s.add(release)
            _event(s, actor, f"created with {instances} instance(s) of {image} in team "
                   f"{team}", app=name)
            try:
                s.flush()
                rev = self._counted(s, "desired_rev")
                s.commit()
            except sqlalchemy.exc.IntegrityError as exc:
                raise Conflict(f"an app named {name!r} already exists") from exc
        if rev is not None:
            self._patch_desired(rev, functools.partial(self._with_new_app, rev=rev, app=app,
                                                       release=release))
        return app

    def _with_new_app(self, held: _DesiredRows, *, rev: int, app: AppRow,
                      release: ReleaseRow) -> _DesiredRows:
        """The held rows with a new app and its first release, at `rev`. The releases
        the last snapshot made stand (see _apply_pending): no instance row places the
        app yet, unless rows of an app of that name deleted before are still there, in
        which case that snapshot is no longer the one to build on."""
        if self._instances is not None and app.name in self._instances.apps:
            self._last = None
        key = (app.name, release.version)
        return replace(held, rev=rev, apps={**held.apps, app.name: app},
                       releases={**held.releases, key: release},
                       recent={**held.recent, app.name: [release]},
                       app_specs={**held.app_specs, app.name: _app_spec(app)})

    def deploy(self, name: str, change: rel.Change, *, actor: Actor = SYSTEM) -> AppRow:
        """Make the next release of `name` from its current one and `change`; the
        planner then rolls the app's instances to it."""
        with self.session() as s:
            app = self._app_for_update(s, name)
            current = s.exec(select(ReleaseRow).where(
                ReleaseRow.app == name, ReleaseRow.version == app.release)).one()
            old = current.spec(app)
            new = rel.apply(old, change)
            self._check_memory(s, app, new.memory_mb)
            self._add_release(s, app, new, rel.describe(old, new, restart=change.restart),
                              actor)
            s.commit()
            return app

    def rollback(self, name: str, version: int | None = None, *,
                 actor: Actor = SYSTEM) -> AppRow:
        """A new release equal to `version` (default: the one before the current)."""
        with self.session() as s:
            app = self._app_for_update(s, name)
            if version is None and app.release == 1:
                raise Conflict(f"{name} has no release before its first to roll back to")
            target = version if version is not None else app.release - 1
            row = s.exec(select(ReleaseRow).where(
                ReleaseRow.app == name, ReleaseRow.version == target)).first()
            if row is None:
                # The app exists, the release asked for does not: not a 404 (what is
                # missing is no resource of the URL), a request the app cannot take.
                raise Conflict(f"{name} has no release {target}",
                               hint=f"`dinp app releases {name}` lists them.")
            if target == app.release:
                raise Conflict(f"{name} runs release {target} already")
            spec = row.spec(app)
            self._check_memory(s, app, spec.memory_mb)
            self._add_release(s, app, spec, f"rollback to {target}", actor)
            s.commit()
            return app

    def _app_for_update(self, s: Session, name: str) -> AppRow:
        # FOR UPDATE: two deploys of one app at once take numbers one after the other.
        app = s.exec(select(AppRow).where(AppRow.name == name).with_for_update()).first()
        if app is None:
            raise NotFound(f"no app named {name!r}", hint="`dinp app list` shows the apps.")
        return app

    @staticmethod
    def _check_quota(s: Session, team: str | None, before: quotas.Usage,
                     after: quotas.Usage) -> None:
        """Refuse a change that takes the app's team past its quota. The team's row is
        locked until the change commits: for a team with a quota, exclusively, so two
        changes at once are counted in turn; for one without, shared, so creates in it
        do not wait on each other's commits (a hundred at once took seconds in turn)
        while the team can be deleted or given a quota only between them."""
        if team is None:
            return
        query = select(TeamRow).where(TeamRow.name == team)
        ahead = s.exec(query).first()  # (a plain read: which lock the change needs)
        limited = ahead is not None and _quota(ahead) != quotas.Quota()
        row = s.exec(query.with_for_update(read=not limited)
                     .execution_options(populate_existing=True)).first()
        if row is None and team == DEFAULT_TEAM:
            # Made on first use, without a quota. Two creates at once (API threads, two
            # servers) may both get here: the second insert is ignored, not an error
            # that would say the app exists.
            s.execute(insert(TeamRow).values(name=team, created_at=time.time())
                      .prefix_with("IGNORE", dialect="mysql")
                      .prefix_with("OR IGNORE", dialect="sqlite"))
            return
        if row is None:
            raise NotFound(f"no team named {team!r}", hint="`dinp team list` shows them.")
        quota = _quota(row)
        if quota == quotas.Quota():
            return
        used = quotas.Usage()
        for instances, memory_mb in s.exec(select(AppRow.instances, AppRow.memory_mb)
                                           .where(AppRow.team == team)):
            used = used + quotas.Usage.of(instances, memory_mb)
        quotas.check(team, quota, used, before, after)

    def _check_memory(self, s: Session, app: AppRow, memory_mb: int) -> None:
        if memory_mb != app.memory_mb:
            self._check_quota(s, app.team, quotas.Usage.of(app.instances, app.memory_mb),
                              quotas.Usage.of(app.instances, memory_mb))

    @staticmethod
    def _add_release(s: Session, app: AppRow, spec: ReleaseSpec, change: str,
                     actor: Actor) -> None:
        """Release N+1 of `app` running `spec`; the app row shows it as current. A
        release still rolling out is superseded: it stays in the history as cancelled."""
        latest = s.exec(select(ReleaseRow).where(ReleaseRow.app == app.name)
                        .order_by(col(ReleaseRow.version).desc())).first()
        for rolling in s.exec(select(ReleaseRow).where(
                ReleaseRow.app == app.name, ReleaseRow.status == rollouts.DEPLOYING)):
            rolling.status, rolling.failure = rollouts.CANCELLED, "superseded by a new release"
            s.add(rolling)
        env_json = json.dumps(dict(spec.env), sort_keys=True)
        version = (latest.version if latest else app.release) + 1
        s.add(ReleaseRow(app=app.name, version=version, image=spec.image, env_json=env_json,
                         port=spec.port, memory_mb=spec.memory_mb,
                         health_path=spec.health_path, change=change,
                         created_by=actor.user or "", status=rollouts.DEPLOYING))
        Store._point_at(app, spec, version)
        s.add(app)
        _event(s, actor, f"release {version}: {change}", app=app.name)

    def record_verdict(self, name: str, version: int, status: str, reason: str = "", *,
                       actor: Actor = SYSTEM) -> AppRow:
        """The rollout of `version` ended: deployed; or failed (or cancelled), and the
        app goes back to the newest release before it that deployed, whose instances
        still serve."""
        with self.session() as s:
            app = self._app_for_update(s, name)
            row = s.exec(select(ReleaseRow).where(
                ReleaseRow.app == name, ReleaseRow.version == version)).first()
            if row is None or row.status != rollouts.DEPLOYING or app.release != version:
                return app  # decided meanwhile (a new deploy, a cancel): nothing to record
            row.status, row.failure = status, reason
            s.add(row)
            if status == rollouts.DEPLOYED:
                _event(s, actor, f"release {version} deployed", app=name)
            else:
                back = s.exec(select(ReleaseRow).where(
                    ReleaseRow.app == name, ReleaseRow.version < version,
                    ReleaseRow.status == rollouts.DEPLOYED,
                ).order_by(col(ReleaseRow.version).desc())).first()
                if back is not None:
                    self._point_at(app, back.spec(app), back.version)
                    s.add(app)
                _event(s, actor, f"release {version} {status}: {reason}"
                       + (f"; back to release {back.version}" if back else ""), app=name)
            s.commit()
            return app

    @staticmethod
    def _point_at(app: AppRow, spec: ReleaseSpec, version: int) -> None:
        """Make release `version` (running `spec`) the app's current one."""
        app.image, app.env_json, app.port = (spec.image, json.dumps(dict(spec.env),
                                                                    sort_keys=True), spec.port)
        app.memory_mb, app.health_path = spec.memory_mb, spec.health_path
        app.release, app.updated_at = version, time.time()

    def update_settings(self, name: str, settings: dict[str, float], *,
                        actor: Actor = SYSTEM) -> AppRow:
        """Change how the app is rolled out, stopped and served over HTTPS (surge,
        deploy_timeout, stop_grace, https_redirect, hsts): not what runs, so no new
        release."""
        with self.session() as s:
            app = self._app_for_update(s, name)
            changed = {k: v for k, v in settings.items() if getattr(app, k) != v}
            for key, value in changed.items():
                setattr(app, key, value)
            if changed:
                app.updated_at = time.time()
                s.add(app)
                _event(s, actor, "settings: " + ", ".join(
                    f"{k} {_setting_words(v)}" for k, v in sorted(changed.items())),
                    app=name)
                s.commit()
            return app

    def scale_app(self, name: str, instances: int, *, actor: Actor = SYSTEM) -> AppRow:
        with self.session() as s:
            app = self._app_for_update(s, name)
            if app.instances != instances:
                self._check_quota(s, app.team, quotas.Usage.of(app.instances, app.memory_mb),
                                  quotas.Usage.of(instances, app.memory_mb))
                _event(s, actor, f"scaled from {app.instances} to {instances}", app=name)
                app.instances = instances
                app.updated_at = time.time()
                s.add(app)
                s.commit()
            return app

    def delete_app(self, name: str, *, actor: Actor = SYSTEM) -> None:
        """Delete the app; its instance rows go too, so agents stop its containers."""
        with self.session() as s:
            # The app's row first, as every other change of an app locks it: then the
            # cluster row's counters (two writers never wait on each other crosswise).
            app = self._app_for_update(s, name)
            s.execute(delete(InstanceRow).where(col(InstanceRow.app) == name))
            rev = self._count_instance_change(s)
            s.execute(delete(ReleaseRow).where(col(ReleaseRow.app) == name))
            for domain in s.exec(select(DomainRow).where(DomainRow.app == name)):
                self._drop_certificate(s, domain.domain)
            s.execute(delete(DomainRow).where(col(DomainRow.app) == name))
            s.delete(app)
            _event(s, actor, "deleted", app=name)
            s.commit()
        self._patch_instances(rev, removed=lambda p: p.app == name)

    # -- custom domains ---------------------------------------------------------------

    def add_domain(self, name: str, domain: str, *, tls: bool = False,
                   actor: Actor = SYSTEM) -> None:
        """Route `domain` (lowercase) to app `name`; a domain serves one app only. With
        `tls`, a certificate is ordered for it too (also for a domain the app has
        already)."""
        with self.session() as s:
            self._app_for_update(s, name)
            taken = s.get(DomainRow, domain)
            if taken is not None and (taken.app != name or not tls):
                where = "this app" if taken.app == name else f"app {taken.app!r}"
                raise Conflict(f"{domain} is routed to {where} already")
            cert = s.get(CertificateRow, domain)
            if taken is not None and cert is not None and cert.state != acme_orders.REVOKING:
                raise Conflict(f"{domain} is routed to this app already, with TLS")
            if taken is None:
                s.add(DomainRow(domain=domain, app=name))
            if tls:
                if cert is not None:  # still being revoked: it is left to expire instead
                    s.delete(cert)
                    s.flush()
                s.add(CertificateRow(domain=domain, app=name))
            _event(s, actor, f"domain {domain} added" + (" with TLS (certificate ordered)"
                                                          if tls else "")
                   if taken is None else f"domain {domain}: TLS on (certificate ordered)",
                   app=name)
            try:
                s.commit()
            except sqlalchemy.exc.IntegrityError as exc:  # added by another request
                raise Conflict(f"{domain} is routed to another app already") from exc

    def remove_domain(self, name: str, domain: str, *, actor: Actor = SYSTEM) -> None:
        """Stop routing `domain`; its certificate leaves the routers at once and is
        revoked by the leader (best effort)."""
        with self.session() as s:
            row = s.get(DomainRow, domain)
            if row is None or row.app != name:
                raise NotFound(f"{domain} is not a domain of {name}",
                               hint=f"`dinp app domains list {name}` shows them.")
            s.delete(row)
            self._drop_certificate(s, domain)
            _event(s, actor, f"domain {domain} removed", app=name)
            s.commit()

    @staticmethod
    def _drop_certificate(s: Session, domain: str) -> None:
        """A removed domain's certificate: to be revoked if one was issued, else gone."""
        cert = s.get(CertificateRow, domain)
        if cert is None:
            return
        if cert.chain_pem:
            cert.state, cert.updated_at = acme_orders.REVOKING, time.time()
            s.add(cert)
        else:
            s.delete(cert)

    def domains(self, name: str) -> list[tuple[DomainRow, CertificateRow | None]]:
        """The app's domains, each with its certificate row (None: no TLS)."""
        with self.session() as s:
            if s.get(AppRow, name) is None:
                raise NotFound(f"no app named {name!r}", hint="`dinp app list` shows the apps.")
            rows = list(s.exec(select(DomainRow).where(DomainRow.app == name)
                               .order_by(col(DomainRow.domain))))
            certs = {c.domain: c for c in s.exec(select(CertificateRow).where(
                CertificateRow.app == name))}
        return [(r, certs.get(r.domain)) for r in rows]

    # -- certificates (ACME) ----------------------------------------------------------

    def certificates(self) -> list[CertificateRow]:
        """Every certificate row, keys included: for the leader's ACME loop only."""
        with self.session() as s:
            return list(s.exec(select(CertificateRow).order_by(col(CertificateRow.domain))))

    def certificate_ordering(self, domain: str, state: str, *,
                             fence: tuple[str, int] | None = None) -> None:
        """Mark an order as under way (an issued certificate becomes renewing)."""
        with self.session() as s:
            row = s.get(CertificateRow, domain)
            if row is not None and row.state != acme_orders.REVOKING and row.state != state:
                row.state, row.updated_at = state, time.time()
                s.add(row)
            self._commit_fenced(s, fence)

    def certificate_issued(self, domain: str, *, chain_pem: str, key_pem: str,
                           not_before: float, not_after: float,
                           fence: tuple[str, int] | None = None) -> bool:
        """Store a new certificate for `domain` (issued, or renewed), with its event.
        False when the domain was removed meanwhile (the caller revokes it)."""
        with self.session() as s:
            row = s.get(CertificateRow, domain)
            if row is None or row.state == acme_orders.REVOKING:
                self._commit_fenced(s, fence)  # (only a leader may say the domain went)
                return False
            renewed = bool(row.chain_pem)
            outcome = acme_orders.issued()
            row.chain_pem, row.key_pem = chain_pem, key_pem
            row.not_before, row.not_after, row.issued_at = not_before, not_after, time.time()
            row.state, row.attempts = outcome.state, outcome.attempts
            row.next_attempt_at, row.last_error = outcome.next_attempt_at, outcome.last_error
            row.updated_at = time.time()
            s.add(row)
            expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after))
            s.add(EventRow(app=row.app, message=f"certificate for {domain} "
                           f"{'renewed' if renewed else 'issued'}, valid until {expires}"))
            self._commit_fenced(s, fence)
            return True

    def certificate_failed(self, domain: str, outcome: acme_orders.Outcome, *,
                           fence: tuple[str, int] | None = None) -> None:
        """Record a failed order (its reason, the next try), with its event."""
        with self.session() as s:
            row = s.get(CertificateRow, domain)
            if row is None or row.state == acme_orders.REVOKING:
                return
            row.state, row.attempts = outcome.state, outcome.attempts
            row.next_attempt_at, row.last_error = outcome.next_attempt_at, outcome.last_error
            row.updated_at = time.time()
            s.add(row)
            # At the time of the failure, so events show the backoff as it was decided.
            s.add(EventRow(app=row.app, at=outcome.at or time.time(), message=(
                f"certificate for {domain} failed ({outcome.attempts} time(s) in a row; "
                f"next try in {outcome.retry_in:.0f} s): {outcome.last_error}")))
            self._commit_fenced(s, fence)

    def certificate_revoked(self, domain: str, error: str = "", *,
                            fence: tuple[str, int] | None = None) -> None:
        """Forget a removed domain's certificate once revoked (or revocation failed:
        `error`, recorded in its event)."""
        with self.session() as s:
            row = s.get(CertificateRow, domain)
            if row is None or row.state != acme_orders.REVOKING:
                return  # added again meanwhile: a new certificate is wanted
            s.delete(row)
            s.add(EventRow(app=row.app, message=f"certificate for {domain} revoked"
                           if not error else f"certificate for {domain} could not be "
                           f"revoked ({error}); forgotten all the same"))
            self._commit_fenced(s, fence)

    def acme_account(self, directory: str) -> AcmeAccountRow | None:
        with self.session() as s:
            return s.get(AcmeAccountRow, directory)

    def save_acme_account(self, directory: str, key_pem: str, uri: str,
                          email: str) -> AcmeAccountRow:
        """Keep the account's key (the first server to save one wins; the others use
        it); return the row kept."""
        with self.session() as s:
            row = s.get(AcmeAccountRow, directory)
            if row is None:
                s.add(AcmeAccountRow(directory=directory, key_pem=key_pem, uri=uri,
                                     email=email))
                try:
                    s.commit()
                except sqlalchemy.exc.IntegrityError:
                    s.rollback()
            elif (row.uri, row.email) != (uri, email) and row.key_pem == key_pem:
                row.uri, row.email = uri, email
                s.add(row)
                s.commit()
            s.expire_all()
            kept = s.get(AcmeAccountRow, directory)
            assert kept is not None
            return kept

    # -- nodes ----------------------------------------------------------------------

    def upsert_node(self, *, name: str, address: str, capacity_mb: int,
                    running: Sequence[str] = ()) -> NodeRow:
        """Record a node on its first heartbeat, or when its address or capacity change.
        A new node's running instances unknown to this database are recorded as foreign."""
        with self.session() as s:
            node = s.get(NodeRow, name)
            if node is None:
                known = {r for (r,) in s.execute(select(InstanceRow.id))}
                foreign = sorted(set(running) - known)
                node = NodeRow(name=name, address=address, capacity_mb=capacity_mb,
                               foreign_json=json.dumps(foreign))
                s.add(EventRow(node=name, message=f"node {name} joined at {address} "
                               f"with {capacity_mb} MB"))
                if foreign:
                    log.warning("node %s runs %d instance(s) this database does not know; "
                                "they are left running (remove them by hand if stale)",
                                name, len(foreign))
                    s.add(EventRow(node=name, message=f"node {name} runs instances this "
                                   f"database does not know, left running: "
                                   f"{', '.join(foreign)}"))
            else:
                node.address, node.capacity_mb, node.updated_at = address, capacity_mb, time.time()
            s.add(node)
            s.commit()
            return node

    def set_node_agent(self, name: str, agent: str, message: str | None = None) -> None:
        """Record which agent process reports for the node (and an event, if given)."""
        with self.session() as s:
            node = s.get(NodeRow, name)
            if node is not None:
                node.agent = agent
                s.add(node)
            if message:
                s.add(EventRow(node=name, message=message))
            s.commit()

    def set_node_status(self, name: str, status: str, *, actor: Actor = SYSTEM) -> NodeRow:
        """Drain a node (its instances move elsewhere) or make it ready again."""
        with self.session() as s:
            node = s.get(NodeRow, name)
            if node is None:
                raise NotFound(f"no node named {name!r}", hint="`dinp node list` shows them.")
            if node.status != status:
                if node.status == DOWN and status == READY:
                    raise Conflict(f"node {name} is down: it is ready again once its "
                                   "agent reports")
                node.status, node.updated_at = status, time.time()
                s.add(node)
                _event(s, actor, f"node {name} is {status}", node=name)
                s.commit()
            return node

    # -- the planner's actions ------------------------------------------------------

    def apply(self, actions: Sequence[Action], *,
              fence: tuple[str, int] | None = None) -> None:
        """Carry out a plan in one transaction: all of it or none; with `fence` (holder,
        epoch), only while that server still holds the lease. Rows are written in bulk
        (one statement per kind and chunk, not one per row): placing 10,000 instances
        is one transaction of a few statements."""
        at = time.time()
        placed: list[Placed] = []
        gone: set[str] = set()
        events: list[dict[str, object]] = []
        statuses: list[SetNodeStatus] = []
        for action in actions:
            if isinstance(action, Place):
                p = Placed(new_id(), action.app, action.release, action.node,
                           action.memory_mb, at)
                placed.append(p)
                events.append(_event_values(at, f"placed instance {p.id} on {p.node}",
                                            app=p.app, node=p.node))
            elif isinstance(action, Remove):
                gone.add(action.instance)
                events.append(_event_values(
                    at, f"removed instance {action.instance} from {action.node}: "
                    f"{action.reason}", app=action.app, node=action.node))
            elif isinstance(action, SetNodeStatus):
                statuses.append(action)
            # Unplaceable: reported by the server, rate-limited; not a state change.
        with self.session() as s:
            rev = None
            if placed or gone:
                rows = [{"id": p.id, "app": p.app, "release": p.release, "node": p.node,
                         "memory_mb": p.memory_mb, "created_at": p.created} for p in placed]
                for chunk in _chunks(rows):
                    s.execute(insert(INSTANCES), chunk)
                for ids in _chunks(sorted(gone)):
                    s.execute(delete(InstanceRow).where(col(InstanceRow.id).in_(ids)))
                rev = self._count_instance_change(s)
            by_status: dict[str, list[str]] = {}
            for action in statuses:
                by_status.setdefault(action.status, []).append(action.node)
            for status, names in sorted(by_status.items()):
                # One statement per status and chunk (a wave of silent nodes is
                # hundreds): the session hooks stamp updated_at and move desired_rev.
                for some in _chunks(sorted(set(names))):
                    known = s.execute(select(NodeRow.name).where(
                        col(NodeRow.name).in_(some))).scalars().all()
                    if not known:
                        continue
                    s.execute(update(NodeRow).where(col(NodeRow.name).in_(known))
                              .values(status=status))
                    events.extend(_event_values(at, f"node {name} is {status}", node=name)
                                  for name in sorted(known))
            for chunk in _chunks(events):
                s.execute(insert(EVENTS), chunk)
            self._commit_fenced(s, fence)
        if placed or gone:
            self._patch_instances(rev, placed, lambda p: p.id in gone)

    def add_event(self, message: str, *, app: str | None = None, node: str | None = None) -> None:
        self.add_events([(message, app, node, time.time())])

    def add_events(self, events: Sequence[tuple[str, str | None, str | None, float]]) -> None:
        """Events of dinp itself (message, app, node, when), in one transaction, in
        bulk."""
        rows = [_event_values(at, message, app=app, node=node)
                for message, app, node, at in events]
        with self.session() as s:
            for chunk in _chunks(rows):
                s.execute(insert(EVENTS), chunk)
            s.commit()


def _count_writes(session: Session) -> None:
    """Make every transaction of `session` that writes a table of desired state (an
    ORM flush or a statement) also move the cluster's counter of it, once: desired_rev,
    or instances_rev for instance rows. Snapshots then keep what they hold only while
    nothing was written, whichever method wrote it."""
    def flushing(s: Session, *_: Any) -> None:
        for obj in s.dirty:
            if getattr(obj, "__tablename__", None) in STAMPED_TABLES:
                obj.updated_at = _later(obj.updated_at)
        tables = {getattr(obj, "__tablename__", None)
                  for obj in itertools.chain(s.new, s.dirty, s.deleted)}
        if tables & DESIRED_TABLES:
            _count(s, "desired_rev")
        if "instances" in tables:
            _count(s, "instances_rev")

    def executing(state: Any) -> None:
        table = getattr(getattr(state.statement, "table", None), "name", None)
        if not (state.is_insert or state.is_update or state.is_delete):
            return
        if state.is_update and table in STAMPED_TABLES:
            state.statement = state.statement.values(updated_at=_later(None))
        if table in DESIRED_TABLES:
            _count(state.session, "desired_rev")
        elif table == "instances":
            _count(state.session, "instances_rev")

    def ended(s: Session, *_: Any) -> None:
        s.info.pop("counted", None)

    sqlalchemy.event.listen(session, "before_flush", flushing)
    sqlalchemy.event.listen(session, "do_orm_execute", executing)
    sqlalchemy.event.listen(session, "after_commit", ended)
    sqlalchemy.event.listen(session, "after_rollback", ended)


def _count(s: Session, counter: str) -> None:
    """Move the cluster row's `counter` in this transaction, if not moved yet (the row
    stays locked until it commits, so such writes take their turns)."""
    counted: set[str] = s.info.setdefault("counted", set())
    if counter not in counted:
        counted.add(counter)
        column = getattr(ClusterRow, counter)
        s.execute(update(ClusterRow).where(col(ClusterRow.key) == 1)
                  .values({counter: column + 1}))


def _later(before: float | None) -> float:
    """A new updated_at: now, and never equal to the one before (snapshots tell a
    changed row by it)."""
    now = time.time()
    return now if before is None or now > before else before + 1e-6


def _app_spec(app: AppRow) -> AppSpec:
    """What the planner needs of an app row."""
    return AppSpec(app.name, app.instances, app.memory_mb, app.release,
                   rollouts.surge(app.instances, app.surge))


def _quota(row: TeamRow) -> quotas.Quota:
    return quotas.Quota(instances=row.instances_quota, memory_mb=row.memory_quota_mb)


def _chunks(items: list[T], size: int = 1000) -> Iterator[list[T]]:
    """`items` in lists of at most `size`: a statement's parameters stay well under
    the database's limits (SQLite's 32,766 variables, MySQL's packet size)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _event_values(at: float, message: str, *, app: str | None = None,
                  node: str | None = None) -> dict[str, object]:
    """An event of dinp itself as the values of a bulk insert."""
    return {"at": at, "app": app, "node": node, "message": message, "user": None,
            "source": None}


def _setting_words(value: float) -> str:
    """A setting's value in an event: on/off for switches, whole numbers in full."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value) if isinstance(value, int) else f"{value:g}"


def _event(s: Session, actor: Actor, message: str, *, app: str | None = None,
           node: str | None = None) -> None:
    """An event of a change, with who made it and from where (the audit trail)."""
    s.add(EventRow(app=app, node=node, message=message, user=actor.user, source=actor.source))
