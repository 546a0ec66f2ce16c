"""Unpacking what users hand `dinp build`: a .tar.gz/.tgz/.tar, a .war, or a directory.

An archive may come from anyone (a CI job, an upload to a build service), so it is read
as hostile. Every entry is checked as the stream is read, before anything is written:

- names must be relative and free of `..`;
- only regular files, directories and symbolic links whose target stays inside are
  accepted: hard links, device files, FIFOs and links with absolute targets are refused;
- a file is written only if the directory it lands in resolves inside the destination,
  and never through a link (O_NOFOLLOW); when everything is unpacked, every link is
  resolved once more, so the order of entries cannot be used to point one outside;
- the bytes written and the number of entries are counted while reading, and so are the
  bytes of metadata (tar headers, long names): a gzip bomb stops at the limit, not after.

Files get modes 0644/0755 (the executable bit kept, setuid and the like dropped) and the
owner of the process; nothing is written outside `dest`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol

from dinp.errors import InvalidInput

# Small enough that what tarfile reads ahead never looks like metadata (see _Budget).
CHUNK = 64 << 10
# Metadata an archive may hold besides file contents: tar headers and padding, long
# names, pax records. Generous for real archives, small enough that a bomb hidden in a
# header is caught long before memory matters.
METADATA_ALLOWANCE = 1 << 20
METADATA_PER_ENTRY = 8 << 10

Kind = Literal["tar", "war", "dir"]


class Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class BadArchive(InvalidInput):
    """The archive is corrupt, truncated, too large, or holds an entry dinp refuses."""

    def __init__(self, message: str) -> None:
        super().__init__("archive", message)


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_bytes: int = 1 << 30
    max_files: int = 20000


@dataclass(frozen=True, kw_only=True)
class Unpacked:
    root: Path  # the app's files: `dest`, or its only subdirectory
    kind: Kind
    sha256: str  # of the archive file; of the contents for a directory
    files: int
    bytes: int


def suffix_kind(path: Path) -> Kind | None:
    """What `path` is by its name (or for a directory); None if dinp does not take it."""
    name = path.name.lower()
    if path.is_dir():
        return "dir"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if name.endswith(".war"):
        return "war"
    return None


def check_source(source: Path) -> Kind:
    """What `source` is; InvalidInput if it is missing or of a kind dinp does not take."""
    if not source.exists():
        raise InvalidInput("path", f"{source} does not exist")
    kind = suffix_kind(source)
    if kind is None:
        raise InvalidInput(
            "path", f"{source} is not a .tar.gz, .tgz, .tar, .war or a directory"
        )
    return kind


def unpack(source: Path, dest: Path, limits: Limits) -> Unpacked:
    """Unpack `source` into the empty or absent directory `dest`, under `limits`."""
    kind = check_source(source)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    budget = _Budget(limits)
    if kind == "dir":
        digest = hashlib.sha256()
        _copy_tree(source, dest, PurePosixPath(), budget, digest)
        sha256 = digest.hexdigest()
    else:
        sha256 = file_sha256(source)
        if kind == "tar":
            _unpack_tar(source, dest, budget)
        else:
            unpack_zip(source, dest, budget)
        _check_links(dest)
    return Unpacked(root=dest if kind == "war" else app_root(dest), kind=kind, sha256=sha256,
                    files=budget.entries, bytes=budget.written)


def unpack_war(source: Path, dest: Path, limits: Limits) -> None:
    """Unpack a .war (a zip) found inside an archive into `dest`, under `limits`."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    unpack_zip(source, dest, _Budget(limits))
    _check_links(dest)


def app_root(dest: Path) -> Path:
    """`dest`, or its only entry when that is a directory (`tar czf app.tgz app/`) other
    than a web app's WEB-INF/ (a war of classes only)."""
    entries = list(dest.iterdir())
    if (len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink()
            and entries[0].name not in ("WEB-INF", "META-INF")):
        return entries[0]
    return dest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- accounting ----------------------------------------------------------------------------

class _Budget:
    """Counts entries, bytes written and bytes read while unpacking; raises at a limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries = 0
        self.written = 0
        self.read = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise BadArchive(
                f"it holds more than {self.limits.max_files} entries (the limit, "
                "max_files in [build])"
            )

    def check_size(self, size: int, name: str) -> None:
        if self.written + size > self.limits.max_bytes:
            raise BadArchive(f"it expands past {_mb(self.limits.max_bytes)} (the limit, "
                             f"max_unpacked_mb in [build]) at {name}")

    def wrote(self, n: int, name: str) -> None:
        self.check_size(n, name)
        self.written += n

    def consumed(self, n: int) -> None:
        self.read += n
        metadata = self.read - self.written
        if metadata > METADATA_ALLOWANCE + METADATA_PER_ENTRY * self.entries:
            raise BadArchive(f"it holds {_mb(metadata)} of headers and padding besides "
                             "its files: not a plain archive of an app")


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MB" if n >= 1 << 20 else f"{n} bytes"


class _CountingReader:
    """A file-like reader that reports every byte it passes on to the budget."""

    def __init__(self, raw: IO[bytes], budget: _Budget) -> None:
        self.raw = raw
        self.budget = budget

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(CHUNK if n is None or n < 0 else min(n, CHUNK))
        self.budget.consumed(len(data))
        return data


# -- names and paths -----------------------------------------------------------------------

def _safe_name(name: str) -> PurePosixPath:
    """An entry's name as a relative path; refuses absolute names and `..`."""
    if "\x00" in name:
        raise BadArchive(f"entry {name!r} has a NUL byte in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BadArchive(f"entry {name!r} has an absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise BadArchive(f"entry {name!r} has '..' in its path")
    return path


def _inside(dest: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    base = os.path.realpath(dest)
    return real == base or real.startswith(base + os.sep)


def _check_link_target(name: PurePosixPath, target: str) -> None:
    """A link must be relative and, read lexically from where it sits, stay inside."""
    if target.startswith("/") or "\x00" in target:
        raise BadArchive(f"link {name} points outside the archive (to {target})")
    depth = len(name.parts) - 1
    for part in PurePosixPath(target).parts:
        depth = depth - 1 if part == ".." else depth if part == "." else depth + 1
        if depth < 0:
            raise BadArchive(f"link {name} points outside the archive (to {target})")


def _prepare(dest: Path, name: PurePosixPath) -> Path:
    """The path of entry `name` under `dest`, with its parent directories made, after
    checking that the parent resolves inside `dest` (no write goes through a link out)."""
    target = dest.joinpath(*name.parts)
    parent = target.parent
    if not _inside(dest, parent):
        raise BadArchive(f"entry {name} would be written through a link that points outside")
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not _inside(dest, parent):
        raise BadArchive(f"entry {name} would be written through a link that points outside")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()  # a later entry of the same name replaces it, as tar does
    return target


def _write(target: Path, src: Readable, size: int | None, mode: int, name: PurePosixPath,
           budget: _Budget) -> None:
    if size is not None:
        budget.check_size(size, str(name))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o755 if mode & 0o111 else 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            budget.wrote(len(chunk), str(name))
            out.write(chunk)


def _mkdir(dest: Path, name: PurePosixPath) -> None:
    if not name.parts:
        return
    target = dest.joinpath(*name.parts)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise BadArchive(f"directory {name} clashes with a file or link of the same name")
    if not target.exists():
        _prepare(dest, name)
        target.mkdir(mode=0o755, exist_ok=True)


def _symlink(dest: Path, name: PurePosixPath, link_target: str) -> None:
    _check_link_target(name, link_target)
    target = _prepare(dest, name)
    if target.is_dir():
        raise BadArchive(f"link {name} clashes with a directory of the same name")
    os.symlink(link_target, target)
    if not _inside(dest, target):
        raise BadArchive(f"link {name} points outside the archive (to {link_target})")


def _check_links(dest: Path) -> None:
    """Once all is unpacked, every link must still resolve inside `dest`."""
    for dirpath, dirnames, filenames in os.walk(dest):
        for entry in (*dirnames, *filenames):
            path = Path(dirpath, entry)
            if path.is_symlink() and not _inside(dest, path):
                rel = path.relative_to(dest)
                raise BadArchive(f"link {rel} points outside the archive "
                                 f"(to {os.readlink(path)})")


# -- tar -------------------------------------------------------------------------------------

def _unpack_tar(source: Path, dest: Path, budget: _Budget) -> None:
    gz = not source.name.lower().endswith(".tar")
    try:
        with source.open("rb") as raw, _decompress(raw, gz) as stream:
            counted = _CountingReader(stream, budget)
            with tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    _extract_member(tar, member, dest, budget)
            # Read to the end: a truncated gzip is noticed only there, and a bomb of
            # padding after the last entry is stopped by the budget.
            while counted.read(CHUNK):
                pass
    except BadArchive:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise BadArchive(f"{source.name} is corrupt or truncated: {_reason(exc)}") from exc


@contextlib.contextmanager
def _decompress(raw: IO[bytes], gz: bool) -> Iterator[IO[bytes]]:
    if not gz:
        yield raw
        return
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        yield stream  # type: ignore[misc]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return {"empty file": "it is empty or not a tar archive",
            "unexpected end of data": "it ends in the middle of an entry"}.get(text, text)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                    budget: _Budget) -> None:
    budget.entry()
    name = _safe_name(member.name)
    try:
        if member.isdir():
            _mkdir(dest, name)
        elif member.isreg():
            if not name.parts:
                raise BadArchive(f"entry {member.name!r} has no name")
            budget.check_size(member.size, str(name))
            src = tar.extractfile(member)
            assert src is not None  # a regular file always has a reader
            _write(_prepare(dest, name), src, member.size, member.mode, name, budget)
        elif member.issym():
            _symlink(dest, name, member.linkname)
        elif member.islnk():
            raise BadArchive(f"entry {name} is a hard link (to {member.linkname}); dinp "
                             "accepts regular files, directories and relative symbolic links")
        elif member.ischr() or member.isblk():
            raise BadArchive(f"entry {name} is a device file")
        elif member.isfifo():
            raise BadArchive(f"entry {name} is a FIFO")
        else:
            raise BadArchive(f"entry {name} has an entry type dinp does not accept "
                             f"({member.type!r})")
    except OSError as exc:
        raise BadArchive(f"cannot unpack {name}: {exc.strerror or exc}") from exc


# -- zip (.war) ----------------------------------------------------------------------------

def unpack_zip(source: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                budget.entry()
                name = _safe_name(info.filename)
                mode = info.external_attr >> 16
                try:
                    if info.is_dir():
                        _mkdir(dest, name)
                    elif stat.S_ISLNK(mode):
                        raise BadArchive(f"entry {name} is a link; a .war holds files only")
                    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                        raise BadArchive(f"entry {name} is not a regular file")
                    else:
                        budget.check_size(info.file_size, str(name))
                        with zf.open(info) as src:
                            _write(_prepare(dest, name), src, info.file_size, mode, name,
                                   budget)
                except OSError as exc:
                    raise BadArchive(f"cannot unpack {name}: {exc.strerror or exc}") from exc
    except BadArchive:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError, OSError) as exc:
        raise BadArchive(f"{source.name} is not a valid .war (zip): {exc}") from exc


# -- directories -----------------------------------------------------------------------------

def _copy_tree(src: Path, dest: Path, rel: PurePosixPath, budget: _Budget,
               digest: hashlib._Hash) -> None:
    """Copy a directory under the same rules as an archive; hash names and contents in a
    fixed order so the same tree always gives the same sha256."""
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        budget.entry()
        name = rel / entry.name
        digest.update(f"{name}\0".encode(errors="surrogateescape"))
        if entry.is_symlink():
            link = os.readlink(entry.path)
            digest.update(b"l" + link.encode(errors="surrogateescape") + b"\0")
            _symlink(dest, name, link)
        elif entry.is_dir(follow_symlinks=False):
            digest.update(b"d\0")
            _mkdir(dest, name)
            _copy_tree(Path(entry.path), dest, name, budget, digest)
        elif entry.is_file(follow_symlinks=False):
            mode = entry.stat(follow_symlinks=False).st_mode
            digest.update(b"x\0" if mode & 0o111 else b"f\0")
            with open(entry.path, "rb") as f:
                _write(_prepare(dest, name), _Hashing(f, digest), None, mode, name, budget)
        else:
            raise BadArchive(f"{name} is not a regular file, directory or link")
    if not rel.parts:
        _check_links(dest)


class _Hashing:
    def __init__(self, raw: IO[bytes], digest: hashlib._Hash) -> None:
        self.raw = raw
        self.digest = digest

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data

