"""dinp: a small PaaS for web applications on Docker."""

from __future__ import annotations

__version__ = "0.1.0"
