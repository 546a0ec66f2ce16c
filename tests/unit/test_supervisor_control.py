"""The supervisor's questions to a worker on its control socket: an answer that comes
late (the worker was not serving yet) is never taken for the answer to a later one."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from dinp.router.supervisor import WorkerProcess


class _Alive:
    def is_alive(self) -> bool:
        return True


def test_a_late_answer_is_not_taken_for_the_next_one() -> None:
    async def main() -> None:
        parent, child = socket.socketpair()
        worker = WorkerProcess(0)
        worker.process = _Alive()  # type: ignore[assignment]
        worker._reader, worker._writer = await asyncio.open_connection(sock=parent)
        reader, writer = await asyncio.open_connection(sock=child)
        # The first question goes unanswered in time ...
        assert await worker.stats(timeout=0.2) is None

        async def answer_all() -> None:
            # ... the worker then answers every question it finds, in order.
            while line := await reader.readline():
                number = line.split()[-1].decode()
                stats: dict[str, Any] = {"rev": int(number)}
                writer.write(json.dumps([number, stats]).encode() + b"\n")
                await writer.drain()

        task = asyncio.create_task(answer_all())
        try:
            got = await worker.stats(timeout=2)
            assert got is not None and got["rev"] == 2  # the answer to the second question
            got = await worker.stats(timeout=2)
            assert got is not None and got["rev"] == 3
        finally:
            task.cancel()
            worker.close_control()
            writer.close()

    asyncio.run(main())
