"""Structured logs: one redacting structlog pipeline per Gateway, and the stdlib routing the CLI sets up.

    log.info("request", ...) ─► add_log_level ─► TimeStamper ─► format_exc_info ─► redact + render ─► sink

Nothing here is configured globally: `make_logger` builds a logger with its own processor chain (through
`structlog.wrap_logger`), so two gateways in one process never share state, and an embedding app's
logging is left alone. The sink decides where events go:

    StdlibSink   the (redacted) event dict to the stdlib logger `smsguard.<category>`: the default, so an
                 embedding app or a test sees the gateway's events through `logging` (caplog, its handlers)
    StreamSink   one line per event on stderr, JSON or console; what `gateway serve` and `demo` use
    LogCapture   every event exactly as the JSON format writes it, for tests (`capture.events("token.issued")`)
    NullSink     drops everything

`Redactor` (redact.py) is the safety net every event passes through, whatever the sink: the JSON format
redacts and renders in one cheap pass (`JSONLines`), the other sinks run the thorough pass. Its names
are re-exported here.

The one event per request, the access event, may skip the chain: a JSON logger carries a `JSONOutput`
(`json_output(logger)`) that takes a line its caller built (`events.AccessEvent`), checks it like `json_line` does,
and writes it to the sink; when the check finds anything, the caller logs the event through the chain.

`configure_stdlib_logging` (called by the CLI only) sends the process's stdlib records (uvicorn,
aiohttp, httpx, smsguard's own stdlib loggers) through the same redactor and renderer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TextIO

import structlog
from structlog.exceptions import DropEvent
from structlog.processors import add_log_level, format_exc_info
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from gateway.observe.redact import MIN_SECRET_LENGTH, REDACTED, SENSITIVE_KEYS, Redactor, fingerprint, json_string

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SENSITIVE_KEYS",
    "JSONLines",
    "JSONOutput",
    "LogCapture",
    "LogFormat",
    "LogSink",
    "Loggers",
    "NullSink",
    "Redactor",
    "StdlibSink",
    "StreamSink",
    "configure_stdlib_logging",
    "fingerprint",
    "json_output",
    "json_string",
    "make_logger",
    "resolve_format",
]

LogFormat = Literal["json", "console"]

# ------------------------------------------------------------------------------------------------ sinks


class LogSink:
    """Where a logger's events end: the processors that redact and render them, and what receives the result."""

    def processors(self, redactor: Redactor) -> list[Processor]:
        raise NotImplementedError

    def target(self, name: str) -> WrappedLogger:
        raise NotImplementedError

    def json_lines(self, target: WrappedLogger) -> Callable[[str], None] | None:
        """Where this sink takes finished JSON lines (as its JSON processor chain would end), for events
        rendered without structlog (`JSONOutput`); None: it wants event dicts, through its processors."""
        return None


class _Lines:
    """The wrapped logger of `StreamSink`: writes each rendered event as one line (stderr by default).

    Inside a running event loop, lines are collected and written with one `write` + `flush` at the end
    of the loop iteration (`call_soon`): under load, one system call carries many lines, and a line is
    never held longer than the requests being served in that iteration. Outside a loop, at once.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._pending: list[str] = []

    def msg(self, message: str) -> None:
        pending = self._pending
        pending.append(message)
        if len(pending) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no running loop (start-up, shutdown, a thread)
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        stream = self._stream or sys.stderr  # looked up per write, so redirected/captured stderr is honoured
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail the requests being logged

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


class _Nowhere:
    def msg(self, *args: object, **kwargs: object) -> None:
        return None

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


class JSONLines:
    """The final processor of the JSON format: `Redactor.json_line` (redaction and rendering in one pass)."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return self.redactor.json_line(event_dict)


def _render_chain(fmt: LogFormat, redactor: Redactor, stream: TextIO | None) -> list[Processor]:
    if fmt == "console":
        isatty = getattr(stream or sys.stderr, "isatty", None)
        console = structlog.dev.ConsoleRenderer(
            colors=bool(isatty and isatty()), exception_formatter=structlog.dev.plain_traceback, sort_keys=False
        )
        return [redactor, console_order, console]
    return [JSONLines(redactor)]


ACCESS_LEAD = ("status", "method", "path", "duration_ms", "subject")


def console_order(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Console lines read left to right by what matters: an access event leads with time, status, method,
    path, latency and subject (`2026-11-22T03:42:44Z 403 GET /3rdparty/v1/devices 0.169ms ops`, its `info`
    level left out), then every other field sorted by name; other events keep time, level and event first."""
    lead = ""
    if event_dict.get("event") == "request" and all(key in event_dict for key in ACCESS_LEAD):
        status, method, path, duration, subject = (event_dict.pop(key) for key in ACCESS_LEAD)
        lead = f"{status} {method} {path} {'-' if duration is None else f'{duration}ms'} {subject or '-'}"
        if event_dict.get("level") == "info":
            del event_dict["level"]
    ordered = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    if lead:
        ordered["event"] = lead
    ordered.update(sorted(event_dict.items()))
    return ordered


def resolve_format(fmt: str, stream: TextIO | None = None) -> LogFormat:
    """`auto` is `console` when the log stream (stderr) is a terminal, else `json`."""
    if fmt == "auto":
        isatty = getattr(stream or sys.stderr, "isatty", None)
        return "console" if isatty is not None and isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r}")
    return "console" if fmt == "console" else "json"


class StreamSink(LogSink):
    """One line per event on `stream` (stderr, looked up at each write, by default)."""

    def __init__(self, fmt: LogFormat = "json", stream: TextIO | None = None) -> None:
        self.format = fmt
        self.stream = stream

    def processors(self, redactor: Redactor) -> list[Processor]:
        return _render_chain(self.format, redactor, self.stream)

    def target(self, name: str) -> WrappedLogger:
        return _Lines(self.stream)

    def json_lines(self, target: WrappedLogger) -> Callable[[str], None] | None:
        return target.msg if self.format == "json" and isinstance(target, _Lines) else None


class StdlibSink(LogSink):
    """The event dict, redacted, to the stdlib logger `name` (ready for structlog's ProcessorFormatter)."""

    def processors(self, redactor: Redactor) -> list[Processor]:
        return [redactor, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]

    def target(self, name: str) -> WrappedLogger:
        return logging.getLogger(name)


class NullSink(LogSink):
    """Drops every event (a gateway built only to validate a config)."""

    def processors(self, redactor: Redactor) -> list[Processor]:
        return [_drop]

    def target(self, name: str) -> WrappedLogger:
        return _Nowhere()


def _drop(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> NoReturn:
    raise DropEvent


class LogCapture(LogSink):
    """A sink for tests: each event exactly as the JSON format writes it, as a line and parsed back.

    capture = LogCapture()
    gateway = create_app(settings, log_sink=capture)
    ...
    (event,) = capture.events("token.issued")
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def processors(self, redactor: Redactor) -> list[Processor]:
        def capture(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> NoReturn:
            self._line(redactor.json_line(event_dict))
            raise DropEvent

        return [capture]

    def target(self, name: str) -> WrappedLogger:
        return _Nowhere()

    def json_lines(self, target: WrappedLogger) -> Callable[[str], None] | None:
        return self._line

    def _line(self, line: str) -> None:
        self.lines.append(line)
        self.entries.append(json.loads(line))

    def events(self, name: str) -> list[dict[str, Any]]:
        """The captured events called `name`, oldest first."""
        return [entry for entry in self.entries if entry.get("event") == name]

    def text(self) -> str:
        """Every captured line, as the JSON sink would have written them."""
        return "\n".join(self.lines)

    def clear(self) -> None:
        self.entries.clear()
        self.lines.clear()


# ---------------------------------------------------------------------------------------------- loggers


class _Timestamp:
    """`timestamp`: ISO 8601 UTC with microseconds (`2026-11-22T10:15:00.123456Z`), like structlog's
    `TimeStamper(fmt="iso", utc=True)` but formatting the date and time only once per second (the
    access line's fast path takes it too)."""

    def __init__(self) -> None:
        self._second = 0
        self._next = 0  # the second after `_second`: until then, only the microseconds change
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        now = time.time()
        if not self._second <= now < self._next:  # a new second (or the clock went back)
            second = int(now)
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second, self._next = second, second + 1
        # %d truncates the float itself: cheaper than int() inside an f-string
        return "%s%06dZ" % (self._prefix, (now - self._second) * 1_000_000)  # noqa: UP031


_timestamper = _Timestamp()


def make_logger(
    name: str,
    *,
    redactor: Redactor | None = None,
    level: str = "debug",
    sink: LogSink | None = None,
) -> FilteringBoundLogger:
    """A structlog logger with its own redacting chain; calls below `level` cost one no-op method call.

    `name` is the category (`smsguard.access`, `smsguard.audit`, `smsguard.upstream`): the stdlib logger
    the default `StdlibSink` hands events to. `level` defaults to debug: stdlib logging then decides.
    """
    sink = sink if sink is not None else StdlibSink()
    redactor = redactor if redactor is not None else Redactor()
    levelno = logging.getLevelNamesMapping()[level.upper()]
    processors: list[Processor] = [
        add_log_level,
        _timestamper,
        format_exc_info,
        *sink.processors(redactor),
    ]
    target = sink.target(name)
    logger: FilteringBoundLogger = structlog.wrap_logger(
        target,
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind()
    lines = sink.json_lines(target)
    if lines is not None:  # read by `json_output`; a logger bound from this one has none (it carries context)
        setattr(logger, _JSON_OUTPUT, JSONOutput(redactor, lines, levelno))
    return logger


_JSON_OUTPUT = "_smsguard_json_output"


def json_output(logger: FilteringBoundLogger) -> JSONOutput | None:
    """The direct JSON output of a logger from `make_logger` whose sink writes JSON lines, else None."""
    output = getattr(logger, _JSON_OUTPUT, None)
    return output if isinstance(output, JSONOutput) else None


class JSONOutput:
    """Writes an event its caller rendered as JSON to a JSON logger's sink, skipping structlog's chain.

    For the one hot event (the access event, one per request): the caller builds the line's text itself
    (`head`: the object up to its last field, keys in the order the chain would write them), which costs
    a fraction of an event dict going through the processors and the encoder. The line is the one the
    chain would write, `level` and `timestamp` last; the redactor checks it the same way
    (`Redactor.json_line`: sensitive key names, then the whole line searched for tokens and secrets).
    When it finds anything, `write` writes nothing and returns False: the caller then logs the event
    through the logger, whose thorough pass redacts it.
    """

    __slots__ = ("_generation", "_keys", "_lines", "_plain", "level", "redactor")

    def __init__(self, redactor: Redactor, lines: Callable[[str], None], level: int) -> None:
        self.redactor = redactor
        self.level = level  # the logger's: events below it are dropped (check `level` before rendering)
        self._lines = lines
        self._keys: tuple[str, ...] = ()
        self._generation = -1
        self._plain = False

    def write(self, keys: tuple[str, ...], head: str, level: str) -> bool:
        """Write `head` + level + timestamp as one line, unless the redactor would change it (False).

        `keys` are the names of `head`'s fields (one constant tuple per event: checked once per redactor
        version)."""
        redactor = self.redactor
        if keys is not self._keys or redactor.generation != self._generation:  # the key names, once per version
            self._plain = not any(map(redactor.sensitive, ("event", *keys, "level", "timestamp")))
            self._keys, self._generation = keys, redactor.generation
        if not self._plain:
            return False
        line = f'{head}, "level": "{level}", "timestamp": "{_timestamper.now()}"}}'
        if redactor.dirty(line):
            return False
        self._lines(line)
        return True


@dataclass(frozen=True, slots=True)
class Loggers:
    """A gateway's loggers: `smsguard.access` (requests), `smsguard.audit` (tokens, policy),
    `smsguard.upstream` (provider logins and credential failures), sharing one redactor and sink."""

    access: FilteringBoundLogger
    audit: FilteringBoundLogger
    upstream: FilteringBoundLogger
    redactor: Redactor

    @classmethod
    def build(cls, redactor: Redactor, *, level: str = "info", sink: LogSink | None = None) -> Loggers:
        def logger(name: str) -> FilteringBoundLogger:
            return make_logger(name, redactor=redactor, level=level, sink=sink)

        return cls(logger("smsguard.access"), logger("smsguard.audit"), logger("smsguard.upstream"), redactor)


# ----------------------------------------------------------------------------------- process-wide (CLI)

_HANDLER_NAME = "smsguard"
_QUIET = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "watchfiles": logging.WARNING}
_OWN = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "aiohttp")


def _drop_color_message(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)  # uvicorn's ANSI-colored copy of the message
    return event_dict


def configure_stdlib_logging(
    fmt: LogFormat, *, level: str = "info", redactor: Redactor | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Route every stdlib log record of this process through `redactor` and the `fmt` renderer on stderr.

    For the CLI (`serve`, `demo`), never for `create_app`: it replaces the root logger's smsguard handler
    (calling it again is safe), makes uvicorn's and aiohttp's loggers propagate to it, switches uvicorn's
    own access log off (the gateway writes its own) and quiets httpx's per-request INFO lines.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamper,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            format_exc_info,
            *_render_chain(fmt, redactor if redactor is not None else Redactor(), stream),
        ],
    )
    handler = logging.StreamHandler(stream)  # None: sys.stderr
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    root.setLevel(numeric)
    for name in _OWN:
        own = logging.getLogger(name)
        own.handlers.clear()
        own.propagate = True
        own.setLevel(logging.NOTSET)  # the root's level decides
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False  # uvicorn logs access lines only when this logger has handlers
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, numeric))
    return handler
