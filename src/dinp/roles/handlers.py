"""What every API handler shares: the server it serves, reading a JSON body, and refusing
fields it does not know. (The API's handlers are in `api.py` and `api_accounts.py`.)"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dinp.errors import InvalidInput
from dinp.roles.server import Server

SERVER_KEY = web.AppKey("server", Server)


def srv(request: web.Request) -> Server:
    return request.app[SERVER_KEY]


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, LookupError, RecursionError) as exc:  # bad JSON, charset, nesting
        raise InvalidInput("body", f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body", "expected a JSON object")
    return data


def known_fields(data: dict[str, Any], known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")


def flag(data: dict[str, Any], name: str) -> bool:
    """A true/false field of a body, false when absent; anything else is refused (a string
    "false" would otherwise read as true)."""
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(name, "expected true or false")
    return value
