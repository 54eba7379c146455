"""Prometheus metrics, owned by one Gateway (its own `CollectorRegistry`: two apps never collide).

    smsguard_requests_total{method,route,decision,status} route: the rule's template ("/3rdparty/v1/messages"),
                                                          a gateway endpoint ("/auth/token"), or "none"; never a
                                                          raw path. method: GET ... OPTIONS, else OTHER
    smsguard_request_duration_seconds{method,route}       histogram, whole request in the gateway
    smsguard_probe_requests_total{route,status}           /healthz, /readyz and scrapes: kept out of the above
    smsguard_build_info{version,python}                   1; the installed smsguard and the Python running it
    process_*, python_*                                   prometheus_client's process, platform and GC collectors
                                                          (a single process's; not in multiprocess mode)
    smsguard_upstream_duration_seconds{upstream}          histogram, until the upstream's response headers
    smsguard_token_verification_failures_total{reason}    401s by reason code (invalid_token:expired, ...)
    smsguard_upstream_token_logins_total{upstream,kind,outcome}   token exchange logins/refreshes, ok|failed
    smsguard_upstream_token_cache_hits_total{upstream}    requests served with a cached provider token
    smsguard_policy_reloads_total{outcome}                ok | rejected | unchanged
    smsguard_policy_version_info{version}                 1 for the version being served
    smsguard_in_flight_requests                           gauge
    smsguard_jwks_fetches_total{issuer,outcome}           ok | http_error | compressed | too_large | invalid |
                                                          duplicate_kid | timeout | unreachable | error
    smsguard_jwks_keys{issuer}                            usable keys in the issuer's JWKS (0 once past max stale)
    smsguard_jwks_fetched_timestamp_seconds{issuer}       when the set in use was fetched: its age is
                                                          time() - this (a timestamp stays true between scrapes
                                                          and across workers; the oldest live worker's wins)
    smsguard_store_errors_total{reason}                   store calls that failed: timeout | error, or were
                                                          refused at once while the store is down: unavailable
    smsguard_store_up                                     gauge: 1 while the store answers (the breaker is closed)
    smsguard_store_resets_total                           the store's epoch changed: it lost its data

Several worker processes (`gateway serve --workers N`) use prometheus_client's multiprocess mode: the CLI
sets `PROMETHEUS_MULTIPROC_DIR` before any worker starts, every process writes its values there, and a
scrape of any worker (or of the separate metrics listener) aggregates all of them. prometheus_client picks
its value storage when it is first imported, so this module imports it lazily: the CLI can set the
directory after `import gateway`.

Hot-path cost: `observe_request` appends the latencies to per-label-set lists (a dict lookup and two
appends); `flush`, which the Observer calls after each event-loop iteration's batch of finished requests
(about 15 under load) and `render` before answering, adds them to prometheus_client's values: one
locked increment per counter, histogram sum and bucket touched per batch, instead of five per request.
Those values (the counter's; each histogram's sum and buckets) are incremented directly, as `Counter.inc`
and `Histogram.observe` do it (the same value objects, so multiprocess mode writes its files as usual),
without their per-call checks and linear bucket search.
"""

from __future__ import annotations

import os
import platform
from bisect import bisect_left
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

__all__ = ["LATENCY_BUCKETS", "MULTIPROC_ENV", "Metrics", "aggregate_registry"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Value(Protocol):
    """prometheus_client's value of one sample (a locked float, or an mmap slot in multiprocess mode)."""

    def inc(self, amount: float) -> None: ...


class _Timings:
    """Latencies for one histogram child (and, for a request series, its counter), held until `flush`."""

    __slots__ = ("bounds", "buckets", "count", "pending", "sum")

    def __init__(self, child: Histogram, count: _Value | None = None) -> None:
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)  # ends with +Inf
        self.buckets: list[_Value] = list(child._buckets)
        self.sum: _Value = child._sum
        self.count = count  # the requests counter of this label set, one per latency
        self.pending: list[float] = []

    def flush(self) -> None:
        pending, self.pending = self.pending, []  # taken first: a failing increment cannot strand the rest
        if self.count is not None:
            self.count.inc(len(pending))
        bounds = self.bounds
        counts = [0] * len(bounds)
        total = 0.0
        for seconds in pending:
            total += seconds
            counts[bisect_left(bounds, seconds)] += 1  # the first bucket with seconds <= its bound
        self.sum.inc(total)
        for bucket, count in zip(self.buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class Metrics:
    """The gateway's metrics; `render()` is the `/metrics` answer.

    `multiprocess_dir` (default: `$PROMETHEUS_MULTIPROC_DIR`, which is also what prometheus_client reads)
    switches rendering to the aggregate of every process writing to that directory.
    """

    def __init__(self, *, multiprocess_dir: str | None = None, registry: CollectorRegistry | None = None) -> None:
        """`registry`: register on this one (an app's, for the embedded guard) instead of a registry of its own."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        if multiprocess_dir is None:
            multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.multiprocess_dir = multiprocess_dir
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            if multiprocess_dir is None:  # a registry of its own: the standard process_* and python_* too
                _standard_collectors(registry)
        self.registry = registry
        self.requests = Counter(
            "smsguard_requests",
            "Requests answered, by method, route (policy rule or gateway endpoint), decision and status.",
            ("method", "route", "decision", "status"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "smsguard_request_duration_seconds",
            "Time from the request's arrival to the end of its answer, in the gateway.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.probes = Counter(
            "smsguard_probe_requests",
            "Health checks (/healthz, /readyz) and metrics scrapes answered, by route and status.",
            ("route", "status"),
            registry=registry,
        )
        self.build_info = Gauge(
            "smsguard_build_info",
            "1, labelled with the smsguard version and the Python version running it.",
            ("version", "python"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.build_info.labels(_smsguard_version(), platform.python_version()).set(1)
        self.upstream_duration = Histogram(
            "smsguard_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers (including a retry after a 401).",
            ("upstream",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.token_failures = Counter(
            "smsguard_token_verification_failures",
            "Requests refused with 401 because their credentials failed verification, by reason code.",
            ("reason",),
            registry=registry,
        )
        self.upstream_logins = Counter(
            "smsguard_upstream_token_logins",
            "Logins (kind=login) and token refreshes (kind=refresh) at token-exchange upstreams, by outcome.",
            ("upstream", "kind", "outcome"),
            registry=registry,
        )
        self.token_cache_hits = Counter(
            "smsguard_upstream_token_cache_hits",
            "Requests sent with a cached provider token (no login needed).",
            ("upstream",),
            registry=registry,
        )
        self.policy_reloads = Counter(
            "smsguard_policy_reloads",
            "Hot reloads of the config and policies, by outcome (ok, rejected, unchanged).",
            ("outcome",),
            registry=registry,
        )
        self.policy_version = Gauge(
            "smsguard_policy_version_info",
            "1 for the config+policy version being served (a hash of the files).",
            ("version",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "smsguard_in_flight_requests",
            "Requests being handled right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.jwks_fetches = Counter(
            "smsguard_jwks_fetches",
            "JWKS fetches by issuer and outcome (ok, or why the answer was not used).",
            ("issuer", "outcome"),
            registry=registry,
        )
        self.jwks_keys_in_use = Gauge(
            "smsguard_jwks_keys",
            "Usable signing keys in each issuer's current JWKS (0 once its keys are past jwks_max_stale_s).",
            ("issuer",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.jwks_fetched_at = Gauge(
            "smsguard_jwks_fetched_timestamp_seconds",
            "Unix time each issuer's JWKS in use was fetched; the key set's age is time() minus this.",
            ("issuer",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.store_errors = Counter(
            "smsguard_store_errors",
            "Store calls that failed (timeout, error) or were refused at once while the store is down (unavailable).",
            ("reason",),
            registry=registry,
        )
        self.store_up = Gauge(
            "smsguard_store_up",
            "1 while the store answers within its deadline, 0 while requests that need it get 503.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.store_up.set(1)
        self.store_resets = Counter(
            "smsguard_store_resets",
            "Times the store's epoch changed (it lost its data): tokens minted before are refused.",
            registry=registry,
        )
        self.basic_logins = Counter(
            "smsguard_basic_logins",
            "Basic logins by outcome: cached, verified, failed, repeated (a recent failure, not hashed again), "
            "limited_client, limited_user, busy, abandoned.",
            ("outcome",),
            registry=registry,
        )
        self.limit_refusals = Counter(
            "smsguard_limit_refusals",
            "Requests refused by limits: limit (its name, or destinations) and reason (rate, country, "
            "number_type, unparseable, max_recipients, prefix_velocity, store_unavailable).",
            ("limit", "reason"),
            registry=registry,
        )
        self.sms_recipients = Counter(
            "smsguard_sms_recipients",
            "Recipients of send requests forwarded, by upstream and destination country.",
            ("upstream", "country"),
            registry=registry,
        )
        self._aggregate: CollectorRegistry | None = None
        self._version: str | None = None
        self._request_series: dict[tuple[str, str, str, int], _Timings] = {}
        self._upstream_series: dict[str, _Timings] = {}
        self._unflushed: list[_Timings] = []

    def observe_request(
        self,
        method: str,
        route: str,
        decision: str,
        status: int,
        duration_s: float,
        upstream: str | None = None,
        upstream_s: float | None = None,
    ) -> None:
        """Count one answered request and its latencies (in the metrics at the next `flush`)."""
        key = (method, route, decision, status)
        series = self._request_series.get(key)
        if series is None:
            counter = self.requests.labels(method, route, decision, str(status))._value
            series = self._request_series[key] = _Timings(self.request_duration.labels(method, route), counter)
        self._hold(series, duration_s)
        if upstream is not None and upstream_s is not None:
            timings = self._upstream_series.get(upstream)
            if timings is None:
                timings = self._upstream_series[upstream] = _Timings(self.upstream_duration.labels(upstream))
            self._hold(timings, upstream_s)

    def _hold(self, timings: _Timings, seconds: float) -> None:
        if not timings.pending:  # first since the last flush: flush will visit it
            self._unflushed.append(timings)
        timings.pending.append(seconds)

    def flush(self) -> None:
        """Add the requests observed since the last flush to prometheus_client's values."""
        unflushed, self._unflushed = self._unflushed, []
        for timings in unflushed:
            timings.flush()

    def observe_probe(self, route: str, status: int) -> None:
        """Count a health check or scrape (`/healthz`, `/readyz`, the metrics path)."""
        self.probes.labels(route, str(status)).inc()

    def token_failure(self, reason: str) -> None:
        self.token_failures.labels(reason).inc()

    def upstream_login(self, upstream: str, kind: str, outcome: str) -> None:
        self.upstream_logins.labels(upstream, kind, outcome).inc()

    def jwks_fetch(self, issuer: str, outcome: str) -> None:
        self.jwks_fetches.labels(issuer, outcome).inc()

    def jwks_keys(self, issuer: str, keys: int, fetched_at: float) -> None:
        """The issuer's usable key count and when its set was fetched (gateway.auth.jwks.JwksMetrics)."""
        self.jwks_keys_in_use.labels(issuer).set(keys)
        self.jwks_fetched_at.labels(issuer).set(fetched_at)

    def basic_login(self, outcome: str) -> None:
        self.basic_logins.labels(outcome).inc()

    def limit_refused(self, limit: str, reason: str) -> None:
        self.limit_refusals.labels(limit, reason).inc()

    def sms_sent(self, upstream: str, country: str, recipients: int) -> None:
        self.sms_recipients.labels(upstream, country).inc(recipients)

    def store_error(self, reason: str) -> None:
        self.store_errors.labels(reason).inc()

    def store_state(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def store_reset(self) -> None:
        self.store_resets.inc()

    def policy_reload(self, outcome: str) -> None:
        self.policy_reloads.labels(outcome).inc()

    def serving(self, version: str) -> None:
        """Mark `version` as the one being served (the previous one drops to 0)."""
        previous, self._version = self._version, version
        if previous is not None and previous != version:
            self.policy_version.labels(previous).set(0)
        self.policy_version.labels(version).set(1)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: this registry, or every process's in multiprocess mode; in the
        OpenMetrics format when `accept` (the scraper's Accept header) asks for it, else Prometheus text."""
        from prometheus_client.exposition import choose_encoder

        self.flush()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._collecting()), content_type

    def _collecting(self) -> CollectorRegistry:
        if self.multiprocess_dir is None:
            return self.registry
        if self._aggregate is None:
            self._aggregate = aggregate_registry(self.multiprocess_dir)
        return self._aggregate

    def process_exiting(self) -> None:
        """In multiprocess mode, drop this process's live gauges (in-flight, version) from the aggregate."""
        self.flush()
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


def _standard_collectors(registry: CollectorRegistry) -> None:
    """prometheus_client's process_* (CPU, memory, file descriptors), python_info and python_gc_* collectors."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def _smsguard_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smsguard")
    except PackageNotFoundError:
        return "unknown"


def aggregate_registry(directory: str) -> CollectorRegistry:
    """A registry that collects every process's metrics from `directory` (the separate metrics listener)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry
