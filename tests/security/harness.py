"""The security suite's harness: the real gateway on loopback, canary secrets, raw sockets, a leak watch.

    config = SecurityConfig(tmp_path, upstream.url + "/3rdparty/v1")
    async with running(config) as gw:               # create_app + uvicorn with `gateway serve`'s options
        token = await gw.token("messages:send")     # minted by the gateway, remembered as a secret
        response = await gw.client.post(...)        # every response body and header goes to WATCH
        raw = await gw.raw(b"GET /x HTTP/1.1\\r\\n...")  # a raw socket, for what httpx cannot send

- The gateway runs exactly as `gateway serve` configures uvicorn (`cli.uvicorn_options`: the hardened
  httptools protocol, no proxy-header trust), only inside the test's loop; its events reach stdlib
  logging (the default sink), where the suite's root handler records them.
- The config trusts the issuers of `test_verify.issuers()` (same keys, same `iss`/`aud`) besides its own,
  so the verifier's unit tables can be replayed end to end; the gateway signs its own tokens with EdDSA
  (`ed_key(1)`, kid `self-1`) and still verifies the canary HS256 key `k1`.
- Every configured secret is a canary (`CANARIES`, plain and as the Basic header it becomes); every token
  the suite mints or receives is added to `WATCH`, which the suite checks at the end: no canary in any
  response, log record or exception text, no token in any log record.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import (
    CANARIES as BASE_CANARIES,
)
from gatewayconfig import (
    OPS_PASSWORD,
    SENDER_PASSWORD,
    SMSGATE_POLICY,
    TOKEN_SECRET,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    cheap_hash,
)
from keys import ec_key, ed_key, private_pem, public_pem, rsa_key
from processes import gateway_process

from gateway.app import Gateway, create_app
from gateway.cli import uvicorn_options
from gateway.config.settings import Settings, load_settings
from gateway.tokens.mint import TokenIssuer

MOUNT = "/3rdparty/v1"
BROKEN_MOUNT = "/broken/v1"
API_KEY = "canary-api-key-4e8b1d"  # for upstreams configured with a header credential
HS_SECRET = "h" * 64  # test_verify's external HS256 issuer (not a canary: "hhhh..." is not distinctive)
SELF_PEM = private_pem(ed_key(1))
SELF_KEY_LINE = SELF_PEM.splitlines()[1]  # the private key material, as it would show up in a leak


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


INJECTED = basic(UPSTREAM_USER, UPSTREAM_PASSWORD)  # what the upstream must receive, and nobody else
CANARIES: tuple[str, ...] = (
    *BASE_CANARIES,
    API_KEY,
    SELF_KEY_LINE,
    INJECTED.split()[1],
    basic("ops", OPS_PASSWORD).split()[1],
    basic("sender", SENDER_PASSWORD).split()[1],
)

_HASHES = {"ops": cheap_hash(OPS_PASSWORD), "sender": cheap_hash(SENDER_PASSWORD)}
_BROKEN_POLICY = """\
upstream: broken
mount: /broken/v1
scopes: {messages:send: Send through the failing upstream}
rules:
  - {method: POST, path: /messages, scope: messages:send}
  - {method: GET, path: /messages, scope: messages:send}
"""


# ----------------------------------------------------------------------------------------- the watch


class Watch:
    """Everything the gateway said (responses, log records) and every secret it must never say."""

    IGNORED_LOGGERS = ("httpx", "httpcore", "hypothesis", "asyncio")  # the test's own client side

    def __init__(self) -> None:
        self.secrets: set[str] = set(CANARIES)
        self.tokens: set[str] = set()
        self.responses: list[str] = []
        self.records: list[str] = []
        self._lock = threading.Lock()

    def token(self, *tokens: str) -> None:
        """Remember issued tokens: they may be in the 201 that issued them, never in a log."""
        with self._lock:
            for token in tokens:
                self.tokens.add(token)
                self.tokens.add(token.rsplit(".", 1)[-1])  # the signature alone is just as secret

    def response(self, text: str) -> None:
        with self._lock:
            self.responses.append(text)

    def record(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in self.IGNORED_LOGGERS:
            return
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is still text to search
            message = f"{record.msg!r} {record.args!r}"
        parts = [record.name, message, repr(record.args), repr(getattr(record, "__dict__", {}))]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        with self._lock:
            self.records.append("\n".join(parts))

    def leaks(self, responses_from: int = 0, records_from: int = 0) -> list[str]:
        """What leaked where (empty when nothing did), looking at responses and records from these offsets."""
        found: list[str] = []
        with self._lock:
            responses = self.responses[responses_from:]
            records = self.records[records_from:]
            secrets = sorted(self.secrets)
            tokens = sorted(self.tokens)
        for text in responses:
            found += [f"canary {s[:12]}... in a response: {text[:200]!r}" for s in secrets if s in text]
        for text in records:
            found += [f"canary {s[:12]}... in a log record: {text[:300]!r}" for s in secrets if s in text]
            found += [f"token {t[:12]}... in a log record: {text[:300]!r}" for t in tokens if t in text]
        return found

    def mark(self) -> tuple[int, int]:
        with self._lock:
            return len(self.responses), len(self.records)


WATCH = Watch()


class CaptureHandler(logging.Handler):
    """A root handler feeding every log record to WATCH."""

    def emit(self, record: logging.LogRecord) -> None:
        WATCH.record(record)


def _remember_tokens(body: bytes) -> None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        document = json.loads(body)
        if isinstance(document, dict):
            WATCH.token(*(str(document[k]) for k in ("access_token", "refresh_token") if document.get(k)))


async def _watch_response(response: httpx.Response) -> None:
    body = await response.aread()
    _remember_tokens(body)
    WATCH.response(f"{response.status_code} {list(response.headers.multi_items())!r} {body.decode('latin-1')}")


def watched_client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose every response is recorded for the leak check."""
    return httpx.AsyncClient(
        base_url=base_url, timeout=kwargs.pop("timeout", 10.0), event_hooks={"response": [_watch_response]}, **kwargs
    )


# ------------------------------------------------------------------------------------------- config


@dataclass
class SecurityConfig:
    """config.yaml for a gateway in front of `upstream_url` (and optionally a failing `broken_url`)."""

    directory: Path
    upstream_url: str
    broken_url: str | None = None
    credentials: str = '{type: basic, username: "${T_UPSTREAM_USER}", password: "${T_UPSTREAM_PASSWORD}"}'
    read_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    pool_size: int = 100
    pool_timeout_s: float = 1.0
    proxy: str = ""  # the body of a `proxy:` block in flow style, e.g. "{max_body_bytes: 4096}"
    env: dict[str, str] = field(default_factory=dict)

    def write(self) -> Path:
        self.env.update(
            {
                "T_TOKEN_SECRET": TOKEN_SECRET,
                "T_SELF_KEY": SELF_PEM,
                "T_HS_SECRET": HS_SECRET,
                "T_CORP_PEM": public_pem(rsa_key()),
                "T_EC_PEM": public_pem(ec_key()),
                "T_ED_PEM": public_pem(ed_key()),
                "T_UPSTREAM_URL": self.upstream_url,
                "T_UPSTREAM_USER": UPSTREAM_USER,
                "T_UPSTREAM_PASSWORD": UPSTREAM_PASSWORD,
                "T_API_KEY": API_KEY,
                "T_OPS_HASH": _HASHES["ops"],
                "T_SENDER_HASH": _HASHES["sender"],
            }
        )
        policies = [str(SMSGATE_POLICY)]
        broken = ""
        if self.broken_url is not None:
            path = self.directory / "broken.policy.yaml"
            path.write_text(_BROKEN_POLICY)
            policies.append(str(path))
            broken = (
                f"  broken:\n    url: {self.broken_url}\n    read_timeout_s: {self.read_timeout_s}\n"
                f"    connect_timeout_s: {self.connect_timeout_s}\n    credentials: {{type: none}}\n"
            )
        text = f"""\
listen: {{host: 127.0.0.1, port: 0}}
store: memory://
policies: [{", ".join(policies)}]
reload: {{watch: false}}
admin: {{issuer: hs, scope: settings:read}}
auth:
  leeway_s: 30
  max_token_lifetime_s: 3600
  issuers:
    - {{name: hs, issuer: "https://hs.example.com", audience: sms-api, algorithms: [HS256], secret: "${{T_HS_SECRET}}"}}
    - {{name: corp, issuer: "https://idp.example.com/", audience: [sms-api, other-api], algorithms: [RS256],
       public_key: "${{T_CORP_PEM}}", kid: rsa-1, scope_claim: scp}}
    - {{name: ec, issuer: "https://es.example.com", audience: sms-api, algorithms: [ES256],
       public_key: "${{T_EC_PEM}}", kid: ec-1}}
    - {{name: ed, issuer: "https://ed.example.com", audience: sms-api, algorithms: [EdDSA],
       public_key: "${{T_ED_PEM}}"}}
  basic_users:
    - {{username: ops, password_hash: "${{T_OPS_HASH}}", scopes: [all:any]}}
    - {{username: sender, password_hash: "${{T_SENDER_HASH}}", scopes: [messages:send, messages:read]}}
tokens:
  enabled: true
  max_ttl_s: 3600
  default_ttl_s: 600
  keys:
    - {{kid: self-1, algorithm: EdDSA, private_key: "${{T_SELF_KEY}}"}}
    - {{kid: k1, algorithm: HS256, secret: "${{T_TOKEN_SECRET}}"}}
upstreams:
  smsgate:
    url: ${{T_UPSTREAM_URL}}
    read_timeout_s: {self.read_timeout_s}
    connect_timeout_s: {self.connect_timeout_s}
    pool_size: {self.pool_size}
    pool_timeout_s: {self.pool_timeout_s}
    credentials: {self.credentials}
{broken}""" + (f"proxy: {self.proxy}\n" if self.proxy else "")
        path = self.directory / "config.yaml"
        path.write_text(text)
        return path

    def settings(self) -> Settings:
        return load_settings(self.write(), env=self.env)


def admin_token() -> str:
    """A token of the external `hs` issuer with settings:read: the harness config's admin (the /readyz details)."""
    now = int(time.time())
    claims = {"iss": "https://hs.example.com", "aud": "sms-api", "sub": "harness", "scope": "settings:read"}
    return jwt.encode({**claims, "iat": now, "exp": now + 300}, HS_SECRET, algorithm="HS256")


# ------------------------------------------------------------------------------------------- server


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

    async def main_loop(self) -> None:
        """uvicorn's loop, ticking every 10 ms instead of 100 ms so that a test's server stops at once."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


class GatewayServer(UvicornServer):
    """UvicornServer running the app with `gateway serve`'s uvicorn options (protocol, limits, headers)."""

    def __init__(self, app: Any, settings: Settings, *, head_timeout_s: float = 2.0, **limits: Any) -> None:
        super().__init__(app, lifespan="on")
        options = uvicorn_options(settings, head_timeout_s=head_timeout_s, **limits)
        for key in ("host", "port", "loop"):
            options.pop(key)
        options.update(log_config=None, timeout_graceful_shutdown=2)
        self._config = uvicorn.Config(app, **options)
        self._server = _Server(self._config)

    @property
    def connections(self) -> int:
        """Client connections the server holds open right now."""
        return len(self._server.server_state.connections)


@dataclass
class Running:
    """A running gateway: its config, app, server, a watched client and raw-socket access."""

    config: SecurityConfig
    gateway: Gateway
    server: GatewayServer
    client: httpx.AsyncClient

    @property
    def port(self) -> int:
        return self.server.port

    async def token(self, *scopes: str, subject: str = "app-1", ttl: int = 300) -> str:
        pair = await self.gateway.tokens.issue(subject, list(scopes), ttl, caller=None)
        WATCH.token(pair.access.token, pair.refresh.token)
        return pair.access.token

    async def pair(self, *scopes: str) -> tuple[str, str, str]:
        """(access, refresh, jti) of a fresh token pair."""
        pair = await self.gateway.tokens.issue("app-1", list(scopes), 300, caller=None)
        WATCH.token(pair.access.token, pair.refresh.token)
        return pair.access.token, pair.refresh.token, pair.access.jti

    async def raw(self, data: bytes | Iterable[bytes], *, timeout_s: float = 3.0, pause_s: float = 0.0) -> bytes:
        return await asyncio.to_thread(exchange, self.port, data, timeout_s=timeout_s, pause_s=pause_s)


@contextlib.asynccontextmanager
async def running(config: SecurityConfig, **limits: Any) -> AsyncIterator[Running]:
    """The gateway for `config` under uvicorn (lifespan on), with a watched client."""
    settings = config.settings()
    gateway = create_app(settings, env=config.env)
    async with GatewayServer(gateway, settings, **limits) as server, watched_client(server.url) as client:
        yield Running(config, gateway, server, client)


@contextlib.asynccontextmanager
async def recorded(
    directory: Path, reply: Reply | None = None, *, head_timeout_s: float = 2.0, **options: Any
) -> AsyncIterator[tuple[Running, RecordingUpstream]]:
    """A RecordingUpstream and the gateway in front of it (SMSGate policy under /3rdparty/v1)."""
    reply = reply or Reply(200, body=b'{"ok":true}', headers=[("Content-Type", "application/json")])
    async with RecordingUpstream(reply) as upstream:
        config = SecurityConfig(directory, upstream.url + MOUNT, **options)
        async with running(config, head_timeout_s=head_timeout_s) as gw:
            yield gw, upstream


@dataclass
class Served:
    """`gateway serve` running as its own process; everything it printed is in `output`."""

    url: str
    port: int
    pid: int
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def token(self, config: SecurityConfig, *scopes: str) -> str:
        """A token of the gateway's own issuer, minted here with its signing key in the store epoch /readyz
        shows (not recorded in its store)."""
        ready = httpx.get(self.url + "/readyz", headers={"authorization": f"Bearer {admin_token()}"}, timeout=5)
        epoch = ready.json()["store"]["epoch"]  # the process's store epoch (shown to the admin issuer only)
        token = TokenIssuer(config.settings().tokens).mint_pair("app-1", scopes, 300, grant={"ep": epoch}).access.token
        WATCH.token(token)
        return token

    async def raw(self, data: bytes | Iterable[bytes], *, timeout_s: float = 3.0) -> bytes:
        return await asyncio.to_thread(exchange, self.port, data, timeout_s=timeout_s)


@contextlib.contextmanager
def serving(config: SecurityConfig, *, timeout_s: float = 20.0) -> Iterator[Served]:
    """`python -m gateway serve` for `config` on a free port; its output joins the canary watch afterwards."""
    output = config.directory / "gateway.log"
    try:
        with gateway_process(config.write(), config.env, output=output, timeout_s=timeout_s) as process:
            yield Served(process.url, process.port, process.pid, output)
    finally:
        if output.exists():
            for line in output.read_text(errors="replace").splitlines():
                WATCH.records.append(f"gateway serve output: {line}")


# --------------------------------------------------------------------------------------- raw sockets


def exchange(port: int, data: bytes | Iterable[bytes], *, timeout_s: float = 3.0, pause_s: float = 0.0) -> bytes:
    """Send bytes (pieces `pause_s` apart) on a fresh connection; return all bytes read until close or timeout."""
    pieces = [data] if isinstance(data, bytes) else list(data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for index, piece in enumerate(pieces):
            if index and pause_s:
                threading.Event().wait(pause_s)
            try:
                sock.sendall(piece)
            except OSError:
                break  # the gateway already closed the connection
        return read_all(sock, timeout_s)


def read_all(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        chunks.append(b"<timeout>")
    except ConnectionResetError:
        chunks.append(b"<reset>")
    data = b"".join(chunks)
    WATCH.response(data.decode("latin-1"))
    return data


def statuses(data: bytes) -> list[int]:
    """The status codes of every response in a raw byte stream, pipelined ones included (bodies are walked over)."""
    found: list[int] = []
    rest = data
    while rest.startswith(b"HTTP/1.") and len(rest) >= 12 and rest[9:12].isdigit():
        found.append(int(rest[9:12]))
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if found[-1] != 100:
            rest = rest[int(length.group(1)) if length else len(rest) :]
    return found


def status(data: bytes) -> int:
    """The first status code in a raw response (0 when the gateway answered nothing at all)."""
    found = statuses(data)
    return found[0] if found else 0


@dataclass(frozen=True)
class RawResponse:
    """The first response of a raw byte stream (status 0 when the gateway answered nothing)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status(data), headers, body)


def request(method: str, target: str, *headers: str, body: bytes = b"", host: str = "gateway") -> bytes:
    """One HTTP/1.1 request, byte for byte as written (headers as 'Name: value' lines), connection: close."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
