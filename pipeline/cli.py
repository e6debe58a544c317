"""``moments-stream run DIR``: the whole pipeline on a local folder, on the embedded default.

Starts (or reuses) Redis, uploads the folder into Lithops storage, enqueues what is new,
runs consumer functions and the aggregator until every enqueued video is counted or failed,
then prints the counts. The data stays in Redis for ``redis-cli`` and for the next run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from aggregator.counts import format_counts
from moments_stream.cli_common import add_command, run_cli, settings_from_args
from moments_stream.logs import get_logger, stream_is_tty, tell
from moments_stream.resources import available_cpus, default_local_workers, total_memory_bytes
from producer.service import normalise_prefix

from .run import classify_pending, prepare

log = get_logger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    prepared = prepare(settings_from_args(args), Path(args.directory), normalise_prefix(args.prefix))
    tell(log, "upload_report", str(prepared.uploaded))
    tell(log, "enqueue_report", str(prepared.enqueued))
    workers = args.workers or default_local_workers(available_cpus(), total_memory_bytes())
    bar: tqdm | None = None

    def show_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="video", desc="classifying", disable=not stream_is_tty(sys.stderr))
        bar.update(done - bar.n)

    try:
        result = classify_pending(prepared, workers, args.idle_exit, args.function_timeout, show_progress)
    finally:
        if bar is not None:
            bar.close()
    keys = prepared.settings.keys
    print(format_counts(prepared.client, prepared.settings))
    if result.pending:
        tell(log, "videos_pending", f"{result.pending} video(s) still pending: run again, or see `rq info` and "
             "`consumer start`", level="warning")
        return 1
    if result.failed:
        tell(log, "videos_failed", f"{result.failed} video(s) failed: `redis-cli HGETALL {keys.failed()}` lists them",
             level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moments-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = add_command(
        sub, cmd_run, "run", help="classify every video in DIR and print live category counts", model=True, redis=True
    )
    run.add_argument("directory", help="local folder of videos (searched recursively)")
    run.add_argument("--prefix", default="videos/", help="storage prefix to upload under (default videos/)")
    run.add_argument("--workers", type=int, help="consumer functions (default: one per CPU, as memory allows)")
    run.add_argument("--idle-exit", type=int, default=30, metavar="S", help="consumers exit after S idle seconds")
    run.add_argument("--function-timeout", type=int, metavar="S", help="time limit per function (default 3600)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
