"""The Docker engine and the registry as `dinp build` uses them: build with the engine's
own (legacy) builder while streaming its log, tag, push, pull. Connecting, and splitting
image references, are dinp.docker_engine's, shared with the agent.

Every failure comes out as a DinpError a person can act on: Unavailable when the engine
or the registry cannot be reached, BuildFailed naming the Dockerfile step that failed and
its last lines of output.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO, Any

import docker.errors
import requests.exceptions

from dinp.docker_engine import DockerEngine, split_ref
from dinp.errors import BuildFailed, InvalidInput, Unavailable

Log = Callable[[str], None]
# Long steps (apt-get of a JDK) can be silent for a while; the engine's stream is the
# only sign of life, so reads wait this long.
ENGINE_TIMEOUT = 900
OUTPUT_LINES = 25
_REGISTRY = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "dial tcp",
                "no route to host", "network is unreachable", "server gave http response")


def no_log(line: str) -> None:
    """The default log: drop the line."""


def check_registry(value: str) -> str:
    """A registry is host[:port], without a scheme or a path."""
    if not value or not _REGISTRY.fullmatch(value):
        raise InvalidInput("registry", f"{value!r} is not host[:port] (e.g. 127.0.0.1:5000)")
    return value


class Engine(DockerEngine):
    """One connection to a Docker engine, used by a build from start to end."""

    def __init__(self, docker_host: str = "") -> None:
        super().__init__(docker_host, timeout=ENGINE_TIMEOUT, section="build")

    # -- images --------------------------------------------------------------------------

    def image(self, ref: str) -> dict[str, Any] | None:
        """The engine's inspect answer for `ref`, None if it has no such image."""
        with self.errors():
            try:
                info: dict[str, Any] = self.api.inspect_image(ref)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return None
        return info

    def labels(self, ref: str) -> dict[str, str] | None:
        info = self.image(ref)
        if info is None:
            return None
        return dict((info.get("Config") or {}).get("Labels") or {})

    def tag(self, image_id: str, ref: str) -> None:
        repo, tag = split_ref(ref)
        with self.errors():
            try:
                self.api.tag(image_id, repo, tag, force=True)
            except docker.errors.APIError as exc:
                raise BuildFailed(f"cannot tag {ref}: {exc.explanation or exc}") from exc

    def untag(self, ref: str) -> None:
        """Remove the tag `ref` (and the image if nothing else holds it); never raises."""
        with contextlib.suppress(docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            self.api.remove_image(ref, noprune=False)

    def remote_digest(self, ref: str) -> str | None:
        """The digest the registry holds for `ref`, None if it holds none."""
        with self.errors():
            try:
                info = self.api.inspect_distribution(ref)  # type: ignore[no-untyped-call]
            except docker.errors.APIError:
                return None
        digest = (info.get("Descriptor") or {}).get("digest")
        return str(digest) if digest else None

    def pull(self, ref: str, log: Log = no_log) -> None:
        repo, tag = split_ref(ref)
        with self.errors():
            try:
                stream = self.api.pull(repo, tag=tag, stream=True, decode=True)
                _follow(stream, log, action=f"pull {ref}")
            except docker.errors.APIError as exc:
                raise _registry_error(f"pull {ref}", str(exc.explanation or exc)) from exc

    def push(self, ref: str, log: Log = no_log) -> str:
        """Push `ref`; its digest in the registry."""
        repo, tag = split_ref(ref)
        with self.errors():
            try:
                stream = self.api.push(repo, tag=tag, stream=True, decode=True)
                aux = _follow(stream, log, action=f"push {ref}")
            except docker.errors.APIError as exc:
                raise _registry_error(f"push {ref}", str(exc.explanation or exc)) from exc
        digest = aux.get("Digest")
        if not digest:
            digest = self.remote_digest(ref)
        if not digest:
            raise BuildFailed(f"push {ref}: the registry did not report a digest")
        return str(digest)

    # -- builds --------------------------------------------------------------------------

    def build(self, context: IO[bytes], *, labels: dict[str, str], log: Log = no_log,
              buildargs: dict[str, str] | None = None) -> str:
        """Build from an uncompressed tar `context` (with its Dockerfile at the top); the
        new image's id. The image gets no tag here: a failed build leaves none behind."""
        with self.errors():
            try:
                stream = self.api.build(
                    fileobj=context, custom_context=True, rm=True, forcerm=True,
                    decode=True, labels=labels, buildargs=buildargs or {}, pull=False,
                )
                return _follow_build(stream, log)
            except docker.errors.APIError as exc:
                raise BuildFailed(f"the engine refused the build: {exc.explanation or exc}",
                                  hint=_hint(str(exc))) from exc


def registry_reachable(registry: str, timeout: float = 3.0) -> None:
    """Fail fast, before any work, when nothing listens where the registry should be."""
    host, sep, port = registry.rpartition(":")
    if not sep or not port.isdigit():
        host, ports = registry, [443, 80]
    else:
        ports = [int(port)]
    host = host.strip("[]")
    last: OSError | None = None
    for p in ports:
        try:
            socket.create_connection((host, p), timeout=timeout).close()
            return
        except OSError as exc:
            last = exc
    raise Unavailable(
        f"the registry {registry} is unreachable: {last}",
        hint="Is it running? Check --registry (registry in [build], DINP_REGISTRY), or "
        "build with --no-push.",
    )


def _registry_error(action: str, message: str) -> Exception:
    if any(s in message.lower() for s in _UNREACHABLE):
        return Unavailable(f"{action}: the registry is unreachable: {message}",
                           hint="Is the registry running, and is it an insecure registry "
                           "of the engine if it speaks plain HTTP?")
    return BuildFailed(f"{action} failed: {message}", hint=_hint(message))


def _hint(message: str) -> str | None:
    lower = message.lower()
    if "manifest unknown" in lower or "not found" in lower or "does not exist" in lower:
        return "A base image is missing: run `dinp build base-images`, or set base_<type> " \
               "in [build] of dinp.toml."
    return None


def _follow(stream: Iterable[dict[str, Any]], log: Log, *, action: str) -> dict[str, Any]:
    """Read a pull/push progress stream to its end; its last `aux` record."""
    aux: dict[str, Any] = {}
    shown: set[tuple[str, str]] = set()
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            raise _registry_error(action, str(detail.get("message") or chunk.get("error")))
        if "aux" in chunk and isinstance(chunk["aux"], dict):
            aux = chunk["aux"]
        status = chunk.get("status")
        if not status or chunk.get("progressDetail"):
            continue  # progress ticks: one line per layer and state is enough
        key = (str(chunk.get("id", "")), str(status))
        if key not in shown:
            shown.add(key)
            log(f"{chunk['id']}: {status}" if chunk.get("id") else str(status))
    return aux


def _follow_build(stream: Iterable[dict[str, Any]], log: Log) -> str:
    """Read a legacy build's stream, passing each line to `log`; the image id. A failure
    raises BuildFailed with the step it happened in and that step's last output."""
    step = ""
    output: deque[str] = deque(maxlen=OUTPUT_LINES)
    image_id = ""
    pending = ""
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            if pending.strip():
                output.append(_ANSI.sub("", pending).rstrip("\r"))
            detail = chunk.get("errorDetail") or {}
            message = _ANSI.sub("", str(detail.get("message") or chunk.get("error"))).strip()
            if len(message) > 300:
                message = message[:300] + "…"
            where = f"build failed at step {step}" if step else "build failed"
            tail = "\n".join(f"  | {line}" for line in output)
            raise BuildFailed(f"{where}\n{message}" + (f"\n{tail}" if tail else ""),
                              hint=_hint(message))
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
        text = chunk.get("stream")
        if text is None and chunk.get("status"):
            text = f"{chunk.get('id', '')} {chunk['status']}".strip() + "\n"
        if not text:
            continue
        pending += str(text)
        *lines, pending = pending.split("\n")
        for raw in lines:
            line = _ANSI.sub("", raw).rstrip("\r")
            m = re.match(r"^Step (\d+/\d+) : (.*)$", line)
            if m:
                instruction = m.group(2)
                step = f"{m.group(1)}: " + (
                    instruction if len(instruction) <= 160 else instruction[:160] + "…")
                output.clear()
            elif line.startswith("Successfully built "):
                image_id = image_id or line.split()[-1]
            elif not line.startswith((" ---> ", "Removing intermediate container ")):
                output.append(line)
            log(line)
    if pending.strip():
        log(_ANSI.sub("", pending).rstrip("\r"))
    if not image_id:
        raise BuildFailed("the engine ended the build without an image id",
                          hint="\n".join(output) or None)
    return image_id
