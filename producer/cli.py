"""``producer``: upload local videos into storage and enqueue new keys for the consumers.

Arguments in, reports out; what each command does lives in ``producer.service``."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from moments_stream.cli_common import add_command, run_cli, settings_from_args, stop_on_signals
from moments_stream.logs import get_logger, tell

from .service import enqueue_prefix, normalise_prefix, upload, watch_prefix

log = get_logger(__name__)


def cmd_enqueue(args: argparse.Namespace) -> int:
    if args.model_id and not args.reclassify:
        tell(log, "bad_arguments", "--for-model goes with --reclassify", level="error")
        return 2
    settings = settings_from_args(args)
    print(enqueue_prefix(settings, normalise_prefix(args.prefix), args.reclassify, args.model_id))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    stop = threading.Event()
    stop_on_signals(stop, "watch_stopping")
    report = watch_prefix(settings_from_args(args), normalise_prefix(args.prefix), args.interval, stop)
    print(f"enqueued {report.enqueued} while watching")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    print(upload(settings_from_args(args), Path(args.directory), normalise_prefix(args.prefix)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="producer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    enqueue = add_command(
        sub, cmd_enqueue, "enqueue", help="enqueue the videos under PREFIX not enqueued before", redis=True
    )
    enqueue.add_argument("prefix", help="key prefix, e.g. videos/")
    enqueue.add_argument(
        "--reclassify", action="store_true", help="enqueue every video, even those enqueued before (new weights)"
    )
    enqueue.add_argument("--for-model", dest="model_id", metavar="ID",
                         help="with --reclassify: the model id the videos are for (default: the model MOMENTS_WEIGHTS "
                         "names); consumers of other models hand these jobs back and stop")
    watch = add_command(
        sub, cmd_watch, "watch", help="enqueue new uploads under PREFIX as they appear, until Ctrl-C", redis=True
    )
    watch.add_argument("prefix", help="key prefix, e.g. videos/")
    watch.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds between listings (10)")
    upload_cmd = add_command(
        sub, cmd_upload, "upload", help="copy the videos of a local folder into storage under PREFIX", redis=True
    )
    upload_cmd.add_argument("directory")
    upload_cmd.add_argument("prefix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
