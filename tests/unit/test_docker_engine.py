"""The one image reference parser (builds and the agent both pull with it) and the one way
to connect to an engine."""

from __future__ import annotations

import pytest

from dinp.docker_engine import DockerEngine, ImageRef, parse_image, split_ref
from dinp.errors import InvalidInput, Unavailable

DIGEST = "sha256:" + "5c0f" * 16


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest"),
    [
        ("hello", None, "hello", None, None),
        ("hello:1", None, "hello", "1", None),
        ("dinp-examples/hello:1", None, "dinp-examples/hello", "1", None),
        ("127.0.0.1:5000/web:1.4.2", "127.0.0.1:5000", "web", "1.4.2", None),
        ("host:5000/name:tag", "host:5000", "name", "tag", None),
        ("registry.internal/base/python:3.12", "registry.internal", "base/python", "3.12",
         None),
        ("localhost/app", "localhost", "app", None, None),
        ("[::1]:5000/app:v2", "[::1]:5000", "app", "v2", None),
        # A port and no tag: the `:` before the last `/` is not a tag.
        ("127.0.0.1:5000/dinp/war", "127.0.0.1:5000", "dinp/war", None, None),
        # Digests: the `:` inside the digest is not a tag either.
        (f"web@{DIGEST}", None, "web", None, DIGEST),
        (f"127.0.0.1:5000/web@{DIGEST}", "127.0.0.1:5000", "web", None, DIGEST),
        (f"host:5000/name:tag@{DIGEST}", "host:5000", "name", "tag", DIGEST),
    ],
)
def test_parse_image(ref: str, registry: str | None, repository: str, tag: str | None,
                     digest: str | None) -> None:
    image = parse_image(ref)
    assert image == ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)
    assert str(image) == ref  # nothing is lost or added


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("reg:5000/app:1", ("reg:5000/app", "1")),
        ("reg:5000/app", ("reg:5000/app", "latest")),
        ("app", ("app", "latest")),
        (f"app@{DIGEST}", ("app", DIGEST)),
        (f"reg:5000/app@{DIGEST}", ("reg:5000/app", DIGEST)),
        # A digest names one image: it wins over the tag beside it, as in the engine.
        (f"reg:5000/app:1@{DIGEST}", ("reg:5000/app", DIGEST)),
    ],
)
def test_split_ref_gives_what_pull_and_push_take(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_the_reference_by_digest_keeps_the_registry_port() -> None:
    assert parse_image("127.0.0.1:5000/web:3").at(DIGEST) == f"127.0.0.1:5000/web@{DIGEST}"


@pytest.mark.parametrize(
    "ref", ["", "app:", "reg:5000/", "reg:5000/app:", "app@", "app@sha256:", "app@1234",
            "/app", "a//b"],
)
def test_an_empty_part_is_refused(ref: str) -> None:
    with pytest.raises(InvalidInput, match="not an image reference"):
        parse_image(ref)


def test_an_unreachable_engine_says_where_and_which_section() -> None:
    with pytest.raises(Unavailable, match=r"engine at tcp://127\.0\.0\.1:1 is unreachable") as info:
        DockerEngine("tcp://127.0.0.1:1", timeout=2, section="agent")
    assert "docker_host in [agent]" in (info.value.hint or "")
