"""JwksServer: a JWKS endpoint on loopback (its own thread) that can be honest, slow, broken or hostile.

It serves `document` as JSON, or `body` as given, with the `Content-Encoding` layers in `encoding`
applied for real (so a client that decodes sees the bytes the server meant). `mode` picks a failure:
"ok", "error" (HTTP 500), "hang" (never answers until stopped), "trickle" (headers, then a byte every
50 ms), "garbage" (not JSON). It records every
request's headers. `gzip_bomb(size, layers)` builds a gzip stream of `size` zero bytes, nested `layers`
deep, in well under a second: the deflate block of one MiB of zeros after a full flush is the same
every time, so it is repeated rather than recomputed.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JwksServer", "gzip_bomb", "jwks_server"]

_MIB = 1 << 20


@cache
def gzip_bomb(size: int, layers: int = 1) -> bytes:
    """`size` zero bytes (a multiple of 1 MiB) gzipped, then gzipped again `layers - 1` times."""
    assert size % _MIB == 0
    assert layers >= 1
    chunk = bytes(_MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(size // _MIB):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    data = header + block * (size // _MIB) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


def encode(body: bytes, encoding: tuple[str, ...]) -> bytes:
    """`body` with each content coding applied in order (the header lists them in the same order)."""
    for coding in encoding:
        if coding == "gzip":
            body = gzip.compress(body)
        elif coding == "deflate":
            body = zlib.compress(body)
        else:
            raise ValueError(f"unknown coding {coding!r}")
    return body


class JwksServer:
    """A real HTTP/1.1 server on 127.0.0.1 answering every GET with the configured JWKS reply."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.body: bytes | None = None  # sent as is (already encoded) instead of `document`
        self.encoding: tuple[str, ...] = ()  # Content-Encoding layers, applied to `document`
        self.headers: dict[str, str] = {}  # extra response headers
        self.mode = "ok"
        self.hits = 0
        self.request_headers: list[dict[str, str]] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                    owner.request_headers.append({k.lower(): v for k, v in self.headers.items()})
                mode = owner.mode
                if mode == "hang":
                    owner._release.wait(30)
                    self.close_connection = True
                    return
                if mode == "trickle":  # honest headers, then one byte of body every 50 ms
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    for _ in range(100000):
                        if owner._release.wait(0.05):
                            break
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            break
                    self.close_connection = True
                    return
                if mode == "error":
                    self._send(500, b"{}", ())
                elif mode == "garbage":
                    self._send(200, b"<html>not a jwks</html>", ())
                elif owner.body is not None:
                    self._send(200, owner.body, owner.encoding)
                else:
                    raw = json.dumps(owner.document).encode()
                    self._send(200, encode(raw, owner.encoding), owner.encoding)

            def _send(self, status: int, body: bytes, encoding: tuple[str, ...]) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                if encoding:
                    self.send_header("content-encoding", ", ".join(encoding))
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.send_header("connection", "close")  # every fetch connects: `stop()` makes them refused
                self.close_connection = True
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client hung up early (a refused answer): nothing to do
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
