"""Domain exceptions that carry a message a person can act on.

The core raises these; each edge translates them once, from the class itself: the CLI
exits with `exit_code`, the API answers `http_status` with `to_json()`, the build
service streams `to_json()`, and the API client turns an answer back into the same class
with `from_json()`. Nothing here prints.
"""

from __future__ import annotations

from typing import Any


class DinpError(Exception):
    """Base of every error meant for a person."""

    exit_code = 1  # what the CLI exits with
    http_status = 500  # what the API answers with

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"

    def to_json(self) -> dict[str, Any]:
        """The error as the API and the build service send it."""
        body: dict[str, Any] = {"error": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body

    def to_stream(self) -> dict[str, Any]:
        """The error as a line of the build service's stream: with its class and exit
        code, so the remote client fails exactly as a local build would."""
        return {**self.to_json(), "kind": type(self).__name__, "exit_code": self.exit_code}

    @staticmethod
    def from_json(status: int | None, body: object) -> DinpError:
        """The error an answer describes: an API answer of `status` with `body` (the API's
        own JSON, or anything a proxy in between may have sent), or a line of the build
        service's stream (`status` None; `kind` and `exit_code` in the line)."""
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        kind = _KINDS.get(str(data.get("kind")))
        if kind is not None:
            status = kind.http_status
        error = _decode(status or 500, data)
        code = data.get("exit_code")
        if isinstance(code, int) and not isinstance(code, bool) and 1 <= code <= 125:
            error.exit_code = code  # a class of the sender's this side does not know
        return error


def _decode(status: int, data: dict[str, Any]) -> DinpError:
    message = str(data.get("error") or f"HTTP {status}")
    hint = data.get("hint") if isinstance(data.get("hint"), str) else None
    if status == InvalidInput.http_status:
        reason = data.get("reason")
        if not isinstance(reason, str):
            reason = message
        return InvalidInput(str(data.get("field") or "request"), reason, hint=hint)
    if status == Conflict.http_status and data.get("code") == WrongCluster.code:
        return WrongCluster(message, cluster=str(data.get("cluster", "")))
    if status == Conflict.http_status and data.get("code") == NodeTaken.code:
        return NodeTaken(message, hint=hint)
    kind = _KINDS.get(str(data.get("kind"))) or next(
        (k for k in _BY_STATUS if k.http_status == status), DinpError)
    return kind(message, hint=hint)


class InvalidInput(DinpError):
    """A value given by the user is wrong: `field` names which one, `reason` says why."""

    exit_code = 2
    http_status = 400

    def __init__(self, field: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{field}: {reason}", hint=hint)
        self.field = field
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "field": self.field, "reason": self.reason}


class Unauthorized(DinpError):
    exit_code = 5
    http_status = 401


class Forbidden(DinpError):
    """Who asks is known, and may not do this (another team's app, an admin's verb, a
    token scoped to another app)."""

    exit_code = 5
    http_status = 403


class NotFound(DinpError):
    exit_code = 3
    http_status = 404


class Conflict(DinpError):
    exit_code = 4
    http_status = 409


class WrongCluster(Conflict):
    """An agent reported for another cluster than the server's (its database was
    replaced): the answer tells it the server's, and nothing of the report is recorded."""

    code = "cluster"

    def __init__(self, message: str, *, cluster: str) -> None:
        super().__init__(message)
        self.cluster = cluster

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "code": self.code, "cluster": self.cluster}


class NodeTaken(Conflict):
    """A second agent process reported for a node name another live agent runs."""

    code = "node-taken"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "code": self.code}


class ReportNeeded(Conflict):
    """A short heartbeat the server cannot take: it does not hold the report the beat
    says nothing changed from (it restarted, took over, or the agent changed). The
    agent sends its whole report at once."""

    code = "report-needed"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "code": self.code}


class Unavailable(DinpError):
    """A service dinp depends on (Docker engine, database, Redis, dinp server) is unreachable."""

    exit_code = 6
    http_status = 503


class Contended(Unavailable):
    """The database ended a change in a deadlock with another one at the same time (a
    MySQL deadlock): the change was rolled back whole, and may be made again."""


class NotLeaderYet(Unavailable):
    """No server holds the leader lease at this moment (a takeover under way)."""


class _WaitEnded(DinpError):
    """A wait on an app that ended without it serving; `app` is what was seen last."""

    def __init__(self, message: str, *, hint: str | None = None,
                 app: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.app: dict[str, Any] = app or {}


class Timeout(_WaitEnded):
    exit_code = 7
    http_status = 504


class DeployFailed(_WaitEnded):
    """A release did not come up and its rollout was halted (or cancelled): the release
    before it serves."""

    exit_code = 9


class ConfigError(DinpError):
    exit_code = 2


class BuildFailed(DinpError):
    """`dinp build` could not make or push the image: a Dockerfile step failed, a base
    image is missing, the registry refused the push. The message names the failing step
    and ends with its last lines of output."""

    exit_code = 8
    http_status = 422


# The classes an HTTP status stands for when an answer comes back (see from_json).
_BY_STATUS: tuple[type[DinpError], ...] = (Unauthorized, Forbidden, NotFound, Conflict,
                                           Unavailable, Timeout)
# The classes a stream line may name.
_KINDS: dict[str, type[DinpError]] = {k.__name__: k for k in (
    DinpError, InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Timeout,
    ConfigError, BuildFailed)}
