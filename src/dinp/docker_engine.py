"""The Docker engine as every part of dinp reaches it: one way to connect, one translation
of an unreachable engine into an error a person can act on, and one parser of image
references.

The agent's containers (container.py) and the builds (build/engine.py) both start from a
DockerEngine; they differ only in how long a call may wait (a build's stream can be
silent for minutes, an agent must notice a stuck engine) and in the config section their
error points at.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

import docker
import docker.errors
import requests.exceptions

from dinp.errors import InvalidInput, Unavailable

_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")


def engine_address(base_url: str = "") -> str:
    """Where the Docker SDK will connect, for messages."""
    return base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@contextlib.contextmanager
def unreachable_engine(where: str, *, section: str) -> Iterator[None]:
    """An engine that cannot be reached becomes one message saying where to look; an
    error the engine itself answered (a bad request, a missing image) passes through."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if isinstance(exc, docker.errors.APIError) and exc.response is not None:
            raise
        raise Unavailable(
            f"the Docker engine at {where} is unreachable: {exc}",
            hint=f"Is dockerd running? Start it, or set docker_host in [{section}] "
            "(DINP_DOCKER_HOST).",
        ) from exc


class DockerEngine:
    """A connection to one Docker engine, checked with a ping.

    `base_url` empty means the environment's (`DOCKER_HOST`, else the local socket);
    `timeout` is how long, in seconds, one call may wait for the engine; `section` is the
    config section that names the engine (docker_host), for the hint when it is unreachable;
    `max_pool_size` the connections kept open to it (a reader of many logs at once needs
    more than the SDK's 10).
    """

    def __init__(self, base_url: str = "", *, timeout: int, section: str,
                 max_pool_size: int = 10) -> None:
        self.where = engine_address(base_url)
        self.section = section
        with self.errors():
            self.client = (docker.DockerClient(base_url=base_url, timeout=timeout,
                                               max_pool_size=max_pool_size)
                           if base_url else docker.from_env(timeout=timeout,
                                                            max_pool_size=max_pool_size))
            self.client.ping()
        self.api = self.client.api

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Wrap calls to the engine: an unreachable engine raises Unavailable."""
        return unreachable_engine(self.where, section=self.section)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- image references --------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """An image reference, `[registry/]repository[:tag][@digest]`, split as the engine
    reads it: the first path component is a registry only if it has a `.` or a `:`
    (a port), or is `localhost`; a `:` is a tag only after the last `/`."""

    registry: str | None  # host[:port]; None: the engine's default (Docker Hub)
    repository: str  # the path below the registry: `dinp/python`, `hello`
    tag: str | None
    digest: str | None  # `sha256:…`

    @property
    def name(self) -> str:
        """What the engine's API calls the repository: `[registry/]repository`."""
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    @property
    def version(self) -> str:
        """What to pull or push: the digest if there is one (it names exactly one image,
        so a tag beside it is ignored, as the engine does), else the tag, else latest."""
        return self.digest or self.tag or "latest"

    def at(self, digest: str) -> str:
        """The immutable reference `[registry/]repository@digest`."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        return (self.name + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse_image(ref: str) -> ImageRef:
    """Split `ref`; InvalidInput when a part is empty (`app:`, `@sha256`, `reg:5000/`).
    It checks the shape, not every character: validation.image() does that for what
    users give."""
    rest, at, digest = ref.partition("@")
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1:]
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry: str | None = first
    else:
        registry, path = None, rest
    if (not path or path.startswith("/") or path.endswith("/") or "//" in path
            or tag == "" or (at and not _DIGEST.fullmatch(digest))):
        raise InvalidInput("image", f"{ref!r} is not an image reference "
                           "([registry/]name[:tag][@sha256:digest])")
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest or None)


def split_ref(ref: str) -> tuple[str, str]:
    """The (repository, tag) pair the engine's pull and push take: `reg:5000/app:1` ->
    (`reg:5000/app`, `1`); `app@sha256:…` -> (`app`, `sha256:…`); no tag -> `latest`."""
    image = parse_image(ref)
    return image.name, image.version
