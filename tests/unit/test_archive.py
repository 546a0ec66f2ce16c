"""Safe unpacking: every attack an archive can carry is refused, and nothing is written
outside the destination. The malicious archives are made here with tarfile and zipfile."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dinp.build.archive import BadArchive, Limits, file_sha256, unpack, unpack_war
from dinp.errors import InvalidInput

Entry = Callable[[tarfile.TarFile], None]


def file_entry(name: str, data: bytes = b"x", mode: int = 0o644) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
    return add


def special_entry(name: str, kind: bytes, linkname: str = "") -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        tar.addfile(info)
    return add


def symlink(name: str, target: str) -> Entry:
    return special_entry(name, tarfile.SYMTYPE, target)


def make_tgz(path: Path, *entries: Entry) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for add in entries:
            add(tar)
    return path


class Zeros(io.RawIOBase):
    """`size` zero bytes, produced as they are read (a bomb costs no memory to make)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A directory holding the archive and the destination `out`; whatever an attack
    tries, nothing may appear in it but those two."""
    (tmp_path / "box").mkdir()
    return tmp_path / "box"


def assert_contained(box: Path) -> None:
    assert {p.name for p in box.iterdir()} <= {"app.tar.gz", "app.war", "out"}
    assert not (box.parent / "evil").exists()
    assert not (box.parent / "evil.txt").exists()


# -- what must work ------------------------------------------------------------------------

def test_unpacks_files_dirs_and_inside_links(box: Path) -> None:
    archive = make_tgz(
        box / "app.tar.gz",
        special_entry("app/", tarfile.DIRTYPE),
        file_entry("app/run", b"#!/bin/sh\n", mode=0o4755),
        file_entry("app/lib/x.txt", b"hello"),
        symlink("app/current", "lib"),
        symlink("app/lib/up", "../run"),
    )
    result = unpack(archive, box / "out", Limits())

    root = box / "out" / "app"
    assert result.root == root  # the single top-level directory is the app
    assert result.kind == "tar"
    assert result.sha256 == file_sha256(archive)
    assert (root / "lib" / "x.txt").read_bytes() == b"hello"
    assert os.readlink(root / "current") == "lib"
    assert (root / "lib" / "up").read_bytes() == b"#!/bin/sh\n"
    assert (root / "run").stat().st_mode & 0o7777 == 0o755  # setuid dropped, exec kept
    assert (root / "lib" / "x.txt").stat().st_mode & 0o7777 == 0o644
    assert result.bytes == len(b"#!/bin/sh\n") + 5


def test_plain_tar_and_tgz_suffix(box: Path) -> None:
    with tarfile.open(box / "a.tar", "w") as tar:
        file_entry("index.html", b"hi")(tar)
    (box / "a.tgz").write_bytes(gzip.compress((box / "a.tar").read_bytes()))
    for name in ("a.tar", "a.tgz"):
        out = box / f"out-{name}"
        assert (unpack(box / name, out, Limits()).root / "index.html").read_bytes() == b"hi"


def test_a_directory_is_copied_under_the_same_rules(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    (src / "link").symlink_to("sub/b.txt")

    first = unpack(src, tmp_path / "one", Limits())
    second = unpack(src, tmp_path / "two", Limits())

    assert (tmp_path / "one" / "sub" / "b.txt").read_text() == "b"
    assert os.readlink(tmp_path / "one" / "link") == "sub/b.txt"
    assert first.kind == "dir" and first.sha256 == second.sha256
    (src / "a.txt").write_text("changed")
    assert unpack(src, tmp_path / "three", Limits()).sha256 != first.sha256


def test_a_lone_web_inf_is_not_taken_for_the_app(box: Path) -> None:
    archive = make_tgz(box / "app.tar.gz", file_entry("WEB-INF/web.xml", b"<web-app/>"))
    assert unpack(archive, box / "out", Limits()).root == box / "out"
    with zipfile.ZipFile(box / "app.war", "w") as zf:
        zf.writestr("WEB-INF/classes/App.class", "x")
    assert unpack(box / "app.war", box / "war", Limits()).root == box / "war"


def test_a_war_is_unpacked(box: Path) -> None:
    with zipfile.ZipFile(box / "app.war", "w") as zf:
        zf.writestr("WEB-INF/web.xml", "<web-app/>")
        zf.writestr("index.html", "hi")
    result = unpack(box / "app.war", box / "out", Limits())
    assert result.kind == "war"
    assert (box / "out" / "WEB-INF" / "web.xml").read_text() == "<web-app/>"


# -- paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (file_entry("/tmp/evil"), "absolute path"),
        (file_entry("../evil"), "'..'"),
        (file_entry("app/../../evil"), "'..'"),
        (file_entry("./app/./../../evil"), "'..'"),
        (special_entry("../evil", tarfile.DIRTYPE), "'..'"),
        (symlink("link", "/etc/passwd"), "points outside"),
        (symlink("link", "../../evil"), "points outside"),
        (symlink("a/b/link", "../../../evil"), "points outside"),
        (special_entry("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (special_entry("hard", tarfile.LNKTYPE, "inside.txt"), "hard link"),
        (special_entry("dev", tarfile.CHRTYPE), "device file"),
        (special_entry("disk", tarfile.BLKTYPE), "device file"),
        (special_entry("pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_hostile_entries_are_refused(box: Path, entry: Entry, message: str) -> None:
    archive = make_tgz(box / "app.tar.gz", file_entry("inside.txt"), entry)
    with pytest.raises(BadArchive, match=message) as info:
        unpack(archive, box / "out", Limits())
    assert info.value.exit_code == 2
    assert str(info.value).startswith("archive: ")
    assert_contained(box)


def test_no_file_is_written_through_a_link_that_points_outside(box: Path) -> None:
    # l2 -> l1/.. looks inside while l1 does not exist; once l1 -> . exists, l2 is the
    # parent of the destination. The write below must be refused, whatever the order.
    archive = make_tgz(box / "app.tar.gz", symlink("l2", "l1/.."), symlink("l1", "."),
                       file_entry("l2/evil.txt", b"pwned"))
    with pytest.raises(BadArchive, match="outside"):
        unpack(archive, box / "out", Limits())
    assert_contained(box)


def test_a_link_made_to_point_outside_by_a_later_entry_is_refused(box: Path) -> None:
    archive = make_tgz(box / "app.tar.gz", symlink("l2", "l1/.."), symlink("l1", "."))
    with pytest.raises(BadArchive, match="link l2 points outside"):
        unpack(archive, box / "out", Limits())


def test_a_file_replacing_a_link_does_not_follow_it(box: Path, tmp_path: Path) -> None:
    # A link to inside, then a file of the same name: the file replaces the link.
    archive = make_tgz(box / "app.tar.gz", file_entry("real.txt", b"real"),
                       symlink("name", "real.txt"), file_entry("name", b"new"))
    unpack(archive, box / "out", Limits())
    assert (box / "out" / "real.txt").read_bytes() == b"real"
    assert not (box / "out" / "name").is_symlink()


def test_a_directory_with_a_link_outside_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BadArchive, match="points outside"):
        unpack(src, tmp_path / "out", Limits())


def test_a_directory_with_a_fifo_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(BadArchive, match="not a regular file"):
        unpack(src, tmp_path / "out", Limits())


# -- limits: checked while streaming -----------------------------------------------------

def test_a_gzip_bomb_is_stopped_at_the_size_limit(box: Path) -> None:
    archive = box / "app.tar.gz"
    size = 200 << 20  # 200 MB of zeros: about 200 kB compressed
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("zeros")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    assert archive.stat().st_size < 1 << 20

    start = time.monotonic()
    with pytest.raises(BadArchive, match="expands past 1 MB"):
        unpack(archive, box / "out", Limits(max_bytes=1 << 20))
    assert time.monotonic() - start < 2  # refused from the header, not after 200 MB
    assert not (box / "out" / "zeros").exists() or (box / "out" / "zeros").stat().st_size <= 1 << 20


def test_many_small_files_stop_at_the_size_limit_while_writing(box: Path) -> None:
    entries = [file_entry(f"f{i}", bytes(100 << 10)) for i in range(30)]  # 3 MB in all
    archive = make_tgz(box / "app.tar.gz", *entries)
    with pytest.raises(BadArchive, match="expands past 1 MB"):
        unpack(archive, box / "out", Limits(max_bytes=1 << 20))
    written = sum(p.stat().st_size for p in (box / "out").iterdir())
    assert written <= 1 << 20


def test_too_many_entries_are_refused(box: Path) -> None:
    archive = make_tgz(box / "app.tar.gz", *(file_entry(f"f{i}", b"") for i in range(101)))
    with pytest.raises(BadArchive, match="more than 100 entries"):
        unpack(archive, box / "out", Limits(max_files=100))
    assert len(list((box / "out").iterdir())) <= 100


def test_a_bomb_in_a_header_is_stopped_before_it_is_read(box: Path) -> None:
    archive = box / "app.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("small")
        info.pax_headers = {"comment": "x" * (64 << 20)}  # a 64 MB pax record
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BadArchive, match="headers and padding"):
        unpack(archive, box / "out", Limits())


def test_a_bomb_of_padding_after_the_last_entry_is_stopped(box: Path) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        file_entry("index.html", b"hi")(tar)
    data = inner.getvalue() + bytes(32 << 20)
    (box / "app.tar.gz").write_bytes(gzip.compress(data, compresslevel=1))
    with pytest.raises(BadArchive, match="headers and padding"):
        unpack(box / "app.tar.gz", box / "out", Limits())


def test_a_zip_bomb_in_a_war_is_refused(box: Path) -> None:
    with (zipfile.ZipFile(box / "app.war", "w", zipfile.ZIP_DEFLATED) as zf,
          zf.open("big.bin", "w", force_zip64=True) as f):
        for _ in range(8):
            f.write(bytes(1 << 20))
    with pytest.raises(BadArchive, match="expands past 1 MB"):
        unpack(box / "app.war", box / "out", Limits(max_bytes=1 << 20))


# -- corrupt input -------------------------------------------------------------------------

def test_a_truncated_archive_is_refused(box: Path) -> None:
    archive = make_tgz(box / "app.tar.gz", file_entry("a", os.urandom(200_000)),
                       file_entry("b", b"b"))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadArchive, match="corrupt or truncated"):
        unpack(archive, box / "out", Limits())


def test_an_archive_cut_after_its_last_entry_is_refused(box: Path) -> None:
    archive = make_tgz(box / "app.tar.gz", file_entry("a", b"a"))
    archive.write_bytes(archive.read_bytes()[:-8])  # the gzip trailer is gone
    with pytest.raises(BadArchive, match="corrupt or truncated"):
        unpack(archive, box / "out", Limits())


@pytest.mark.parametrize("content", [b"", b"not an archive at all" * 100, os.urandom(4096)])
def test_garbage_is_refused(box: Path, content: bytes) -> None:
    (box / "app.tar.gz").write_bytes(content)
    with pytest.raises(BadArchive, match="corrupt or truncated"):
        unpack(box / "app.tar.gz", box / "out", Limits())


def test_gzip_of_garbage_is_refused(box: Path) -> None:
    (box / "app.tar.gz").write_bytes(gzip.compress(os.urandom(5000)))
    with pytest.raises(BadArchive, match="corrupt or truncated"):
        unpack(box / "app.tar.gz", box / "out", Limits())


def test_a_corrupt_war_is_refused(box: Path) -> None:
    with zipfile.ZipFile(box / "app.war", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("index.html", "hello " * 1000)
    data = bytearray((box / "app.war").read_bytes())
    data[60:80] = bytes(20)  # inside the compressed data: the CRC check fails
    (box / "app.war").write_bytes(bytes(data))
    with pytest.raises(BadArchive, match=r"not a valid \.war"):
        unpack(box / "app.war", box / "out", Limits())


@pytest.mark.parametrize(("name", "message"), [("../evil", "'..'"), ("/evil", "absolute")])
def test_a_war_with_a_path_outside_is_refused(box: Path, name: str, message: str) -> None:
    with zipfile.ZipFile(box / "app.war", "w") as zf:
        zf.writestr(name, "pwned")
    with pytest.raises(BadArchive, match=message):
        unpack_war(box / "app.war", box / "out", Limits())
    assert_contained(box)


def test_a_war_with_a_link_is_refused(box: Path) -> None:
    with zipfile.ZipFile(box / "app.war", "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BadArchive, match="is a link"):
        unpack(box / "app.war", box / "out", Limits())


def test_unknown_kinds_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "app.zip").write_bytes(b"")
    with pytest.raises(InvalidInput, match=r"not a \.tar\.gz"):
        unpack(tmp_path / "app.zip", tmp_path / "out", Limits())
    with pytest.raises(InvalidInput, match="does not exist"):
        unpack(tmp_path / "absent.tgz", tmp_path / "out", Limits())
