"""The few OpenSSL calls the router needs that Python's ssl module has no call for, made
through ctypes on the very library the ssl module is linked with.

They act on a context's SSL_CTX pointer, which CPython keeps as the first field after the
object's head. Before any call, the pointer is checked: the options OpenSSL reports for it
must be the ones Python reports. Where anything does not check out (another Python, another
layout), `OSError` says so and the caller keeps OpenSSL's defaults.
"""

from __future__ import annotations

import ctypes
import ssl
import sys

_SET_TICKET_KEYS, _GET_TICKET_KEYS = 59, 58  # SSL_CTRL_SET/GET_TLSEXT_TICKET_KEYS


class OpenSSL:
    """SSL_CTX_ctrl (ticket keys) and SSL_CTX_set_ciphersuites (TLS 1.3's order)."""

    def __init__(self) -> None:
        import _ssl

        if sys.implementation.name != "cpython":
            raise OSError("not CPython: the context's OpenSSL pointer is not known")
        lib = ctypes.CDLL(_ssl.__file__)  # its dependencies' symbols too (libssl)
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.ciphersuites = lib.SSL_CTX_set_ciphersuites
        self.ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.ciphersuites.restype = ctypes.c_int

    def pointer(self, ctx: ssl.SSLContext) -> int:
        """The SSL_CTX* of a context: the first field after the object's head."""
        address = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not address or address % ctypes.alignment(ctypes.c_void_p):
            raise OSError("the context's OpenSSL pointer does not look like one")
        if self.get_options(address) != ctx.options:
            raise OSError("the context's OpenSSL pointer does not match its options")
        return int(address)

    def set_ticket_keys(self, ctx: ssl.SSLContext, keys: bytes) -> None:
        """The keys the context's session tickets are encrypted with (read back after)."""
        pointer = self.pointer(ctx)
        if self.ctrl(pointer, _SET_TICKET_KEYS, len(keys),
                     ctypes.create_string_buffer(keys, len(keys))) != 1:
            raise OSError("OpenSSL refused the ticket keys")
        check = ctypes.create_string_buffer(len(keys))
        if self.ctrl(pointer, _GET_TICKET_KEYS, len(keys), check) != 1 or check.raw != keys:
            raise OSError("OpenSSL does not hold the ticket keys it was given")

    def set_tls13_ciphersuites(self, ctx: ssl.SSLContext, suites: str) -> None:
        """The TLS 1.3 cipher suites, in the server's order of preference."""
        if self.ciphersuites(self.pointer(ctx), suites.encode()) != 1:
            raise OSError(f"OpenSSL refused the TLS 1.3 cipher suites {suites}")


_loaded: OpenSSL | None = None
_failed = ""  # why the calls cannot be loaded (once found, not tried again)


def openssl() -> OpenSSL:
    """The calls, loaded once per process; OSError when they cannot be."""
    global _loaded, _failed
    if _loaded is None and not _failed:
        try:
            _loaded = OpenSSL()
        except AttributeError as exc:  # a symbol missing: another OpenSSL
            _failed = f"OpenSSL lacks a call the router uses ({exc})"
        except OSError as exc:
            _failed = str(exc)
    if _loaded is None:
        raise OSError(_failed)
    return _loaded
