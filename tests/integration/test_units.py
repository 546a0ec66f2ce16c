"""The systemd units in deploy/systemd pass `systemd-analyze verify`, and start what they
say: each ExecStart is a dinp role command that exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import DINP

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ROLES = {"dinp-server.service": ["server"], "dinp-agent.service": ["agent"],
         "dinp-router.service": ["router"], "dinp-build.service": ["build", "serve"]}


def test_there_is_a_unit_for_each_role() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(ROLES)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit, role in ROLES.items():
        text = (UNITS / unit).read_text()
        assert f"ExecStart=/usr/local/bin/dinp {' '.join(role)} --config " in text, unit
        # Verified where dinp is installed here (the docs link it to /usr/local/bin).
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/dinp", DINP))
    result = subprocess.run([analyze, "verify", *sorted(str(p) for p in
                                                       tmp_path.glob("*.service"))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for role in ROLES.values():  # what they start exists and takes --config
        shown = subprocess.run([DINP, *role, "--help"], capture_output=True, text=True)
        assert shown.returncode == 0 and "--config" in shown.stdout, role
