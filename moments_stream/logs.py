"""structlog set-up: pretty lines on a terminal, JSON lines otherwise, always on stderr.

stdout stays reserved for results (tables, ``--json``), so logs never corrupt a pipe.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from .redaction import redact_text


def stream_is_tty(stream: Any) -> bool:
    """Lithops replaces sys.stdout/stderr in its functions with streams that lack ``isatty``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def redact_credentials(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every Redis URL in an event's text (values, tracebacks) without its
    credentials (``user:PASSWORD@``, ``?password=``), whoever logged it."""
    return {key: _redacted(value) for key, value in event.items()}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(item) for item in value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    return value


class RedactingFilter(logging.Filter):
    """The same for stdlib records (Lithops, rq): the message and its arguments, as rendered."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(verbose: bool = False, json_logs: bool | None = None) -> None:
    """Route structlog (and stdlib logging, e.g. Lithops and rq) to stderr."""
    if json_logs is None:
        json_logs = not stream_is_tty(sys.stderr)
    level = logging.DEBUG if verbose else logging.INFO
    renderer: Any = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_credentials,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Lithops and rq log a lot at INFO; keep them out of the user's way unless asked.
    third_party_level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=third_party_level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in ("lithops", "rq", "rq.worker", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(third_party_level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
