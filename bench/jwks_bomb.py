"""A JWKS decompression bomb against the verifier: memory, the triggering request, and other issuers.

    .venv/bin/python bench/jwks_bomb.py [--rounds 3] [--timeout 1.0] [--pre-fix]

A loopback JWKS server (`tests/fakes/jwks.py`, its own thread) answers with `Content-Encoding: gzip` or
`gzip, gzip` and a body that decodes to 64 MiB or 1 GiB of zeros (65 KB, 1 MB and 2.5 KB on the wire).
Each scenario runs in a fresh process, so RSS figures do not carry over. In each:

- a TokenVerifier with two issuers: `corp` (JWKS at the bomb, `jwks_timeout_s` = --timeout) and `other`
  (a configured EdDSA key: it never needs a fetch);
- a loop verifies `other` tokens back to back with a 5 ms pause (as between requests) from 0.2 s before
  the bomb fetch until 0.3 s after it; each round's time (pause included) is recorded;
- one `corp` token triggers the fetch; its time to the 401 is recorded;
- a thread samples this process's RSS every 2 ms: the peak minus the baseline is the growth.

`--pre-fix` adds the same scenarios against the fetch as it was before issue 22 (httpx's default
`Accept-Encoding`, `aiter_bytes()` decoding every layer, the 512 KiB cap applied after decoding),
reproduced inline here, for comparison on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MIB = 1 << 20
NOW = time.time()
BOMBS: dict[str, tuple[int, tuple[str, ...]]] = {
    "none": (0, ()),
    "gzip 64 MiB": (64 * MIB, ("gzip",)),
    "gzip 1 GiB": (1024 * MIB, ("gzip",)),
    "gzip, gzip 1 GiB": (1024 * MIB, ("gzip", "gzip")),
}


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


async def scenario(bomb: str, code: str, timeout: float) -> dict[str, Any]:
    import httpx
    from fakes.jwks import gzip_bomb, jwks_server
    from keys import ed_key, public_jwk, public_pem, rsa_key, sign

    from gateway.auth.jwks import MAX_JWKS_BYTES
    from gateway.auth.jwt import TokenVerifier
    from gateway.config.settings import IssuerSettings, KeySettings, Secret
    from gateway.errors import Unauthorized

    def token(iss: str, key: Any, alg: str, kid: str) -> str:
        claims = {"iss": iss, "sub": "svc", "aud": "a", "iat": int(NOW), "exp": int(NOW) + 600}
        return sign(claims, key, alg, kid=kid)

    size, encoding = BOMBS[bomb]
    with jwks_server() as server:
        if size:
            server.body, server.encoding = gzip_bomb(size, len(encoding)), encoding
        else:
            server.document = {"keys": [public_jwk(rsa_key(), "other-kid")]}
        corp = IssuerSettings("corp", "corp", ("a",), ("RS256",), jwks_url=server.url, jwks_timeout_s=timeout)
        other_key = KeySettings("EdDSA", Secret(public_pem(ed_key())), "e1")
        other = IssuerSettings("other", "other", ("a",), ("EdDSA",), keys=(other_key,))
        verifier = TokenVerifier([corp, other], leeway_s=30, max_token_lifetime_s=3600)
        corp_token = token("corp", rsa_key(), "RS256", "k1")
        other_token = token("other", ed_key(), "EdDSA", "e1")
        await verifier.verify(other_token)  # warm

        async def pre_fix_fetch() -> None:  # the download of main 80f696c, on an identical client
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=5.0) as http:
                async with asyncio.timeout(timeout):
                    async with http.stream("GET", server.url, timeout=timeout) as response:
                        body = bytearray()
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_JWKS_BYTES:
                                raise ValueError("JWKS document too large")

        async def trigger() -> float:
            started = time.perf_counter()
            try:
                if code == "fixed":
                    await verifier.verify(corp_token)
                else:
                    await pre_fix_fetch()
            except (Unauthorized, ValueError, TimeoutError):
                pass
            return time.perf_counter() - started

        rounds: list[float] = []
        stop = asyncio.Event()

        async def others() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.005)
                await verifier.verify(other_token)
                rounds.append(time.perf_counter() - started)

        peak = baseline = _rss()
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.002):
                peak = max(peak, _rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        loop = asyncio.create_task(others())
        await asyncio.sleep(0.2)
        triggered = await trigger()
        await asyncio.sleep(0.3)
        stop.set()
        await loop
        sampling.set()
        sampler.join()
        await verifier.aclose()
    ordered = sorted(rounds)
    return {
        "bomb": bomb,
        "code": code,
        "rss_growth_mib": round((max(peak, _rss()) - baseline) / MIB, 1),
        "trigger_s": round(triggered, 3),
        "other_rounds": len(rounds),
        "other_p50_ms": round(statistics.median(ordered) * 1000, 2),
        "other_p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
        "other_max_ms": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1.0, help="jwks_timeout_s")
    parser.add_argument("--pre-fix", action="store_true", help="also measure the pre-issue-22 fetch")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # "<code>|<bomb>": run one, print JSON
    args = parser.parse_args()
    if args.scenario:
        code, bomb = args.scenario.split("|")
        print(json.dumps(asyncio.run(scenario(bomb, code, args.timeout))))
        return
    codes = ["fixed", "pre-fix"] if args.pre_fix else ["fixed"]
    header = f"{'code':8} {'bomb':18} {'RSS growth MiB':>14} {'trigger s':>9} {'other p50 ms':>12} "
    header += f"{'p99 ms':>8} {'max ms':>8}"
    print(f"jwks_timeout_s={args.timeout}, {args.rounds} rounds each (median of rounds; max: worst round)")
    print(header)
    for code in codes:
        for bomb in BOMBS:
            results = []
            for _ in range(args.rounds):
                out = subprocess.run(
                    [sys.executable, __file__, "--scenario", f"{code}|{bomb}", "--timeout", str(args.timeout)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))

            def med(name: str, rows: list[dict[str, Any]] = results) -> float:
                return float(statistics.median(r[name] for r in rows))

            worst = max(r["other_max_ms"] for r in results)
            print(
                f"{code:8} {bomb:18} {med('rss_growth_mib'):>14.1f} {med('trigger_s'):>9.3f} "
                f"{med('other_p50_ms'):>12.2f} {med('other_p99_ms'):>8.2f} {worst:>8.1f}"
            )


if __name__ == "__main__":
    main()
