"""App logs without Docker: Docker's frames into lines, --since, the printed format, the
bounded buffers that keep a slow reader from slowing anyone else, the merge, and the
lines an agent keeps of the containers it removed (on disk, bounded)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dinp import logs
from dinp.errors import InvalidInput
from dinp.log_archive import KEEP_LINES, Archive
from dinp.logs import (
    Assembler,
    LineQueue,
    LogLine,
    Query,
    ReorderBuffer,
    docker_time,
    merge,
    parse_since,
)

T0 = 1_796_162_642.0  # 2026-12-01


def line(at: float, instance: str = "3f2a9c01de", text: str = "x", **kw: object) -> LogLine:
    return LogLine(at=at, instance=instance, release=1, stream="stdout", line=text,
                   **kw)  # type: ignore[arg-type]


# -- Docker's timestamps and frames --------------------------------------------------------

def test_docker_timestamps_keep_their_nanoseconds() -> None:
    assert docker_time(b"2026-12-01T21:55:09.231792561Z") == 1796162109231792561
    assert docker_time("2026-12-01T21:55:09Z") == 1796162109_000_000_000
    assert docker_time("2026-12-01T22:55:09.5+01:00") == 1796162109_500_000_000
    with pytest.raises(ValueError):
        docker_time(b"yesterday")


def test_frames_become_lines_with_their_stream_and_time() -> None:
    a = Assembler()
    assert a.feed(1, b"2026-12-01T21:55:09.000000001Z hello\n") == [
        (1796162109000000001, 1, "hello")]
    assert a.feed(2, b"2026-12-01T21:55:09.000000002Z boom\r\n") == [
        (1796162109000000002, 2, "boom")]


def test_a_line_the_engine_split_into_parts_is_one_line_with_its_first_time() -> None:
    a = Assembler()
    assert a.feed(1, b"2026-12-01T21:55:09.000000001Z first part, ") == []
    assert a.feed(2, b"2026-12-01T21:55:09.000000002Z other stream\n") == [
        (1796162109000000002, 2, "other stream")]
    assert a.feed(1, b"2026-12-01T21:55:09.000000003Z second part\n") == [
        (1796162109000000001, 1, "first part, second part")]
    assert a.feed(1, b"2026-12-01T21:55:10Z no newline at the end") == []
    assert a.rest() == [(1796162110_000_000_000, 1, "no newline at the end")]


def test_a_huge_line_is_cut_and_says_so() -> None:
    a = Assembler()
    for _ in range(20):  # 20 parts of 16 KiB, as the engine splits them
        assert a.feed(1, b"2026-12-01T21:55:09Z " + b"y" * 16384) == []
    ((_, _, text),) = a.feed(1, b"2026-12-01T21:55:09Z end\n")
    assert len(text) == logs.MAX_LINE and text.endswith(logs.CUT)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    ((_, _, text),) = Assembler().feed(1, b"2026-12-01T21:55:09Z caf\xe9\n")
    assert text == "caf\ufffd"


# -- the query and the format --------------------------------------------------------------

@pytest.mark.parametrize(("given_", "back"), [("30s", 30), ("10m", 600), ("2h", 7200),
                                              ("1d", 86400), ("1.5h", 5400)])
def test_since_a_span_is_that_long_before_now(given_: str, back: float) -> None:
    assert parse_since(given_, now=T0) == T0 - back


def test_since_an_iso_time_is_local_unless_it_names_its_zone() -> None:
    assert parse_since("2026-12-01T21:55:09Z", now=T0) == 1796162109
    assert parse_since("2026-12-01T22:55:09+01:00", now=T0) == 1796162109
    local = datetime(2026, 12, 1, 21, 55, 9).astimezone().timestamp()
    assert parse_since("2026-12-01T21:55:09", now=T0) == local
    for wrong in ("yesterday", "10 minutes", "-5m", ""):
        with pytest.raises(InvalidInput):
            parse_since(wrong, now=T0)


def test_a_line_prints_with_its_instance_node_and_stream_and_gone_is_marked() -> None:
    at = datetime(2026, 12, 1, 12, 1, 2, 123000).timestamp()
    obj = {"at": at, "instance": "3f2a9c01de", "node": "n1", "release": 1,
           "stream": "stderr", "line": "boom"}
    assert logs.text(obj, today=at) == "12:01:02.123 3f2a9c01de n1 stderr | boom"
    assert logs.text({**obj, "gone": True}, today=at) == (
        "12:01:02.123 3f2a9c01de n1 stderr (gone) | boom")
    assert logs.text(obj, today=at + 3 * 86400).startswith("12-01 12:01:02.123 ")
    assert logs.text({"dropped": 7, "node": "n2", "at": at}, today=at) == (
        "12:01:02.123 -- 7 line(s) dropped by node n2: the reader fell behind --")


def test_a_line_from_an_agent_is_parsed_strictly() -> None:
    good = {"at": T0, "instance": "3f2a9c01de", "release": 2, "stream": "stderr",
            "line": "boom", "gone": True}
    assert LogLine.from_json(good, node="n1") == LogLine(
        at=T0, instance="3f2a9c01de", release=2, stream="stderr", line="boom", node="n1",
        gone=True)
    assert LogLine.from_json(json.loads(logs.dumps(line(T0).to_json()))) == line(T0)
    for key, wrong in (("at", "now"), ("at", True), ("instance", "../etc"),
                       ("stream", "stdin"), ("line", None), ("release", -1)):
        with pytest.raises(InvalidInput):
            LogLine.from_json({**good, key: wrong})


def test_query_parameters_and_what_a_query_wants() -> None:
    q = Query(app="web", instance="3f2a9c01de", since=T0, tail=5, follow=True)
    assert q.params() == {"app": "web", "instance": "3f2a9c01de", "since": repr(T0),
                          "tail": "5", "follow": "1"}
    assert q.wants(line(T0)) and not q.wants(line(T0 - 1))
    assert not q.wants(line(T0, instance="other"))
    assert logs.last([line(3), line(1), line(2)], 2) == [line(2), line(3)]
    assert logs.last([line(1)], 0) == []


# -- bounded buffers -----------------------------------------------------------------------

def test_a_full_queue_drops_and_counts_and_never_blocks_the_writer() -> None:
    woken = []
    q = LineQueue(max_lines=3, max_bytes=1 << 20, notify=lambda: woken.append(1))
    results = [q.put(line(i)) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert woken == [1]  # only when the first line arrived in an empty queue
    items, dropped = q.take()
    assert [x.at for x in items] == [0, 1, 2] and dropped == 7
    assert q.take() == ([], 0)
    assert q.put(line(11)) and woken == [1, 1]


def test_a_queue_is_bounded_in_bytes_too() -> None:
    q = LineQueue(max_lines=1000, max_bytes=10_000)
    big = "z" * 4000
    assert [q.put(line(i, text=big)) for i in range(4)] == [True, True, False, False]


def test_many_threads_putting_lose_nothing_that_fits() -> None:
    q = LineQueue(max_lines=100_000, max_bytes=1 << 30)

    def writer(n: int) -> None:
        for i in range(2000):
            q.put(line(n * 10_000 + i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items, dropped = q.take()
    assert len(items) == 16_000 and dropped == 0


def test_the_reorder_buffer_gives_out_in_time_order_after_its_window() -> None:
    buf = ReorderBuffer(window=0.5, max_lines=100)
    buf.push(line(T0 + 2, "b"), now=10.0)
    buf.push(line(T0 + 1, "a"), now=10.2)  # older, arrived later: still comes first
    assert buf.ready(10.4) == []
    assert [x.instance for x in buf.ready(10.7)] == ["a", "b"]
    buf.push(line(T0 + 3), now=11.0)
    assert buf.ready(11.2) == [] and len(buf) == 1


def test_the_reorder_buffer_drops_and_counts_when_full() -> None:
    buf = ReorderBuffer(window=0.0, max_lines=2)
    assert [buf.push(line(i), now=0) for i in range(5)] == [True, True, False, False, False]
    assert buf.take_dropped() == 3 and buf.take_dropped() == 0
    assert len(buf.ready(1)) == 2


@given(st.lists(st.lists(st.floats(0, 1e6), max_size=30), max_size=6))
def test_merge_gives_every_line_of_sorted_sources_in_order(sources: list[list[float]]) -> None:
    async def gen(values: list[float]) -> AsyncIterator[LogLine]:
        for v in sorted(values):
            await asyncio.sleep(0)
            yield line(v)

    async def main() -> list[float]:
        return [x.at async for x in merge([gen(s) for s in sources])]

    merged = asyncio.run(main())
    assert merged == sorted(v for s in sources for v in s)


# -- the lines kept of removed containers --------------------------------------------------

LABELS = {"io.dinp.app": "web", "io.dinp.instance": "3f2a9c01de", "io.dinp.release": "3",
          "io.dinp.cluster": "c1", "io.dinp.node": "n1"}


def test_kept_lines_survive_a_restart_marked_gone_with_how_it_ended(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "logs" / "n1", node="n1")
    kept = [(T0 + i, "stdout", f"line {i}") for i in range(KEEP_LINES + 50)]
    archive.keep(container="c0ffee", labels=LABELS,
                 lines=[*kept, (T0 + 999, "dinp", "exited with code 3")])
    again = Archive(tmp_path / "logs" / "n1", node="n1")  # the agent restarted
    got = again.lines(Query(app="web", tail=logs.MAX_TAIL), cluster="c1")
    assert len(got) == KEEP_LINES + 1 and all(x.gone and x.release == 3 for x in got)
    assert got[0].line == "line 50" and got[-1].line == "exited with code 3"
    assert [x.line for x in again.lines(Query(app="web", tail=2), cluster="c1")] == [
        f"line {KEEP_LINES + 48}", f"line {KEEP_LINES + 49}", "exited with code 3"]
    assert again.lines(Query(app="web", since=T0 + KEEP_LINES + 49), cluster="c1")[0].line \
        == f"line {KEEP_LINES + 49}"
    # Not another app's, another cluster's, nor a container still there (served live).
    assert again.lines(Query(app="other"), cluster="c1") == []
    assert again.lines(Query(app="web"), cluster="c2") == []
    assert again.lines(Query(app="web"), cluster="c1", skip=frozenset({"c0ffee"})) == []
    mode = os.stat(tmp_path / "logs" / "n1").st_mode & 0o777
    assert mode == 0o700
    assert os.stat(tmp_path / "logs" / "n1" / "c0ffee.json").st_mode & 0o777 == 0o600


def test_what_is_kept_is_bounded_in_age_count_bytes_and_per_instance(tmp_path: Path) -> None:
    archive = Archive(tmp_path, node="n1", keep_seconds=60, max_entries=4,
                      max_bytes=1 << 20, max_per_instance=2)
    now = time.time()
    for i in range(3):  # a crash loop: only the latest two of one instance stay
        archive.keep(container=f"loop{i}", labels=LABELS, lines=[(now, "stdout", "x")],
                     removed_at=now - 10 + i)
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == ["loop1", "loop2"]
    archive.keep(container="old", labels={**LABELS, "io.dinp.instance": "aa"},
                 lines=[(now, "stdout", "x")], removed_at=now - 120)
    assert "old" not in {p.stem for p in tmp_path.glob("*.json")}  # past keep_seconds
    for i in range(6):
        archive.keep(container=f"other{i}", labels={**LABELS, "io.dinp.instance": f"i{i}"},
                     lines=[(now, "stdout", "x")], removed_at=now - 5 + i / 10)
    assert len(archive) == 4 and len(list(tmp_path.glob("*.json"))) == 4
    small = Archive(tmp_path / "small", node="n1", max_bytes=3000)
    for i in range(5):
        small.keep(container=f"big{i}", labels={**LABELS, "io.dinp.instance": f"b{i}"},
                   lines=[(now, "stdout", "w" * 900)], removed_at=now + i)
    assert sum(p.stat().st_size for p in (tmp_path / "small").glob("*.json")) <= 3000
    assert "big4" in {p.stem for p in (tmp_path / "small").glob("*.json")}  # newest stay


def test_a_damaged_or_foreign_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    archive = Archive(tmp_path, node="n1")
    archive.keep(container="mine", labels=LABELS, lines=[(time.time(), "stdout", "x")])
    other = Archive(tmp_path, node="n2")  # another node's directory by mistake
    assert len(other) == 0 and not (tmp_path / "broken.json").exists()
