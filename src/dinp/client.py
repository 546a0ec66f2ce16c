"""The API client the CLI uses: where the server is, which token, and error translation.

The server URL and token come from flags, then DINP_SERVER / DINP_TOKEN, then the file
`dinp login` (or `dinp up`) wrote in the user's config directory.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinp.const import API_PREFIX
from dinp.errors import DinpError, Unauthorized, Unavailable

DEFAULT_SERVER = "http://127.0.0.1:7070"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dinp"


def credentials_path() -> Path:
    return config_dir() / "cli.json"


def save_credentials(server: str, token: str) -> Path:
    """Remember the server and token for later CLI calls, in a file only the user can
    read or write (0600, in a 0700 directory), replaced whole so it is never half
    written."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # even if it existed with other modes
        f.write(json.dumps({"server": server, "token": token}, indent=2) + "\n")
    tmp.replace(path)
    return path


def forget_token() -> Path | None:
    """Remove the saved token (the server stays, for the next `dinp login`)."""
    saved = load_credentials()
    if "token" not in saved:
        return None
    return save_credentials(saved.get("server", DEFAULT_SERVER), "")


def load_credentials() -> dict[str, str]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DinpError(f"cannot read {path}: {exc}", hint="Run `dinp login` again.") from exc
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


@dataclass
class Client:
    server: str
    token: str
    timeout: float = 30.0

    @classmethod
    def from_env(cls, server: str | None = None, token: str | None = None) -> Client:
        saved = load_credentials()
        return cls(
            server=(server or os.environ.get("DINP_SERVER") or saved.get("server")
                    or DEFAULT_SERVER).rstrip("/"),
            token=token or os.environ.get("DINP_TOKEN") or saved.get("token") or "",
        )

    @property
    def servers(self) -> list[str]:
        """`server` may name several, comma-separated: any of them forwards to the one
        that leads, so the next is tried when one cannot be reached."""
        return [s.strip().rstrip("/") for s in self.server.split(",") if s.strip()] or [
            self.server]

    def request(self, method: str, path: str, body: Any = None, *,
                timeout: float | None = None) -> Any:
        """Call the API; return decoded JSON or raise the DinpError the server described.
        A server that cannot be reached is passed over for the next one, if the request
        cannot have been made there (refused connection), or if it is a read."""
        servers = self.servers
        for n, server in enumerate(servers):
            try:
                return self._request(server, method, path, body, timeout)
            except _Unreachable as exc:
                if n + 1 == len(servers) or not (exc.refused or method == "GET"):
                    raise Unavailable(
                        f"dinp server at {server} is unreachable: {exc.reason}",
                        hint="Is it running? Set DINP_SERVER or run `dinp login URL`.",
                    ) from None
        raise AssertionError("no server")  # servers is never empty

    def _request(self, server: str, method: str, path: str, body: Any,
                 timeout: float | None) -> Any:
        # Names come from users: quote them so "my app" is a 404, not a broken request.
        url = f"{server}{API_PREFIX}{urllib.parse.quote(path, safe='/?=&')}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (ValueError, http.client.HTTPException) as exc:
            raise DinpError(
                f"{server} did not answer like a dinp server: {exc}",
                hint="Check DINP_SERVER (or `dinp login URL`): it must be the API's URL.",
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Unreachable(reason, refused=isinstance(reason, ConnectionRefusedError)
                               or isinstance(exc, ConnectionRefusedError)) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def stream(self, path: str, *, timeout: float | None = None) -> Iterator[Any]:
        """GET an NDJSON answer: each line decoded as it arrives (`timeout`: the longest
        silence between two lines), errors as `request` raises them."""
        url = f"{self.server}{API_PREFIX}{urllib.parse.quote(path, safe='/?=&')}"
        req = urllib.request.Request(url, method="GET")
        req.add_header("Accept", "application/x-ndjson")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(req, timeout=timeout or self.timeout) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (ValueError, http.client.HTTPException) as exc:
            raise DinpError(f"{self.server} broke off the stream: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"dinp server at {self.server} is unreachable: {reason}",
                              hint="Is it running? Set DINP_SERVER or run `dinp login URL`.",
                              ) from None

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


class _Unreachable(Exception):
    def __init__(self, reason: object, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused  # the connection was refused: nothing was sent


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the token along to wherever the
    server points, another host included."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        raise DinpError(
            f"{req.full_url} answered with a redirect ({code}) to {newurl}; the token is "
            "sent only to the server configured",
            hint="Set DINP_SERVER (or `dinp login URL`) to the API's own URL.")


_OPENER = urllib.request.build_opener(_NoRedirects)


def _api_error(exc: urllib.error.HTTPError) -> DinpError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    error = DinpError.from_json(exc.code, body)
    if isinstance(error, Unauthorized) and not error.hint:
        error.hint = "Run `dinp login`, or set DINP_TOKEN."
    return error
