"""The Dockerfile templates shipped in the package (src/dinp/build/templates/) and filling them.

Templates are files so that an operator can read exactly what an image is made of. A
template names its blanks `{{ name }}`; anything else, `$PORT` included, is left alone.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from importlib.resources.abc import Traversable

_BLANK = re.compile(r"{{\s*([a-z_]+)\s*}}")


def template_dir() -> Traversable:
    return resources.files("dinp.build").joinpath("templates")


def read(relpath: str) -> str:
    """The text of templates/<relpath>, e.g. `app/python.Dockerfile`."""
    node = template_dir()
    for part in relpath.split("/"):
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def render(text: str, **values: str) -> str:
    """Fill every `{{ name }}` blank; a blank with no value is a bug, so it raises."""
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"template blank {{{{ {name} }}}} has no value")
        return values[name]

    return _BLANK.sub(fill, text)


def files_under(relpath: str) -> dict[str, bytes]:
    """Every file below templates/<relpath>, by path relative to it (sorted)."""
    node = template_dir()
    for part in relpath.split("/"):
        node = node.joinpath(part)
    found: dict[str, bytes] = {}

    def walk(n: Traversable, prefix: str) -> None:
        for child in sorted(n.iterdir(), key=lambda c: c.name):
            path = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, path + "/")
            elif child.is_file():
                found[path] = child.read_bytes()

    if node.is_dir():
        walk(node, "")
    return found


def digest(*parts: str | bytes) -> str:
    """A short hash of a recipe's parts, for labels that say whether an image is current."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]
