"""Loopback fakes for tests: real sockets, real HTTP, no mocks of the code under test.

- `RecordingUpstream` / `Reply` / `Recorded`: an upstream that records every request byte for byte and
  answers with configurable replies (status, headers, body, delays, large or slow streams).
- `FaultServer`: an upstream that fails in one chosen way (refused, hung, reset, garbled, huge).
- `UvicornServer`: runs an ASGI app under real uvicorn on a free port (for streaming and disconnects).
- `FakeBSG`, `FakeSMSPortal`, `FakeSMSGatewayCenter`, `FakeSMSGate`: providers that enforce their real
  authentication rules (logins, expiring bearers, BSG's 200 `error: 2`) and count logins.

Import as `from fakes import ...` (pytest puts `tests/` on sys.path; `tests/` is not a package).
"""

from .asgi_server import UvicornServer
from .faults import MODES, FaultServer
from .providers import FakeBSG, FakeProvider, FakeSMSGate, FakeSMSGatewayCenter, FakeSMSPortal
from .recording import Recorded, RecordingUpstream, Reply

__all__ = [
    "MODES",
    "FakeBSG",
    "FakeProvider",
    "FakeSMSGate",
    "FakeSMSGatewayCenter",
    "FakeSMSPortal",
    "FaultServer",
    "Recorded",
    "RecordingUpstream",
    "Reply",
    "UvicornServer",
]
