"""structlog set-up: pretty lines on a terminal, JSON lines otherwise, always on stderr.

stdout stays reserved for results (tables, ``--json``), so logs never corrupt a pipe.

Every line goes through one handler on the root logger, whose :class:`structlog.stdlib.ProcessorFormatter`
renders structlog's events and stdlib records alike (rq, Lithops, redis-py, ``warnings``): in JSON
mode each line on stderr is one object with ``event``, ``level``, ``logger`` and ``timestamp``, and
exceptions as structured tracebacks. Lithops installs a handler of its own on the ``lithops``
logger (plain text, not propagated); :func:`configure_logging` takes that logger back.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from .redaction import redact_text

# The project's own top-level packages: their loggers log at INFO (DEBUG with --verbose), every
# other library at WARNING (DEBUG with --verbose).
OWN_PACKAGES = ("moments_stream", "producer", "consumer", "aggregator", "pipeline", "bench")
# Libraries that log a lot at INFO; they follow the root's level (WARNING, DEBUG with --verbose)
# even where a library sets a level of its own.
THIRD_PARTY = ("lithops", "rq", "urllib3", "botocore", "boto3", "redis", "filelock")

_json_logs = False


def stream_is_tty(stream: Any) -> bool:
    """Lithops replaces sys.stdout/stderr in its functions with streams that lack ``isatty``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def json_logs_enabled() -> bool:
    """Whether :func:`configure_logging` chose JSON lines (stderr is not a terminal)."""
    return _json_logs


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
    """The same for stdlib records reaching other handlers (pytest's, a user's): the message and
    its arguments, as rendered."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # structlog's event, redacted already (and ours to render)
            return True
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class _StderrHandler(logging.StreamHandler):
    """The handler :func:`configure_logging` installs (marked, so a second call replaces it)."""


def configure_logging(verbose: bool = False, json_logs: bool | None = None) -> None:
    """Route structlog and stdlib logging (Lithops, rq, redis-py, warnings) to stderr, one
    renderer for both: JSON lines when stderr is not a terminal, pretty lines on one."""
    global _json_logs
    if json_logs is None:
        json_logs = not stream_is_tty(sys.stderr)
    _json_logs = json_logs
    own_level = logging.DEBUG if verbose else logging.INFO
    # Lithops and rq log a lot at INFO; keep them out of the user's way unless asked.
    third_party_level = logging.DEBUG if verbose else logging.WARNING
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # What every event gets, structlog's own and stdlib records (foreign_pre_chain) alike.
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
        # Before the event leaves structlog, so that every handler gets it redacted (pytest's too).
        redact_credentials,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(own_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    exceptions: Any = (
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if json_logs
        else structlog.processors.format_exc_info
    )
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=True)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            exceptions,
            redact_credentials,  # again: the traceback's text
            renderer,
        ],
    )
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StderrHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(third_party_level)
    for other in root.handlers:
        if other is not handler and not any(isinstance(f, RedactingFilter) for f in other.filters):
            other.addFilter(RedactingFilter())
    for name in OWN_PACKAGES:
        logging.getLogger(name).setLevel(own_level)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(third_party_level)
    adopt_third_party_loggers()
    # warnings.warn (torch, OpenVINO, urllib3) would print plain text on stderr.
    logging.captureWarnings(True)


def adopt_third_party_loggers() -> None:
    """Lithops' ``setup_lithops_logger`` (a Lithops executor, every function's process) and rq's
    ``setup_loghandlers`` give their loggers plain-text handlers of their own that do not
    propagate, and levels of their own: take those loggers back, so that their records reach our
    handler at the level :func:`configure_logging` chose. (``lithops_config`` sets ``log_level``
    to ``none``, which keeps executors from installing Lithops' handler again; rq installs one only
    where no handler would take its records.)"""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        top = name.split(".", 1)[0]
        if top not in THIRD_PARTY:
            continue
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if name != top:
            logger.setLevel(logging.NOTSET)


def reset_logging() -> None:
    """Undo :func:`configure_logging` (tests): structlog's defaults, no handler of ours."""
    global _json_logs
    _json_logs = False
    structlog.reset_defaults()
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StderrHandler):
            root.removeHandler(existing)
    logging.captureWarnings(False)


def get_logger(name: str) -> Any:
    """A structlog logger whose events carry ``logger``: ``name`` (a module's ``__name__``)."""
    return structlog.get_logger(name)


def tell(log: Any, event: str, text: str, level: str = "info", **fields: Any) -> None:
    """A line for the person at the terminal (a summary, a hint, an error and its fix): the text
    itself on a console, an event at ``level`` with it as ``message`` in JSON mode, so that every
    line on stderr stays one JSON object there."""
    if _json_logs:
        getattr(log, level)(event, message=text, **fields)
    else:
        print(text, file=sys.stderr)
