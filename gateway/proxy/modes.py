"""The forwarder with gateway keys: a client's key never reaches a provider, and test keys never cost money.

`KeyedProxy` is the `ProxyApp` for live traffic plus a second `ProxyApp` (`test`) holding a twin of each
upstream that has `test_url` and/or `test_credentials`:

    principal from a live key, a token, Basic   → the upstream, with `credentials`
    principal from a test key (`kmode: test`)   → the twin: `test_url` (else `url`) with `test_credentials`
                                                  (else none); no twin → 403, never forwarded

A twin is named `<upstream>:test`, so a token exchange caches its provider token apart from the live one.
On a mount whose policy enables a key slot, the slot's header (any spelling) and query parameters are
dropped from the request before it is forwarded (the parameters from the query and from a form body),
whatever the upstream injects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.config.credentials import NoneCredentialSettings
from gateway.config.settings import ProxySettings, UpstreamSettings
from gateway.errors import Forbidden
from gateway.keys.errors import provider_error_body
from gateway.keys.slots import SLOT_HEADERS, SLOT_PARAMS
from gateway.proxy.credentials import Credentials, build_credentials
from gateway.proxy.forward import STRIP_HEADERS, STRIP_PARAMS, ProxyApp
from gateway.proxy.headers import normalized_names
from gateway.tokens.lineage import is_test
from gateway.web.asgi import Receive, Scope, Send
from gateway.web.responses import send_json

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.guard.authorize import Decision
    from gateway.observe.metrics import Metrics
    from gateway.store import Store

__all__ = ["TEST_SUFFIX", "KeyedProxy", "test_twins"]

TEST_SUFFIX = ":test"


def test_twins(upstreams: Mapping[str, UpstreamSettings]) -> dict[str, UpstreamSettings]:
    """The test twin of every upstream that accepts test keys, keyed by the upstream's own name."""
    twins = {}
    for name, settings in upstreams.items():
        if not settings.accepts_test_keys:
            continue
        twins[name] = dataclasses.replace(
            settings,
            name=name + TEST_SUFFIX,
            url=settings.test_url or settings.url,
            credentials=settings.test_credentials or NoneCredentialSettings(),
            test_url=None,
            test_credentials=None,
        )
    return twins


class KeyedProxy(ProxyApp):
    """`ProxyApp` that strips key slots and sends test-key traffic to the upstreams' test twins."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamSettings],
        proxy: ProxySettings,
        credentials: Mapping[str, Credentials] | None = None,
        *,
        log: FilteringBoundLogger | None = None,
        metrics: Metrics | None = None,
        store: Store | None = None,
        slots: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(upstreams, proxy, credentials, log=log, metrics=metrics)
        twins = test_twins(upstreams)
        twin_credentials = {
            name: build_credentials(twin.credentials, name=twin.name, store=store, log=log, metrics=metrics)
            for name, twin in twins.items()
        }
        self.test_credentials = tuple(twin_credentials.values())
        self.test = ProxyApp(twins, proxy, twin_credentials, log=log, metrics=metrics)
        self._only = next(iter(upstreams)) if len(upstreams) == 1 else None
        self.slots = dict(slots or {})
        self._strip_headers = {
            mount: normalized_names(SLOT_HEADERS.get(style, ())) for mount, style in self.slots.items()
        }
        self._strip_params = {
            mount: frozenset(name.lower() for name in SLOT_PARAMS.get(style, ())) for mount, style in self.slots.items()
        }

    async def start(self) -> None:
        await super().start()
        await self.test.start()

    async def aclose(self) -> None:
        await super().aclose()
        await self.test.aclose()

    def ready(self) -> bool:
        return super().ready() and self.test.ready()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        decision: Decision | None = scope.get("smsguard") if scope["type"] == "http" else None
        if decision is None:
            await super().__call__(scope, receive, send)
            return
        mount = decision.rule.mount
        if mount in self.slots:
            self._strip(scope, mount)
        if not is_test(decision.principal):
            await super().__call__(scope, receive, send)
            return
        name = decision.rule.upstream or self._only
        if name is None or name not in self.test.upstreams:
            exc = Forbidden(
                f"test keys cannot be used on upstream {name}: it has no test_url or test_credentials",
                code="test_key_refused",
            )
            await send_json(send, exc.status, provider_error_body(self.slots.get(mount), exc), exc.headers)
            return
        await self.test(scope, receive, send)

    def _strip(self, scope: Scope, mount: str) -> None:
        """Drop the slot's header (every spelling) and parameters: a client key never goes upstream."""
        names = self._strip_headers[mount]
        if names:  # the forwarder drops them with the injected header's aliases, in its one pass
            scope[STRIP_HEADERS] = names
        params = self._strip_params[mount]
        if params:  # the forwarder drops them from the query and from a form body
            scope[STRIP_PARAMS] = params
