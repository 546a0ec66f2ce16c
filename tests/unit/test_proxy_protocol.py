"""The PROXY protocol parser: valid headers of both versions give the client, every
malformed, truncated or oversized one is refused, and nothing past the header is taken."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dinp.router.proxy_protocol import (
    MAX_HEADER,
    V1_MAX,
    V2_MAX,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)
from tests.support import PROXY_V2_SIGNATURE, proxy_v1, proxy_v2

REQUEST = b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n"
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize(("header", "source"), [
    (proxy_v1("203.0.113.7", 51234), ("203.0.113.7", 51234)),
    (proxy_v1("2001:db8::7", 443), ("2001:db8::7", 443)),
    (proxy_v1("::ffff:203.0.113.9", 1, dest="::1"), ("203.0.113.9", 1)),  # dual stack
    (b"PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n", ("10.0.0.1", 0)),
    (proxy_v2("203.0.113.7", 51234), ("203.0.113.7", 51234)),
    (proxy_v2("2001:db8::7", 65535), ("2001:db8::7", 65535)),
    # With TLVs after the addresses (AWS puts its VPC endpoint id there).
    (proxy_v2("198.51.100.1", 80, tlvs=b"\xea\x00\x05\x01vpce" + b"\x04\x00\x00"),
     ("198.51.100.1", 80)),
])
def test_a_header_gives_the_client_and_its_length(header: bytes, source: tuple[str, int]
                                                  ) -> None:
    for after in (b"", REQUEST, CLIENT_HELLO):
        got = parse(header + after)
        assert got is not None
        assert got.source == source
        assert got.length == len(header)  # nothing of what follows is taken


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 203.0.113.7 192.0.2.1 1 2\r\n",  # the rest is to be ignored
    proxy_v2(None, local=True),  # the balancer's own health check
    proxy_v2(None, local=True, tlvs=b"\x04\x00\x01x"),
    PROXY_V2_SIGNATURE + b"\x21\x00\x00\x00",  # PROXY, family UNSPEC
])
def test_headers_without_a_client_mean_the_real_peer(header: bytes) -> None:
    got = parse(header + REQUEST)
    assert got is not None and got.source is None and got.length == len(header)


@pytest.mark.parametrize("data", [
    REQUEST,  # no header at all
    CLIENT_HELLO,
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone never ends it: too long
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # family and address disagree
    b"PROXY TCP6 1.2.3.4 2001:db8::2 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
    b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\x00\n",
    b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 100 + b"\r\n",  # past 107 bytes
    b"PROXY TCP4 " + b"1" * 200,  # and still no end
    PROXY_V2_SIGNATURE[:11] + b"X\x21\x11\x00\x0c" + bytes(12),
    PROXY_V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
    PROXY_V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
    PROXY_V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP
    PROXY_V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216),  # AF_UNIX
    PROXY_V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # addresses cut short
    PROXY_V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # TCP6 with 12 bytes
    proxy_v2("198.51.100.1", 80, tlvs=b"\x04\x00\x09abc"),  # a TLV past the end
    proxy_v2("198.51.100.1", 80, tlvs=b"\x04\x00"),  # a TLV cut short
    PROXY_V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX) + bytes(V2_MAX),  # oversized
])
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data + REQUEST)


def test_an_oversized_v2_header_is_refused_from_its_fixed_part() -> None:
    """The announced size is enough to refuse it: no waiting for 64 KB to arrive."""
    with pytest.raises(ProxyProtocolError, match="at most"):
        parse(PROXY_V2_SIGNATURE + b"\x21\x11\xff\xff")


@pytest.mark.parametrize("header", [
    proxy_v1("203.0.113.7", 51234), proxy_v1("2001:db8::7", 443), b"PROXY UNKNOWN\r\n",
    proxy_v2("203.0.113.7", 51234), proxy_v2("2001:db8::7", 1, tlvs=b"\x04\x00\x02ab"),
    proxy_v2(None, local=True),
])
def test_every_beginning_of_a_header_asks_for_more(header: bytes) -> None:
    """A truncated header is not refused too early (it may be arriving) and nothing is
    taken from it: the reader waits, bounded by header_timeout."""
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, header[:cut]


def test_the_longest_v1_header_is_accepted() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(line) == V1_MAX
    assert parse(line + REQUEST) == ProxyHeader(V1_MAX, None)
    with pytest.raises(ProxyProtocolError):
        parse(line[:-2] + b"x\r\n")


# -- properties ---------------------------------------------------------------------------

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)
tlv = st.builds(lambda t, v: bytes([t]) + struct.pack("!H", len(v)) + v,
                st.integers(0, 255), st.binary(max_size=40))


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, tuple[str, int]]:
    v6 = draw(st.booleans())
    source = draw(ipv6 if v6 else ipv4)
    port = draw(ports)
    if draw(st.booleans()):
        header = proxy_v1(source, port, "::1" if v6 else "127.0.0.1", draw(ports))
    else:
        header = proxy_v2(source, port, dest_port=draw(ports),
                          tlvs=b"".join(draw(st.lists(tlv, max_size=4))))
    expected = ipaddress.ip_address(source)
    mapped = getattr(expected, "ipv4_mapped", None)
    return header, (str(mapped or expected), port)


@given(headers(), st.binary(max_size=64))
def test_any_valid_header_parses_and_leaves_what_follows(
        case: tuple[bytes, tuple[str, int]], after: bytes) -> None:
    header, source = case
    got = parse(header + after)
    assert got is not None and got.source == source and got.length == len(header)


@given(st.binary(max_size=MAX_HEADER + 64))
def test_any_bytes_give_a_header_more_needed_or_a_refusal(data: bytes) -> None:
    """Never another exception, never a header longer than the data, and never 'more'
    once a header's longest size has arrived (so a reader always ends)."""
    try:
        got = parse(data)
    except ProxyProtocolError:
        return
    if got is None:
        assert len(data) < MAX_HEADER
    else:
        assert 0 < got.length <= len(data)


@given(st.sampled_from([b"PROXY ", PROXY_V2_SIGNATURE]), st.binary(max_size=MAX_HEADER))
def test_bytes_after_a_signature_never_crash_the_parser(start: bytes, rest: bytes) -> None:
    try:
        got = parse(start + rest)
    except ProxyProtocolError:
        return
    if got is None:
        assert len(start + rest) < MAX_HEADER
    else:
        assert got.length <= len(start + rest)
