"""The PROXY protocol (versions 1 and 2, as HAProxy specifies them): the header a load
balancer puts at the start of each connection to say whose connection it is.

Parsed strictly, because whoever can open a connection can send anything: a header that
is malformed, truncated, larger than the limits, of a family other than TCP over IPv4 or
IPv6, or missing (the connection starts with anything else) is refused. A v2 `LOCAL`
header (the load balancer's own health check), a v1 `UNKNOWN` one and a v2 `PROXY` of
family `UNSPEC` carry no client: the connection's real peer is used.

`parse` is pure and never reads past the header's end, so what follows (an HTTP request,
a TLS ClientHello) is left to whoever reads next: accept.py reads the header straight
from the socket without taking a byte of what follows.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# The longest v1 header, its CRLF included (the specification's limit).
V1_MAX = 107
# The longest v2 header this router accepts: the 16 fixed bytes and 2 KB of addresses and
# TLVs (load balancers send tens of bytes; the protocol would allow 64 KB).
V2_MAX = 16 + 2048
# No header is longer: a reader that holds this many bytes has an answer from `parse`.
MAX_HEADER = max(V1_MAX, V2_MAX)

_LOCAL, _PROXY = 0x20, 0x21  # version 2 and its command
_UNSPEC, _TCP4, _TCP6 = 0x00, 0x11, 0x21
_ADDRESS_SIZE = {_TCP4: 12, _TCP6: 36}


class ProxyProtocolError(ValueError):
    """The connection does not start with a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: its size in bytes, and the client's address and port (None: use
    the connection's real peer: LOCAL, UNKNOWN, UNSPEC)."""

    length: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None = None
    version: int = 1


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None when `data` is a proper beginning of one
    (every byte of it is header: read more); ProxyProtocolError when it is not one."""
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyProtocolError("the connection does not start with a PROXY header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:  # no end yet: what there is must be a beginning of one
        head = data[:V1_MAX]
        body = head[:-1] if head.endswith(b"\r") else head
        if not V1_PREFIX.startswith(head[:len(V1_PREFIX)]) or not _printable(body):
            raise ProxyProtocolError("not a PROXY v1 header")
        if len(data) >= V1_MAX or (len(data) == V1_MAX - 1 and body is head):
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        return None
    line = data[:end]
    if not line.startswith(V1_PREFIX) or not _printable(line):
        raise ProxyProtocolError("not a PROXY v1 header")
    words = line[len(V1_PREFIX):].split(b" ")
    if words[0] == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(end + 2, None)
    if len(words) != 5 or words[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("a PROXY v1 header is `PROXY TCP4|TCP6 src dst sport dport`")
    version = 4 if words[0] == b"TCP4" else 6
    source = _address(words[1], version)
    destination = _address(words[2], version)
    return ProxyHeader(end + 2, (source, _port(words[3])),
                       (destination, _port(words[4])))


def _printable(data: bytes) -> bool:
    """Visible ASCII and spaces only (no CR, LF or NUL inside a line)."""
    return data.isascii() and all(0x20 <= b < 0x7F for b in data)


def _address(word: bytes, version: int) -> str:
    text = word.decode("ascii")
    if "%" in text:  # a zone index names an interface of the sender's, not an address
        raise ProxyProtocolError(f"{text!r} is not an IPv{version} address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise ProxyProtocolError(f"{text!r} is not an IPv{version} address")
    return _client(address)


def _client(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """How the address is written: an IPv4 client behind a dual-stack balancer
    (::ffff:192.0.2.1) as the IPv4 address it is."""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _port(word: bytes) -> int:
    if not word.isdigit() or len(word) > 5 or (len(word) > 1 and word[0] == 0x30):
        raise ProxyProtocolError(f"{word.decode('ascii')!r} is not a port")
    port = int(word)
    if port > 65535:
        raise ProxyProtocolError(f"{port} is not a port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyProtocolError("not a PROXY v2 header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 header")
    command, family, size = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError(f"PROXY v2 version/command {command:#04x} is not 0x20/0x21")
    if 16 + size > V2_MAX:
        raise ProxyProtocolError(f"PROXY v2 header of {16 + size} bytes (at most {V2_MAX})")
    if command == _PROXY and family not in (_UNSPEC, _TCP4, _TCP6):
        raise ProxyProtocolError(f"PROXY v2 family {family:#04x} is not TCP over IPv4/IPv6")
    if len(data) < 16 + size:
        return None
    length = 16 + size
    if command == _LOCAL or family == _UNSPEC:  # no client: its addresses are ignored
        return ProxyHeader(length, None, version=2)
    need = _ADDRESS_SIZE[family]
    if size < need:
        raise ProxyProtocolError(f"PROXY v2 addresses cut short ({size} of {need} bytes)")
    _check_tlvs(data[16 + need:length])
    if family == _TCP4:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", data, 16)
    else:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", data, 16)
    return ProxyHeader(length, (_client(ipaddress.ip_address(src)), sport),
                       (_client(ipaddress.ip_address(dst)), dport), version=2)


def _check_tlvs(data: bytes) -> None:
    """The TLVs after the addresses must exactly fill the header (their values are not
    used, but a header whose inside does not add up is not trusted for its address)."""
    at = 0
    while at < len(data):
        if at + 3 > len(data):
            raise ProxyProtocolError("PROXY v2 TLV cut short")
        at += 3 + struct.unpack_from("!H", data, at + 1)[0]
    if at != len(data):
        raise ProxyProtocolError("PROXY v2 TLV runs past the header")
