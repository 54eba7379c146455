"""Gateway configs in front of the fake providers: each under its shipped policy and mount, canary secrets.

    config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", "{type: bsg_v2, api_key: '${T_BSG_KEY}'}")
    gateway = create_app(config.settings())
    token = config.token("messages:send", gateway=gateway)  # in that gateway's store epoch

Secrets live in `ENV` and reach the config only as `${VAR}`; every one is a canary (`PROVIDER_CANARIES`) that
must never show up in a response, a log record or an exception. An upstream named differently from the
shipped policy's (`name=`, for tests sharing one Redis) gets a copy of that policy naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from gateway.config.settings import Settings, load_settings
from gateway.tokens.mint import TokenIssuer

if TYPE_CHECKING:
    from gateway.app import Gateway

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

TOKEN_SECRET = "canary-providers-token-secret-" + "p" * 16
BSG_KEY = "live_canaryBsgKey3f9a1c"
BSG_WRONG_KEY = "live_canaryBsgWrongKey77e0"
SMSPORTAL_ID = "canary-smsportal-client-51d2"
SMSPORTAL_SECRET = "canary-smsportal-secret-a8c3"
SGC_KEY = "canary-sgc-api-key-0b6e"
SGC_USER = "canary-sgc-user-6d21"
SGC_PASSWORD = "canary-sgc-password-e41f"
SMSGATE_USER = "canary-smsgate-user-2c7b"
SMSGATE_PASSWORD = "canary-smsgate-password-9a5d"
PROVIDER_CANARIES = (
    BSG_KEY,
    BSG_WRONG_KEY,
    SMSPORTAL_ID,
    SMSPORTAL_SECRET,
    SGC_KEY,
    SGC_USER,
    SGC_PASSWORD,
    SMSGATE_USER,
    SMSGATE_PASSWORD,
)
ENV = {
    "T_TOKEN_SECRET": TOKEN_SECRET,
    "T_BSG_KEY": BSG_KEY,
    "T_BSG_WRONG_KEY": BSG_WRONG_KEY,
    "T_SMSPORTAL_ID": SMSPORTAL_ID,
    "T_SMSPORTAL_SECRET": SMSPORTAL_SECRET,
    "T_SGC_KEY": SGC_KEY,
    "T_SGC_USER": SGC_USER,
    "T_SGC_PASSWORD": SGC_PASSWORD,
    "T_SMSGATE_USER": SMSGATE_USER,
    "T_SMSGATE_PASSWORD": SMSGATE_PASSWORD,
}


@dataclass
class ProvidersConfig:
    """A config.yaml with one upstream per `add`, the gateway's own HS256 tokens, and `ENV` for its secrets."""

    directory: Path
    store: str = "memory://"
    proxy: str = ""  # the body of a `proxy:` block, e.g. "{retry_buffer_bytes: 16}"
    extra: str = ""  # more top-level config lines, e.g. "admin: {issuer: self}\n"
    upstreams: list[tuple[str, str, str, Path]] = field(default_factory=list)
    gateway: Gateway | None = None  # set by the tests' `serve`: whose store epoch `token` mints in

    @property
    def env(self) -> dict[str, str]:
        return dict(ENV)

    def add(self, policy: str, url: str, credentials: str, *, name: str | None = None, append: str = "") -> Self:
        """Serve the shipped `policies/{policy}.yaml` by an upstream at `url` with these credentials (YAML flow);
        `append` is added to the end of a copy of the policy (e.g. `  destinations: ...` under its `sms:`)."""
        name = name or policy
        path = POLICIES / f"{policy}.yaml"
        if name != policy or append:
            text = path.read_text().replace(f"upstream: {policy}\n", f"upstream: {name}\n") + append
            path = self.directory / f"{name}.policy.yaml"
            path.write_text(text)
        self.upstreams.append((name, url, credentials, path))
        return self

    def write(self) -> Path:
        policies = ", ".join(str(path) for *_, path in self.upstreams)
        upstreams = "".join(
            f"  {name}:\n    url: {url}\n    read_timeout_s: 5\n    pool_size: 256\n    credentials: {credentials}\n"
            for name, url, credentials, _ in self.upstreams
        )
        text = (
            "listen: {host: 127.0.0.1, port: 0}\n"
            f"store: {self.store}\n"
            f"policies: [{policies}]\n"
            "tokens:\n  enabled: true\n  keys:\n"
            '    - {kid: k1, algorithm: HS256, secret: "${T_TOKEN_SECRET}"}\n'
            f"upstreams:\n{upstreams}" + (f"proxy: {self.proxy}\n" if self.proxy else "") + self.extra
        )
        path = self.directory / "config.yaml"
        path.write_text(text)
        return path

    def settings(self) -> Settings:
        """Write the file and load it (the gateway watches it: write before starting, never after)."""
        return load_settings(self.write(), env=self.env)

    def token(self, *scopes: str, gateway: Gateway | None = None) -> str:
        """A client access token of the gateway's own issuer, in the store epoch of `gateway` (default: the
        one `serve` last started for this config); nothing is written to the store or the disk."""
        gateway = gateway or self.gateway
        if gateway is not None:
            epoch = gateway.store.current_epoch()
            assert epoch is not None
            ident = epoch.id
        else:  # processes on a shared Redis: its epoch record (created as a gateway would)
            assert self.store.startswith("redis"), "name the gateway whose store epoch the token belongs to"
            ident = redis_epoch(self.store)
        issuer = TokenIssuer(load_settings(self.directory / "config.yaml", env=self.env).tokens)
        return issuer.mint_pair("app-1", scopes, 300, grant={"ep": ident}).access.token


def redis_epoch(url: str, prefix: str = "smsguard:") -> str:
    """The store epoch id in the Redis at `url` (SET NX first, as a gateway's first start does)."""
    import redis

    from gateway.store import Epoch

    client = redis.Redis.from_url(url)
    try:
        client.set(prefix + "epoch", Epoch.new().dump(), nx=True)
        epoch = Epoch.load(client.get(prefix + "epoch") or b"")
    finally:
        client.close()
    assert epoch is not None
    return epoch.id
