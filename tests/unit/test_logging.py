"""Log lines of the roles: plain lines for a service's log, rich only on a terminal."""

from __future__ import annotations

import io
import logging
import re

import pytest

from dinp.output import setup_logging


def test_a_log_that_is_not_a_terminal_gets_one_plain_line_per_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """journald or a file gets `date time LEVEL message`, one line however long the
    message: rich's layout wrapped and padded each record to the width, and cost a
    5,000-node server about 1 ms a line."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging()
        logging.getLogger("dinp.test").info("reconcile: %s", "x" * 300)
        logging.getLogger("dinp.test").warning("node n1 is down")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    reconcile: x{300}",
                        lines[0]), lines[0]
    assert lines[1].endswith(" WARNING node n1 is down")
