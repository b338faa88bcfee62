"""structlog set-up: JSON lines on stderr in production, a readable console renderer on a TTY.

Log messages are stable sentences (searchable); context goes in keys.  ERROR means data was lost
or the daemon cannot do its job; WARNING means input was skipped but counted.

Two safety rules: tracebacks never carry frame locals (structlog's default dict tracebacks print
them, and a local can be a Kafka SASL password or a webhook URL with credentials), and logging
never raises — after stderr is closed (``trailguard replay … 2>&1 | head -1``), a write that fails
turns that logger silent instead of raising ``BrokenPipeError`` into a signal handler or a
shutdown path.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson

from daemon.structlog_import import import_structlog

#: Imported without rich (its console tracebacks are not used here): see :mod:`daemon.structlog_import`.
structlog = import_structlog()

__all__ = ["SafePrintLogger", "configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


class SafePrintLogger(structlog.PrintLogger):
    """A :class:`structlog.PrintLogger` whose writes never raise (a closed or broken stderr)."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__(file)
        self._broken = False

    def msg(self, message: str) -> None:
        """Write one line; after a failed write (``EPIPE``, closed file) drop lines silently."""
        if self._broken:
            return
        try:
            super().msg(message)
        except (OSError, ValueError):
            self._broken = True

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SafeFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *_args: Any) -> SafePrintLogger:
        return SafePrintLogger(self._file)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog (and stdlib logging of libraries) to write to stderr."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        # plain tracebacks: rich's (structlog's default when rich is installed) print frame locals
        processors += [structlog.dev.ConsoleRenderer(colors=True, exception_formatter=structlog.dev.plain_traceback)]
    else:
        processors += [
            # Frame locals may hold secrets: tracebacks carry frames and code, never variables.
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_SafeFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
