"""What every command line shares: model/Redis options, settings from flags, error exits."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .errors import MomentsError
from .logs import configure_logging, get_logger, json_logs_enabled, tell
from .settings import ENGINES, MODEL_RELEASES, PRECISIONS, Settings

log = get_logger(__name__)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, including Lithops' and rq's")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (env MOMENTS_*)")
    group.add_argument("--model", choices=sorted(MODEL_RELEASES), help="release: v1 (339 classes, default) or v2 (305)")
    group.add_argument("--weights", help="checkpoint path or URL (env MOMENTS_WEIGHTS; default: the release URL)")
    group.add_argument("--categories", help="category list path or URL (env MOMENTS_CATEGORIES)")
    group.add_argument("--frames", type=int, dest="num_frames", help="frames sampled per video (default 16)")
    group.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), bf16 (CPU autocast), fp16 (GPU)")
    group.add_argument("--engine", choices=ENGINES,
                       help="what runs the model: auto (default: openvino on CPUs, torch on GPUs), torch, openvino, "
                       "onnxruntime (env MOMENTS_ENGINE)")
    group.add_argument("--threads", type=int, help="torch threads per model (default: the CPUs each consumer gets)")
    group.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the model once per worker (env MOMENTS_COMPILE=1)")
    group.add_argument("--device", help="auto (default: cuda when available, else cpu), cpu or cuda")


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("redis and storage (env MOMENTS_*)")
    group.add_argument("--redis-url", help="Redis URL (env MOMENTS_REDIS_URL; default redis://127.0.0.1:6379/0)")
    group.add_argument("--bucket", help="storage bucket (env MOMENTS_BUCKET; default moments-stream)")


def add_command(
    commands: argparse._SubParsersAction,
    handler: Callable[[argparse.Namespace], int],
    *args: str,
    model: bool = False,
    redis: bool = False,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand run by ``handler``, with the model/Redis options it takes and ``--verbose``."""
    parser = commands.add_parser(*args, **kwargs)
    if model:
        add_model_options(parser)
    if redis:
        add_redis_options(parser)
    add_common_options(parser)
    parser.set_defaults(handler=handler)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command's flags over them (a flag not given keeps the
    variable's value); each checked, naming the variable and its flag."""
    fields = ("model", "weights", "categories", "num_frames", "precision", "engine", "threads", "compile", "device",
              "redis_url", "bucket")
    flags = {name: getattr(args, name, None) for name in fields}
    return Settings.from_env().replace(**{name: value for name, value in flags.items() if value is not None})


def stop_on_signals(stop: threading.Event, event: str) -> None:
    """SIGINT/SIGTERM (Ctrl-C, docker stop) set ``stop``: the command finishes what it holds and
    returns normally instead of dying mid-write."""

    def handler(signum: int, frame: object) -> None:
        log.info(event, signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, configure logging, run the command's handler; expected failures print their fix
    instead of a traceback."""
    args = parser.parse_args(argv)
    configure_logging(verbose=getattr(args, "verbose", False))
    try:
        return args.handler(args)
    except MomentsError as error:
        report_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        tell(log, "interrupted", "interrupted", level="warning")
        return 130
    except Exception:
        if not json_logs_enabled():
            raise  # Python's own traceback on a terminal
        log.exception("command_crashed")  # one JSON line, the traceback structured, as every other line
        return 1


def report_error(error: MomentsError) -> None:
    """``error: <message>`` and ``fix: <fix>`` on stderr (each an ERROR event in JSON mode)."""
    tell(log, "command_failed", f"error: {error.message}", level="error")
    if error.fix:
        tell(log, "command_fix", f"fix: {error.fix}", level="error")
