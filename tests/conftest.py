"""Rules for the whole suite.

In CI (`CI` set to anything but empty or `false`), a skipped integration or end-to-end
test is a failure: those tests skip only when a service is missing (MariaDB, Redis, the
Docker engine, a tool), and in CI that means the setup forgot it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.support import FAULT_PROPERTY, remove_test_network

IN_CI = os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and {"integration", "e2e"} & set(item.path.parts):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every service must be there: {reason}"


@pytest.fixture(scope="session", autouse=True)
def _test_network() -> Iterator[None]:
    """The session's app network (tests.support.TEST_NETWORK) goes when the session ends;
    the containers on it were removed by the tests' own teardown."""
    yield
    remove_test_network()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = [value for reports in terminalreporter.stats.values() for report in reports
            if getattr(report, "when", "") == "call"
            for name, value in getattr(report, "user_properties", ())
            if name == FAULT_PROPERTY]
    if rows:
        terminalreporter.section("tried under faults (tests/e2e/test_faults.py)")
        for fault, failed, recovery in rows:
            terminalreporter.write_line(f"{fault:<46} failed {failed:<12} {recovery}")
