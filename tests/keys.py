"""Test helpers: keys generated at run time, tokens forged byte by byte, a loopback HTTP server.

No key file is ever written: every key is generated in memory once per test session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@cache
def rsa_key(index: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def ec_key(index: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def ed_key(index: int = 0) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_jwk(key: PrivateKey, kid: str | None = None, **members: Any) -> dict[str, Any]:
    """The public JWK of `key`, with `kid` and any extra members (alg, use, key_ops...)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(members)
    return jwk


def sign(claims: dict[str, Any], key: PrivateKey | str, alg: str, **headers: Any) -> str:
    """A token signed by PyJWT (the honest issuer)."""
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def part(value: dict[str, Any] | bytes) -> str:
    return b64(value if isinstance(value, bytes) else json.dumps(value).encode())


def forge(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    *,
    hmac_key: bytes | None = None,
    hash_name: str = "sha256",
    signature: str = "",
) -> str:
    """A token built by hand (the attacker): raw JSON allowed, HMAC-signed with any bytes at all."""
    signing_input = f"{part(header)}.{part(payload)}"
    if hmac_key is not None:
        signature = b64(hmac.new(hmac_key, signing_input.encode(), getattr(hashlib, hash_name)).digest())
    return f"{signing_input}.{signature}"


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 (own thread) serving `document` as JSON and counting hits.

    `mode`: "ok" serves the document, "error" answers 500, "garbage" serves non-JSON, "hang" never
    answers (until stopped), "redirect" answers 302 to another path.
    """

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.mode = "ok"
        self.hits = 0
        self.paths: list[str] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                    owner.paths.append(self.path)
                mode = owner.mode
                if mode == "hang":
                    owner._release.wait(10)
                    return
                if mode == "error":
                    self._send(500, b"{}")
                elif mode == "garbage":
                    self._send(200, b"<html>not a jwks</html>")
                elif mode == "redirect":
                    self.send_response(302)
                    self.send_header("location", "/elsewhere.json")
                    self.send_header("content-length", "0")
                    self.end_headers()
                else:
                    self._send(200, json.dumps(owner.document).encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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
def loopback_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
