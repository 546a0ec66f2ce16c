"""Everything the CLI prints: rich tables for people, JSON for scripts, logs to stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def setup_logging(*, verbose: bool = False, quiet: bool = False, json_logs: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if json_logs:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False,
                              log_time_format="%H:%M:%S")
    else:
        # A service's log (journald, a file, a pipe): one plain line per record, with the
        # date. Rich lays each record out as a table, wrapped and padded to the width;
        # that cost a 5,000-node server about 1 ms a line, on its event loop.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    # acme: certbot's library logs every ACME request and answer at DEBUG.
    for noisy in ("urllib3", "docker", "asyncio", "aiohttp.access", "acme"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage()})


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
          keep: Sequence[str] = (), optional: Sequence[str] = ()) -> None:
    """A table that fits the terminal (80 columns too) without cutting what people copy:
    columns in `keep` (image references, URLs, addresses) are never wrapped or cut;
    columns in `optional` are left out, in that order, while the rest does not fit; any
    other cell that is still too long wraps, nothing is cut with an ellipsis."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    shown = list(range(len(columns)))

    def width(indexes: list[int]) -> int:  # the table's natural width, with its borders
        return sum(max([len(columns[i]), *(len(r[i]) for r in cells)]) + 3
                   for i in indexes) + 1

    for name in optional:
        if width(shown) <= console.width:
            break
        shown.remove(columns.index(name))
    t = Table(title=title, title_justify="left", header_style="bold")
    for i in shown:
        copied = columns[i] in keep
        t.add_column(columns[i], no_wrap=copied, overflow="fold",
                     min_width=max((len(r[i]) for r in cells), default=0) if copied else None)
    for row in cells:  # plain text: a cell (a CA's error, say) is never read as markup
        t.add_row(*(Text(row[i]) for i in shown))
    console.print(t)


def duration(seconds: float | None) -> str | None:
    """45s, 12m, 3h05m, 2d04h: an uptime or an age, short enough for a column."""
    if seconds is None:
        return None
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def short_image(image: str) -> str:
    """An image reference with its digest shortened to 12 hex digits, as `docker`
    shows image ids (the full reference is in `--json` and `dinp app show`)."""
    name, at, digest = image.partition("@sha256:")
    return f"{name}@sha256:{digest[:12]}" if at and len(digest) > 12 else image


def error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(f"[dim]{escape(hint)}[/]", highlight=False)
