"""App types: how `dinp build` tells what an unpacked app is and what starts it.

Detection looks only at the top level of the app, first rule that matches wins:

1. `Dockerfile`                                      -> dockerfile (used as is)
2. `WEB-INF/` or exactly one `*.war`                 -> war
3. `package.json`, `server.js`                       -> node
4. `requirements.txt`, `pyproject.toml`, `*.py`      -> python
5. `*.php`                                           -> php
6. an executable ELF file                            -> binary
7. `index.html`                                      -> static

The command that starts the app is the `--cmd` flag, else the Procfile's `web:` line,
else the type's default (none for binary, and for python without app.py/main.py). It runs
under `/bin/sh -c`, so `$PORT` works in it; dinp sets PORT (default 8080).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dinp.errors import InvalidInput

TYPES = ("war", "binary", "python", "node", "php", "static", "dockerfile")
# The types whose base image `dinp build base-images` makes (dockerfile brings its own).
BASE_TYPES = ("war", "binary", "python", "node", "php", "static")
PROCFILE = "Procfile"
MAX_PROCFILE = 64 << 10
MAX_CMD = 4096
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.*?)\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_SYNTAX = re.compile(r"[;&|()`\n]|\$\(")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How to build one app: its type, the Dockerfile template and the start command."""

    type: str
    template: str  # a file name under templates/app/; "" for dockerfile
    command: str | None  # None: the image's own (dockerfile)


def detect(root: Path) -> str:
    """The type of the app in `root`, or InvalidInput saying what was found."""
    names = {p.name for p in root.iterdir()}
    files = {p.name for p in root.iterdir() if p.is_file() and not p.is_symlink()}
    if "Dockerfile" in files:
        return "dockerfile"
    if (root / "WEB-INF").is_dir() or len(war_files(root)) == 1:
        return "war"
    if names & {"package.json", "server.js"}:
        return "node"
    if files & {"requirements.txt", "pyproject.toml"} or any(n.endswith(".py") for n in files):
        return "python"
    if any(n.endswith(".php") for n in files):
        return "php"
    if executables(root):
        return "binary"
    if "index.html" in files:
        return "static"
    shown = ", ".join(sorted(names)[:12]) or "nothing"
    raise InvalidInput(
        "type",
        f"cannot tell what kind of app this is (its top level holds: {shown}); "
        f"give --type, one of {', '.join(TYPES)}",
    )


def war_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.war") if p.is_file() and not p.is_symlink())


def executables(root: Path) -> list[str]:
    """Top-level executable ELF files, by name."""
    found = []
    for p in sorted(root.iterdir()):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o111:
            with p.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(p.name)
    return found


def procfile_web(root: Path) -> str | None:
    """The `web:` command of the app's Procfile; None without a Procfile."""
    path = root / PROCFILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_PROCFILE:
        raise InvalidInput("Procfile", f"is larger than {MAX_PROCFILE} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("Procfile", "is not UTF-8 text") from exc
    web = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _PROCFILE_LINE.match(line)
        if m is None:
            raise InvalidInput("Procfile", f"{line.strip()!r} is not `name: command`")
        if m.group(1) == "web":
            web = m.group(2)
    if web is None:
        raise InvalidInput("Procfile", "has no `web:` line: add one, e.g. `web: ./server`")
    return check_command(web, "Procfile")


def check_command(cmd: str, field: str = "cmd") -> str:
    cmd = cmd.strip()
    if not cmd:
        raise InvalidInput(field, "the command is empty")
    if len(cmd) > MAX_CMD or "\n" in cmd or "\x00" in cmd:
        raise InvalidInput(field, f"the command must be one line of at most {MAX_CMD} "
                           "characters")
    return cmd


def default_command(app_type: str, root: Path) -> str | None:
    """What starts an app of this type when neither --cmd nor a Procfile says."""
    if app_type == "war":
        return "dinp-tomcat"
    if app_type == "static":
        return 'httpd -f -p "$PORT" -h /app'
    if app_type == "php":
        docroot = "/app/public" if (root / "public").is_dir() else "/app"
        return f'php -S "0.0.0.0:$PORT" -t {docroot}'
    if app_type == "node":
        main = _package_main(root)
        for candidate in (main, "server.js", "index.js", "app.js"):
            if candidate and (root / candidate).is_file():
                return f"node {candidate}"
        return None
    if app_type == "python":
        for candidate in ("app.py", "main.py"):
            if (root / candidate).is_file():
                return f"python3 {candidate}"
        return None
    return None


def _package_main(root: Path) -> str | None:
    try:
        data = json.loads((root / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    main = data.get("main") if isinstance(data, dict) else None
    if isinstance(main, str) and main and not main.startswith("/") and ".." not in main:
        return main
    return None


def plan(root: Path, *, app_type: str | None = None, cmd: str | None = None) -> Plan:
    """Decide the type (given or detected), the template and the start command."""
    if app_type is not None and app_type not in TYPES:
        raise InvalidInput("type", f"{app_type!r} is not one of {', '.join(TYPES)}")
    kind = app_type or detect(root)
    if kind == "dockerfile":
        if not (root / "Dockerfile").is_file():
            raise InvalidInput("type", "a dockerfile app needs a Dockerfile at its top level")
        return Plan(type=kind, template="", command=None)
    command = (check_command(cmd) if cmd is not None else procfile_web(root)
               or default_command(kind, root))
    if command is None:
        example = {"binary": "./server --port $PORT", "python": "python3 app.py",
                   "node": "node server.js"}.get(kind, "./start")
        raise InvalidInput(
            "cmd", f"a {kind} app needs a Procfile with a `web:` line or --cmd to say what "
            f"to start, e.g. `web: {example}`",
        )
    template = kind
    if kind == "python" and (root / "requirements.txt").is_file() and not (
        root / "vendor"
    ).is_dir():
        template = "python-pip"
    return Plan(type=kind, template=f"{template}.Dockerfile", command=command)


def cmd_instruction(command: str) -> str:
    """The Dockerfile CMD for `command`, run by /bin/sh so `$PORT` expands; a simple
    command is exec'd so that it gets the container's signals itself."""
    simple = not (_SHELL_SYNTAX.search(command) or _ASSIGNMENT.match(command)
                  or command.startswith("exec "))
    return json.dumps(["/bin/sh", "-c", f"exec {command}" if simple else command])
