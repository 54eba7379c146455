"""Build gateway configs for tests: a real config.yaml on disk, secrets in an env mapping, policies shipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SMSGATE_POLICY = ROOT / "policies" / "smsgate.yaml"

TOKEN_SECRET = "canary-token-secret-" + "t" * 24
UPSTREAM_USER = "canary-upstream-user"
UPSTREAM_PASSWORD = "canary-upstream-password-7d1f"
OPS_PASSWORD = "canary-ops-password-91c2"
# /readyz shows its details (policy, jwks, store, upstreams) to admin callers only: Basic `ops` with these lines.
ADMIN_BY_BASIC = "admin: {issuer: basic}\n"
OPS_AUTH = ("ops", OPS_PASSWORD)
SENDER_PASSWORD = "canary-sender-password-55ab"
CORP_SECRET = "canary-corp-idp-secret-" + "c" * 24  # HS256 key of the `corp` issuer `corp_issuer` adds
CORP_ISS = "https://idp.example.com/"
# argon2id hashes of OPS_PASSWORD and SENDER_PASSWORD with cheap test parameters (m=1024, t=1, p=1)
CANARIES = (TOKEN_SECRET, UPSTREAM_USER, UPSTREAM_PASSWORD, OPS_PASSWORD, SENDER_PASSWORD, CORP_SECRET)


def cheap_hash(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)


@dataclass
class GatewayConfig:
    """A config file for a gateway in front of `upstream_url`, with canary secrets in `env`."""

    directory: Path
    upstream_url: str
    store: str = "memory://"
    tokens_enabled: bool = True
    extra: str = ""
    auth_extra: str = ""  # lines inside `auth:` (two-space indented), e.g. "  leeway_s: 0\n"
    corp_issuer: bool = False  # trust an external issuer `corp` (HS256, CORP_SECRET, iss CORP_ISS)
    policy: Path = SMSGATE_POLICY
    env: dict[str, str] = field(default_factory=dict)

    def write(self) -> Path:
        self.env.update(
            {
                "T_TOKEN_SECRET": TOKEN_SECRET,
                "T_UPSTREAM_URL": self.upstream_url,
                "T_UPSTREAM_USER": UPSTREAM_USER,
                "T_UPSTREAM_PASSWORD": UPSTREAM_PASSWORD,
                "T_OPS_HASH": cheap_hash(OPS_PASSWORD),
                "T_SENDER_HASH": cheap_hash(SENDER_PASSWORD),
                "T_CORP_SECRET": CORP_SECRET,
            }
        )
        auth_extra = self.auth_extra
        if self.corp_issuer:
            auth_extra += (
                f'  issuers:\n    - {{name: corp, issuer: "{CORP_ISS}", audience: sms-api, algorithms: [HS256],'
                ' secret: "${T_CORP_SECRET}"}\n'
            )
        tokens = (
            "tokens:\n  enabled: true\n  max_ttl_s: 3600\n  default_ttl_s: 600\n  keys:\n"
            '    - {kid: k1, algorithm: HS256, secret: "${T_TOKEN_SECRET}"}\n'
            if self.tokens_enabled
            else "tokens: {enabled: false}\n"
        )
        text = f"""\
listen: {{host: 127.0.0.1, port: 0}}
store: {self.store}
policies: [{self.policy}]
auth:
{auth_extra}  basic_users:
    - {{username: ops, password_hash: "${{T_OPS_HASH}}", scopes: [all:any]}}
    - {{username: sender, password_hash: "${{T_SENDER_HASH}}", scopes: [messages:send, messages:read]}}
{tokens}upstreams:
  smsgate:
    url: ${{T_UPSTREAM_URL}}
    read_timeout_s: 5
    credentials: {{type: basic, username: "${{T_UPSTREAM_USER}}", password: "${{T_UPSTREAM_PASSWORD}}"}}
{self.extra}"""
        path = self.directory / "config.yaml"
        path.write_text(text)
        return path

    def settings(self) -> Settings:
        return load_settings(self.write(), env=self.env)
