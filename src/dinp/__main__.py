"""`python -m dinp` runs the same CLI as the `dinp` executable."""

from __future__ import annotations

from dinp.cli import main

main()
