"""Diagnostic only: `gateway serve` with everything built at start-up moved out of the cyclic GC's reach.

    python bench/serve_gc_frozen.py serve --config C --port P      (the arguments of `gateway`, 1 worker)

`bench/run.py` runs this next to the plain gateway to measure how much of smsguard's cost is CPython's
cyclic garbage collector re-scanning the long-lived objects made at start-up (config, compiled policy,
clients), a cost that grows with the policy. It wraps uvicorn's app factory so that, once the app is
built, `gc.collect(); gc.freeze()` moves those objects to the permanent generation. Nothing in the
gateway changes. With `--workers N > 1` uvicorn's spawned workers import the factory afresh and the
wrapper is lost, so this is for one worker only.
"""

from __future__ import annotations

import gc
import sys

import gateway.cli as cli

_build = cli.app_from_environment


def _frozen_app() -> object:
    app = _build()
    gc.collect()
    gc.freeze()
    return app


if __name__ == "__main__":
    if "--workers" in sys.argv and sys.argv[sys.argv.index("--workers") + 1] != "1":
        sys.exit("serve_gc_frozen.py: one worker only")
    cli.app_from_environment = _frozen_app  # uvicorn resolves "gateway.cli:app_from_environment" after this
    sys.exit(cli.main(sys.argv[1:]))
