"""The session ticket keys the workers of one router share."""

from __future__ import annotations

import ssl

from dinp.router.tickets import ROTATION, SharedTickets, current_period, ticket_keys


def test_keys_depend_on_the_secret_and_the_period_only() -> None:
    keys = ticket_keys(b"s" * 32, 7)
    assert len(keys) == 80
    assert ticket_keys(b"s" * 32, 7) == keys  # the same in every worker
    assert ticket_keys(b"s" * 32, 8) != keys  # the next period
    assert ticket_keys(b"t" * 32, 7) != keys  # another router


def test_a_period_is_twelve_hours() -> None:
    assert ROTATION == 12 * 3600
    assert current_period(ROTATION * 5 + 1) == 5
    assert current_period(ROTATION * 6 - 1) == 5


def test_the_keys_are_set_in_openssl() -> None:
    """The keys OpenSSL holds are read back after being set (a wrong pointer would not
    give them back)."""
    import asyncio

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tickets = SharedTickets(ctx, b"s" * 32)
        try:
            assert tickets.start(asyncio.get_running_loop())
            assert tickets.period == current_period()
        finally:
            tickets.stop()

    asyncio.run(main())
