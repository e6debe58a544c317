"""structlog set-up: pretty lines on a terminal, JSON lines otherwise, always on stderr.

stdout stays reserved for results (tables, ``--json``), so logs never corrupt a pipe.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def stream_is_tty(stream: Any) -> bool:
    """Lithops replaces sys.stdout/stderr in its functions with streams that lack ``isatty``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Lithops and rq log a lot at INFO; keep them out of the user's way unless asked.
    third_party_level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=third_party_level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lithops", "rq", "rq.worker", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(third_party_level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
