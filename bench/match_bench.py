"""Match cost for 10 vs 10,000 rules: the compiled matcher must not slow down as policies grow.

Run: `.venv/bin/python bench/match_bench.py`. Each policy has the same shape (a literal route and a
`{id}` route per resource, several methods); the lookups mix a first, middle and last rule, a
parameter route and a miss. Goal: per-match cost at 10,000 rules within 2x of 10 rules.
"""

from __future__ import annotations

import platform
import sys
import time
import timeit

from gateway.policy.loader import parse_policy
from gateway.policy.matcher import Matcher
from gateway.policy.model import Policy
from gateway.policy.paths import canonical_path

ROUNDS = 7
NUMBER = 20_000


def make_policy(n_rules: int) -> Policy:
    """A policy of `n_rules` rules over n_rules/2 resources, written as YAML and loaded for real."""
    lines = ["mount: /api/v1", "scopes: {r:read: Read, r:write: Write}", "rules:"]
    for index in range(n_rules // 2):
        lines.append(f"  - {{method: GET, path: /res{index}/items, scope: r:read}}")
        lines.append(f'  - {{methods: [PUT, DELETE], path: "/res{index}/items/{{id}}", scope: r:write}}')
    return parse_policy("\n".join(lines) + "\n", f"<{n_rules} rules>")


def lookups(n_rules: int) -> list[tuple[str, str]]:
    last = n_rules // 2 - 1
    return [
        ("GET", "/api/v1/res0/items"),
        ("GET", f"/api/v1/res{last // 2}/items"),
        ("GET", f"/api/v1/res{last}/items"),
        ("DELETE", f"/api/v1/res{last}/items/msg-42"),
        ("GET", "/api/v1/nope/items"),
    ]


def measure(n_rules: int) -> tuple[float, float, float, float]:
    """(load seconds, compile seconds, ns per match, ns per canonical_path + match)."""
    started = time.perf_counter()
    policy = make_policy(n_rules)
    loaded = time.perf_counter()
    matcher = Matcher([policy])
    compiled = time.perf_counter()
    requests = lookups(n_rules)
    raw = [(method, path.encode()) for method, path in requests]
    assert [matcher.match(m, p) is not None for m, p in requests] == [True, True, True, True, False]

    def match_only() -> None:
        for method, path in requests:
            matcher.match(method, path)

    def with_canonical() -> None:
        for method, path in raw:
            matcher.match(method, canonical_path(path))

    per_call = len(requests) * NUMBER
    match_ns = min(timeit.repeat(match_only, number=NUMBER, repeat=ROUNDS)) / per_call * 1e9
    full_ns = min(timeit.repeat(with_canonical, number=NUMBER, repeat=ROUNDS)) / per_call * 1e9
    return loaded - started, compiled - loaded, match_ns, full_ns


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()} ({sys.platform})")
    print(f"best of {ROUNDS} x {NUMBER} rounds of 5 lookups (3 literal hits, 1 param hit, 1 miss)")
    print(f"{'rules':>6} {'load (YAML)':>12} {'compile':>10} {'match':>9} {'canonical+match':>16}")
    results = {}
    for n_rules in (10, 10_000):
        load_s, compile_s, match_ns, full_ns = measure(n_rules)
        results[n_rules] = match_ns
        print(f"{n_rules:>6} {load_s * 1000:>10.1f}ms {compile_s * 1000:>8.1f}ms {match_ns:>7.0f}ns {full_ns:>14.0f}ns")
    ratio = results[10_000] / results[10]
    print(f"ratio 10,000 / 10 rules: {ratio:.2f}x (goal within 2x: {'met' if ratio <= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
