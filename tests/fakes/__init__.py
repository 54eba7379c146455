"""Loopback fakes for tests: real sockets, real HTTP, no mocks of the code under test.

- `RecordingUpstream` / `Reply` / `Recorded`: an upstream that records every request byte for byte and
  answers with configurable replies (status, headers, body, delays, large or slow streams).
- `FaultServer`: an upstream that fails in one chosen way (refused, hung, reset, garbled, huge).
- `UvicornServer`: runs an ASGI app under real uvicorn on a free port (for streaming and disconnects).

Import as `from fakes import ...` (pytest puts `tests/` on sys.path; `tests/` is not a package).
"""

from .asgi_server import UvicornServer
from .faults import MODES, FaultServer
from .recording import Recorded, RecordingUpstream, Reply

__all__ = ["MODES", "FaultServer", "Recorded", "RecordingUpstream", "Reply", "UvicornServer"]
