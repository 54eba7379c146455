"""What a bearer token costs the gateway, in-process: verification of a new token, a cache hit, memory per entry.

    .venv/bin/python bench/token_cache.py [--tokens 20000] [--entries 100000]   # -> bench/TOKEN_CACHE.md

Side by side in one run, per token (CPU time of this process, median of 5 passes):
- the signature check alone (cryptography's `verify`: the floor any verifier pays),
- PyJWT's own `jwt.decode` with the same checks (signature, iss, aud, exp): the library baseline,
- smsguard's `Authenticator` on a new token (parse once, PyJWT's algorithm object, claims, principal),
- smsguard's `Authenticator` on a cached token.
Then memory: bytes per cached entry (tracemalloc) and the RSS growth of this process for `--entries` cached
tokens, which sizes the default `auth.token_cache_size`. No Redis, no network: the store's revocation
check is not included (it is the same on both paths).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import psutil
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.utils import raw_to_der_signature

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import TokenVerifier
from gateway.config.settings import IssuerSettings, KeySettings, Secret

BENCH = Path(__file__).resolve().parent
AUDIENCE = "sms-api"


def pem(key: Any) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def tokens(key: Any, issuer: str, alg: str, count: int, now: int) -> list[str]:
    claims = {"aud": AUDIENCE, "iat": now, "exp": now + 3600, "scope": "messages:send messages:read", "iss": issuer}
    return [
        jwt.encode(
            {**claims, "sub": f"client-{i}", "jti": f"4f1c2a9e-{i:012d}"}, key, algorithm=alg, headers={"kid": "k"}
        )
        for i in range(count)
    ]


def per_token(run: Callable[[], None], count: int, passes: int = 5) -> float:
    """Median CPU µs per token of `run` (which handles `count` tokens) over `passes` passes."""
    samples = []
    for _ in range(passes):
        started = time.process_time()
        run()
        samples.append((time.process_time() - started) / count * 1e6)
    return statistics.median(samples)


def authenticator(key: Any, issuer: str, alg: str, cache_size: int) -> Authenticator:
    settings = IssuerSettings("bench", issuer, (AUDIENCE,), (alg,), keys=(KeySettings(alg, Secret(pem(key)), "k"),))
    return Authenticator(
        TokenVerifier((settings,), leeway_s=30, max_token_lifetime_s=86400), None, cache_size=cache_size
    )


def authenticate_all(auth: Authenticator, headers: list[list[tuple[bytes, bytes]]]) -> None:
    async def each() -> None:
        for header in headers:
            await auth.authenticate(header)

    asyncio.run(each())


def algorithm_rows(count: int, now: int) -> list[tuple[str, float, float, float, float]]:
    keys = (("ES256", ec.generate_private_key(ec.SECP256R1())), ("EdDSA", ed25519.Ed25519PrivateKey.generate()))
    return [algorithm_row(alg, key, count, now) for alg, key in keys]


def algorithm_row(alg: str, key: Any, count: int, now: int) -> tuple[str, float, float, float, float]:
    """(alg, signature alone, PyJWT decode, smsguard new token, smsguard cached) in µs per token."""
    issuer = f"https://{alg.lower()}.example"
    batch = tokens(key, issuer, alg, count, now)
    headers = [[(b"authorization", f"Bearer {token}".encode())] for token in batch]
    public = key.public_key()
    signed = [token.rsplit(".", 1) for token in batch]
    signatures = [jwt.utils.base64url_decode(sig) for _, sig in signed]
    if alg == "ES256":
        signatures = [raw_to_der_signature(sig, public.curve) for sig in signatures]

    def floor() -> None:
        for (body, _), signature in zip(signed, signatures, strict=True):
            if alg == "ES256":
                public.verify(signature, body.encode(), ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(signature, body.encode())

    def pyjwt() -> None:
        for token in batch:
            jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=issuer)

    def fresh() -> None:  # a cache of size 0: every token is verified
        authenticate_all(authenticator(key, issuer, alg, 0), headers)

    cached = authenticator(key, issuer, alg, count)
    authenticate_all(cached, headers)
    hit = per_token(lambda: authenticate_all(cached, headers), count)
    return alg, per_token(floor, count), per_token(pyjwt, count), per_token(fresh, count), hit


def memory(entries: int, now: int) -> tuple[float, float]:
    """(bytes per cached entry by tracemalloc, RSS growth in MiB) for `entries` EdDSA tokens in the cache."""
    key = ed25519.Ed25519PrivateKey.generate()
    batch = tokens(key, "https://mem.example", "EdDSA", entries, now)
    headers = [[(b"authorization", f"Bearer {token}".encode())] for token in batch]
    del batch
    auth = authenticator(key, "https://mem.example", "EdDSA", entries)
    process = psutil.Process()
    gc.collect()
    rss = process.memory_info().rss
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    authenticate_all(auth, headers)
    gc.collect()
    traced = (tracemalloc.get_traced_memory()[0] - before) / entries
    tracemalloc.stop()
    grown = (process.memory_info().rss - rss) / 2**20
    return traced, grown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per timing pass")
    parser.add_argument("--entries", type=int, default=100_000, help="tokens cached for the memory figure")
    args = parser.parse_args()
    now = int(time.time())
    rows = algorithm_rows(args.tokens, now)
    traced, grown = memory(args.entries, now)
    lines = [
        "# Token verification and the verified-token cache (bench/token_cache.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {sys.version.split()[0]}, "
        f"PyJWT {jwt.__version__}, {args.tokens:,} tokens per pass, "
        "CPU µs per token (median of 5 passes), in-process: no HTTP, no store.",
        "",
        "| algorithm | signature alone | PyJWT `jwt.decode` | smsguard, new token | smsguard, cached "
        "| new / PyJWT | new / signature |",
        "|---|---|---|---|---|---|---|",
    ]
    for alg, floor, pyjwt, fresh, hit in rows:
        figures = f"| {alg} | {floor:.1f} | {pyjwt:.1f} | {fresh:.1f} | {hit:.1f} "
        lines.append(figures + f"| {fresh / pyjwt:.2f}x | {fresh / floor:.2f}x |")
    lines += [
        "",
        f"Memory: {traced:,.0f} bytes per cached token (tracemalloc); {args.entries:,} cached tokens grew this "
        f"process's RSS by {grown:.0f} MiB. `auth.token_cache_size` (default 100,000 per worker) bounds it.",
        "",
    ]
    report = "\n".join(lines)
    (BENCH / "TOKEN_CACHE.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
