"""Domain exceptions that carry a message a person can act on.

The core raises these; only the CLI entry point (and the API's error middleware) turns
them into output. Nothing here prints.
"""

from __future__ import annotations


class DinpError(Exception):
    """Base of every error meant for a person. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class InvalidInput(DinpError):
    """A value given by the user is wrong; `field` names which one."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(DinpError):
    exit_code = 3


class Conflict(DinpError):
    exit_code = 4


class WrongCluster(Conflict):
    """An agent reported for another cluster than the server's (or did not know it yet):
    the reply tells it the server's, and nothing of the report is recorded."""

    reason = "cluster"

    def __init__(self, message: str, *, cluster: str) -> None:
        super().__init__(message)
        self.cluster = cluster


class NodeTaken(Conflict):
    """A second agent process reported for a node name another live agent runs."""

    reason = "node-taken"


class Unauthorized(DinpError):
    exit_code = 5


class Unavailable(DinpError):
    """A service dinp depends on (Docker engine, database, Redis, dinp server) is unreachable."""

    exit_code = 6


class Timeout(DinpError):
    exit_code = 7


class ConfigError(DinpError):
    exit_code = 2


class BuildFailed(DinpError):
    """`dinp build` could not make or push the image: a Dockerfile step failed, a base
    image is missing, the registry refused the push. The message names the failing step
    and ends with its last lines of output."""

    exit_code = 8
