"""metrics.py: `GET /metrics` after a mix of requests, token-exchange and reload counters, configuration,
and several workers aggregated through prometheus_client's multiprocess mode."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from platform import python_version

import httpx
import pytest
from fakes import FakeSMSPortal, RecordingUpstream, UvicornServer
from gatewayconfig import ADMIN_BY_BASIC, OPS_AUTH, OPS_PASSWORD, GatewayConfig
from observed import JSON_REPLY, Env, observed
from processes import free_port, gateway_process
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from providersconfig import SMSPORTAL_ID, SMSPORTAL_SECRET, ProvidersConfig

from gateway.app import create_app
from gateway.config.settings import parse_settings
from gateway.errors import LoadError
from gateway.observe.logs import LogCapture, NullSink
from gateway.observe.metrics import LATENCY_BUCKETS, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MESSAGES = "/3rdparty/v1/messages"
REQUEST_SECONDS = "smsguard_request_duration_seconds"
UPSTREAM_SECONDS = "smsguard_upstream_duration_seconds"
SMSPORTAL = "{type: smsportal, client_id: '${T_SMSPORTAL_ID}', api_secret: '${T_SMSPORTAL_SECRET}'}"


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def only(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def scrape(client: httpx.AsyncClient, path: str = "/metrics") -> Samples:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with observed(tmp_path) as env:
        yield env


async def test_counters_after_a_mix_of_requests(env: Env) -> None:
    """Requests by route, decision and status; latency histograms; 401 reasons; in-flight; policy version."""
    await env.client.get("/healthz")
    await env.client.get("/healthz")
    sender, reader = await env.bearer("messages:send"), await env.bearer("messages:read")
    for _ in range(3):
        assert (await env.client.post("/3rdparty/v1/messages", headers=sender)).status_code == 202
    for _ in range(2):
        assert (await env.client.post("/3rdparty/v1/messages")).status_code == 401
    assert (await env.client.post("/3rdparty/v1/messages", headers=reader)).status_code == 403
    garbage = {"authorization": "Bearer not-a-jwt"}
    assert (await env.client.post("/3rdparty/v1/messages", headers=garbage)).status_code == 401
    assert (await env.client.get("/3rdparty/v1/nowhere", headers=sender)).status_code == 404
    assert (await env.client.get("/3rdparty/v1//messages")).status_code == 400
    await env.requests(9)  # every one of them finished (the access event comes after the metrics)

    samples = await scrape(env.client)
    assert only(samples, "smsguard_requests_total") == {
        labels(method="POST", route=MESSAGES, decision="allow", status="202"): 3,
        labels(method="POST", route=MESSAGES, decision="deny", status="401"): 3,
        labels(method="POST", route=MESSAGES, decision="deny", status="403"): 1,
        labels(method="GET", route="none", decision="deny", status="404"): 1,
        labels(method="GET", route="none", decision="deny", status="400"): 1,
    }
    assert only(samples, "smsguard_request_duration_seconds_count") == {
        labels(method="POST", route=MESSAGES): 7,
        labels(method="GET", route="none"): 2,
    }
    assert only(samples, "smsguard_probe_requests_total") == {labels(route="/healthz", status="200"): 2}
    assert only(samples, "smsguard_upstream_duration_seconds_count") == {labels(upstream="smsgate"): 3}
    assert 0 < samples[("smsguard_upstream_duration_seconds_sum", labels(upstream="smsgate"))] < 5
    assert samples[("smsguard_upstream_duration_seconds_bucket", labels(upstream="smsgate", le="+Inf"))] == 3
    assert only(samples, "smsguard_token_verification_failures_total") == {
        labels(reason="invalid_token:malformed"): 1  # a missing token is not a verification failure
    }
    assert only(samples, "smsguard_in_flight_requests") == {labels(): 1}  # this scrape
    assert only(samples, "smsguard_policy_version_info") == {labels(version=env.gateway.runtime.version): 1}
    assert only(samples, "smsguard_policy_reloads_total") == {}

    again = await scrape(env.client)
    assert again[("smsguard_probe_requests_total", labels(route="/metrics", status="200"))] == 1
    assert only(again, "smsguard_requests_total") == only(samples, "smsguard_requests_total")  # scrapes apart


async def test_token_exchange_logins_and_cache_hits(tmp_path: Path) -> None:
    """One login serves three requests (two cache hits); a provider refusing the login counts a failure."""
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET) as portal:
        config = ProvidersConfig(tmp_path).add("smsportal", portal.url + "/v1", SMSPORTAL)
        gateway = create_app(config.settings(), log_sink=NullSink())
        bearer = {"authorization": f"Bearer {config.token('messages:send', gateway=gateway)}"}
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(3):
                assert (await client.post("/smsportal/v1/bulkmessages", json={}, headers=bearer)).status_code == 200
            samples = await scrape(client)
    assert only(samples, "smsguard_upstream_token_logins_total") == {
        labels(upstream="smsportal", kind="login", outcome="ok"): 1
    }
    assert only(samples, "smsguard_upstream_token_cache_hits_total") == {labels(upstream="smsportal"): 2}

    async with FakeSMSPortal(SMSPORTAL_ID, "not-the-secret") as portal:
        config = ProvidersConfig(tmp_path).add("smsportal", portal.url + "/v1", SMSPORTAL)
        gateway = create_app(config.settings(), log_sink=NullSink())
        bearer = {"authorization": f"Bearer {config.token('messages:send', gateway=gateway)}"}  # its own epoch
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.post("/smsportal/v1/bulkmessages", json={}, headers=bearer)).status_code == 502
            samples = await scrape(client)
    assert only(samples, "smsguard_upstream_token_logins_total") == {
        labels(upstream="smsportal", kind="login", outcome="failed"): 1
    }
    failed = labels(method="POST", route="/smsportal/v1/bulkmessages", decision="allow", status="502")
    assert samples[("smsguard_requests_total", failed)] == 1


async def test_policy_reloads_and_version(env: Env) -> None:
    """Reloads by outcome; the version gauge moves to the new version (the old one reads 0)."""
    first = env.gateway.runtime.version
    path = Path(env.gateway.settings.file)
    assert await env.gateway.reload()  # nothing changed
    path.write_text(path.read_text() + "\n# an edit\n")
    assert await env.gateway.reload()
    second = env.gateway.runtime.version
    path.write_text(path.read_text() + "bogus: 1\n")
    assert not await env.gateway.reload()
    samples = await scrape(env.client)
    assert only(samples, "smsguard_policy_reloads_total") == {
        labels(outcome="unchanged"): 1,
        labels(outcome="ok"): 1,
        labels(outcome="rejected"): 1,
    }
    assert only(samples, "smsguard_policy_version_info") == {labels(version=first): 0, labels(version=second): 1}


async def test_metrics_path_is_configurable_and_can_be_off(tmp_path: Path) -> None:
    """metrics.path moves the endpoint (the old path falls through to the policy: 404); enabled: false removes it."""
    async with observed(tmp_path, extra="metrics: {path: /internal/metrics}\n") as env:
        await scrape(env.client, "/internal/metrics")
        assert (await env.client.get("/metrics")).status_code == 404
    async with observed(tmp_path, extra="metrics: {enabled: false}\n") as env:
        response = await env.client.get("/metrics")
        assert response.status_code == 404
        event = await env.next_request()
        assert (event["route"], event["reason"]) == ("none", "no_route")  # the access log goes on without metrics


async def test_two_gateways_in_one_process_count_separately(tmp_path: Path) -> None:
    """Each Gateway owns its registry: requests to one never show in the other's /metrics."""
    async with RecordingUpstream(JSON_REPLY) as upstream:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = create_app(
            GatewayConfig(tmp_path / "a", upstream.url + "/3rdparty/v1").settings(), log_sink=LogCapture()
        )
        second = create_app(
            GatewayConfig(tmp_path / "b", upstream.url + "/3rdparty/v1").settings(), log_sink=LogCapture()
        )
        async with (
            UvicornServer(first, lifespan="on") as a,
            UvicornServer(second, lifespan="on") as b,
            httpx.AsyncClient(base_url=a.url) as client_a,
            httpx.AsyncClient(base_url=b.url) as client_b,
        ):
            for _ in range(3):
                await client_a.get("/3rdparty/v1/nowhere")
            await asyncio.sleep(0.05)
            counted_a = only(await scrape(client_a), "smsguard_requests_total")
            counted_b = only(await scrape(client_b), "smsguard_requests_total")
    assert counted_a == {labels(method="GET", route="none", decision="deny", status="404"): 3}
    assert counted_b == {}


def test_request_histograms_fill_buckets_as_prometheus_client_does() -> None:
    """observe_request updates the histograms' buckets and sums directly: the same samples as
    `Histogram.observe` gives (a value on a bucket's bound counts in that bucket)."""
    metrics = Metrics()
    registry = CollectorRegistry()
    durations = Histogram(REQUEST_SECONDS, "", ("method", "route"), buckets=LATENCY_BUCKETS, registry=registry)
    upstreams = Histogram(UPSTREAM_SECONDS, "", ("upstream",), buckets=LATENCY_BUCKETS, registry=registry)
    values = [0.0, 0.0004, 0.001, 0.0010001, 0.0025, 0.003, 0.7, 1.0, 29.9, 30.0, 30.5, 1e9]
    for value in values:
        metrics.observe_request("POST", MESSAGES, "allow", 202, value, "smsgate", value / 2)
        durations.labels("POST", MESSAGES).observe(value)
        upstreams.labels("smsgate").observe(value / 2)
    ours, theirs = parse(metrics.render()[0].decode()), parse(generate_latest(registry).decode())
    for name in (REQUEST_SECONDS, UPSTREAM_SECONDS):
        for sample in (f"{name}_bucket", f"{name}_count", f"{name}_sum"):
            assert only(ours, sample) == only(theirs, sample), sample
    assert only(ours, "smsguard_requests_total") == {
        labels(method="POST", route=MESSAGES, decision="allow", status="202"): 12
    }


async def test_standard_collectors_build_info_and_openmetrics(env: Env) -> None:
    """process_* and python_* from prometheus_client's collectors, smsguard_build_info, and the OpenMetrics
    format for a scraper that asks for it (Prometheus text otherwise)."""
    samples = await scrape(env.client)
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert any(name.startswith("python_gc_") for name in names)
    assert samples[("smsguard_build_info", labels(version=version("smsguard"), python=python_version()))] == 1
    accept = {"accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}
    response = await env.client.get("/metrics", headers=accept)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "smsguard_requests_total" not in response.text or "# TYPE smsguard_requests counter" in response.text


def test_unusual_methods_share_one_label() -> None:
    """The method label is bounded: a method outside GET ... OPTIONS is counted as OTHER."""
    from gateway.observe.events import route_label

    assert route_label("PROPFIND", "").rstrip() == "OTHER"


# ------------------------------------------------------------------------------------------------ workers


def wait_for_workers(port: int, count: int) -> None:
    """Until `count` different workers have answered (each connection may land on any of them); a worker is
    told apart by when it loaded its config."""
    seen: set[float] = set()
    deadline = time.monotonic() + 20
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {len(seen)} workers answered"
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", auth=OPS_AUTH, timeout=2)
        seen.add(ready.json()["policy"]["loaded_at"])


@pytest.mark.slow
def test_several_workers_are_aggregated(tmp_path: Path) -> None:
    """--workers 2: every scrape, whichever worker answers it, counts the requests of both; JSON lines on stderr."""
    upstream_port = free_port()
    config = GatewayConfig(
        tmp_path,
        f"http://127.0.0.1:{upstream_port}/3rdparty/v1",
        store="redis://127.0.0.1:6379/0",  # workers must share a store (memory:// refuses to start)
        extra="reload: {watch: false}\n" + ADMIN_BY_BASIC,
    )
    path = config.write()
    port = free_port()
    log = tmp_path / "gateway.log"
    with gateway_process(
        path, config.env, "--workers", "2", "--log-format", "json", port=port, output=log, timeout_s=30
    ):
        wait_for_workers(port, 2)
        for _ in range(20):  # a new connection each: spread over the workers
            assert httpx.get(f"http://127.0.0.1:{port}/3rdparty/v1/nowhere", timeout=5).status_code == 404
        totals = set()
        for _ in range(6):
            samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            none = labels(method="GET", route="none", decision="deny", status="404")
            totals.add(samples[("smsguard_requests_total", none)])
        assert totals == {20.0}
        assert samples[(f"{REQUEST_SECONDS}_count", labels(method="GET", route="none"))] == 20
        assert samples[(f"{REQUEST_SECONDS}_bucket", labels(method="GET", route="none", le="+Inf"))] == 20
        assert samples[("smsguard_build_info", labels(version=version("smsguard"), python=python_version()))] == 1
        assert samples[("smsguard_in_flight_requests", labels())] == 1
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 20
    assert len({line["event"] for line in lines if line.get("logger") == "uvicorn.error"}) > 2
    assert sum(line["event"] == "policy.loaded" for line in lines) == 2  # one per worker


@pytest.mark.slow
def test_separate_metrics_listener(tmp_path: Path) -> None:
    """metrics.port: the aggregate is served on its own listener; the main port no longer answers /metrics."""
    metrics_port = free_port()
    config = GatewayConfig(
        tmp_path,
        "http://127.0.0.1:9/3rdparty/v1",
        extra=f"metrics: {{port: {metrics_port}}}\nreload: {{watch: false}}\n",
    )
    path = config.write()
    port = free_port()
    with gateway_process(
        path, config.env, "--log-format", "json", port=port, output=tmp_path / "gateway.log", timeout_s=30
    ):
        token = httpx.post(
            f"http://127.0.0.1:{port}/3rdparty/v1/auth/token",
            json={"scopes": ["messages:send"]},
            auth=("ops", OPS_PASSWORD),
        )
        assert token.status_code == 201
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        samples = parse(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text)
    counted = only(samples, "smsguard_requests_total")
    assert counted[labels(method="POST", route="/3rdparty/v1/auth/token", decision="allow", status="201")] == 1
    assert counted[labels(method="GET", route="none", decision="deny", status="404")] == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: {path: metrics}\n", "config.yaml:1:17: metrics.path: not a plain absolute path: 'metrics'"),
        ("metrics: {path: /healthz}\n", "config.yaml:1:17: metrics.path: /healthz is already answered by the gateway"),
        ("metrics: {port: 70000}\n", "config.yaml:1:17: metrics.port: not a TCP port: 70000"),
        ("metrics: {enabled: 1}\n", "config.yaml:1:20: metrics.enabled: expected true or false, got int 1"),
    ],
)
def test_metrics_config_errors_name_file_line_and_key(text: str, message: str) -> None:
    """Mistakes in `metrics:` are LoadErrors with file:line:column and the dotted key."""
    with pytest.raises(LoadError) as caught:
        parse_settings(text, env={})
    assert str(caught.value).startswith(message)


def test_metrics_config_defaults() -> None:
    """On at /metrics of the main port by default; a port moves them to their own listener (127.0.0.1)."""
    default = parse_settings("store: memory://\n", env={}).metrics
    assert (default.enabled, default.path, default.port, default.served_path) == (True, "/metrics", None, "/metrics")
    own = parse_settings("metrics: {port: 9100}\n", env={}).metrics
    assert (own.port, own.host, own.served_path) == (9100, "127.0.0.1", None)
    assert parse_settings("metrics: {enabled: false}\n", env={}).metrics.served_path is None


def test_readme_metrics_table_matches_the_metrics() -> None:
    """README's metrics table lists every smsguard_* metric with exactly its labels (and nothing else)."""
    import re

    from prometheus_client.metrics import MetricWrapperBase

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("**Metrics**", 1)[1].split("\n\n", 2)[1]
    documented = {}
    for row in table.splitlines()[2:]:
        name, _, label_cell = (cell.strip() for cell in row.strip("|").split("|"))
        if name.startswith("`smsguard_"):
            documented[name.strip("`")] = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", label_cell)))
    registered = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            registered[name] = set(metric._labelnames)
    assert documented == registered
