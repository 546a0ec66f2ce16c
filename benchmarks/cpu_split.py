"""Where a proxy's CPU goes, by the library it runs in: perf samples of its processes,
grouped into OpenSSL, the C library, the kernel and the proxy's own code.

It answers a question req/s cannot: how much of a request is the TLS library's and the
kernel's (the same for any proxy on that OpenSSL and that kernel), and so how much room a
proxy's own code has against another. `benchmarks/router.py --profile` prints it per test.

perf records with the `cpu-clock` software event: it works in virtual machines that give
no hardware counters, at the price of samples that land where interrupts are enabled again
(`_raw_spin_unlock_irqrestore` in the kernel's share).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# The groups, in the order shown; a DSO that matches none is the proxy's own code.
GROUPS = (
    ("OpenSSL", re.compile(r"^lib(crypto|ssl)\.so")),
    ("C library", re.compile(r"^(libc|libm|ld-linux[\w-]*)\.so")),
    ("kernel", re.compile(r"^\[(kernel\.kallsyms|vdso|vsyscall)\]$")),
)
OWN = "own code"
COLUMNS = (*(name for name, _ in GROUPS), OWN)

_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def record(pids: list[int], seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling `pids` for `seconds` (wait for the returned process)."""
    perf = shutil.which("perf") or "perf"
    return subprocess.Popen(
        [perf, "record", "-q", "-e", "cpu-clock", "-F", "999", "-o", str(out),
         "-p", ",".join(map(str, pids)), "--", "sleep", f"{seconds:g}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shares(data: Path) -> dict[str, float]:
    """The share of the samples in each group (0..1), from a perf.data file."""
    perf = shutil.which("perf") or "perf"
    report = subprocess.run(
        [perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
        check=True, capture_output=True, text=True).stdout
    return group(report)


def group(report: str) -> dict[str, float]:
    """`perf report --sort dso` lines ("  42.29%  libcrypto.so.3") summed into COLUMNS."""
    totals = dict.fromkeys(COLUMNS, 0.0)
    for line in report.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        percent, dso = float(match.group(1)), Path(match.group(2)).name
        name = next((n for n, pattern in GROUPS if pattern.match(dso)), OWN)
        totals[name] += percent / 100
    whole = sum(totals.values())
    if whole <= 0:
        raise RuntimeError(f"perf recorded no samples:\n{report}")
    return {name: share / whole for name, share in totals.items()}
