"""An app's custom domains with their certificates, as `dinp app domains list` and
`dinp app show` print them: one table, so the two never tell it differently."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from dinp.output import console, table


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "-"


def print_domains(rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """The table, then a line in red for each certificate that needs someone to look
    (failed, expiring soon, renewals failing): in a table cell it could be wrapped out
    of sight."""
    table(title, ["DOMAIN", "TLS", "EXPIRES", "ADDED", "CERTIFICATE"], [
        (r["domain"], r["certificate"]["state"] if r["certificate"] else "off",
         _when(r["certificate"]["not_after"]) if r["certificate"] else "-",
         _when(r["created_at"]),
         r["certificate"]["summary"] if r["certificate"] else "-")
        for r in rows], keep=("DOMAIN",), optional=("ADDED", "EXPIRES"))
    for r in rows:
        said = (r["certificate"] or {}).get("attention")
        if said:
            console.print(f"[red]{escape(r['domain'])}:[/] {escape(said)}")


def https_settings(app: dict[str, Any]) -> str:
    """The app's HTTPS policy in words."""
    return (f"https: redirect {'on' if app['https_redirect'] else 'off'}, HSTS "
            + (f"{app['hsts']} s" if app["hsts"] else "off"))
