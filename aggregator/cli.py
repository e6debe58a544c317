"""``aggregator``: keep live per-category counts in Redis; print them."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from moments_stream import keys, ledger
from moments_stream.cli_common import add_command, run_cli, settings_from_args
from moments_stream.lithops_env import results_queue
from moments_stream.logs import get_logger
from moments_stream.redis_conn import ensure_redis

from .drain import drain

log = get_logger(__name__)


def counts_document(client: redis.Redis) -> dict[str, Any]:
    """The counts and the totals of each state, for scripts (``aggregator counts --json``)."""
    by_category = dict(ledger.sorted_counts(ledger.counts(client)))
    return {
        "counts": by_category,
        "counted": sum(by_category.values()),
        "pending": ledger.pending_count(client),
        "failed": int(client.hlen(keys.failed())),
    }


def format_counts(client: redis.Redis) -> str:
    document = counts_document(client)
    by_category = document["counts"]
    width = max([len(name) for name in by_category] + [8])
    lines = [f"{'category':<{width}}  count"]
    lines += [f"{name:<{width}}  {count:>5}" for name, count in by_category.items()]
    lines.append(f"{'total':<{width}}  {document['counted']:>5}")
    lines.append(f"pending {document['pending']}, failed {document['failed']}")
    return "\n".join(lines)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM (Ctrl-C, docker stop) finish the message in hand, then return normally."""

    def handler(signum: int, frame: object) -> None:
        log.info("aggregator_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    stop = threading.Event()
    stop_on_signals(stop)
    log.info("aggregator_started", idle_exit_s=args.idle_exit)
    report = drain(
        client,
        results_queue(client, settings),
        idle_exit_s=args.idle_exit,
        stop_event=stop,
        recover_after_s=settings.recover_after_s,
    )
    print(f"counted {report.counted}, failed {report.failed}, duplicates {report.duplicates}, "
          f"stale {report.stale}, recovered from outbox {report.recovered}")  # fmt: skip
    return 0


def cmd_counts(args: argparse.Namespace) -> int:
    client = ensure_redis(settings_from_args(args))
    if args.json:
        print(json.dumps(counts_document(client)))
        return 0
    if not args.watch:
        print(format_counts(client))
        return 0
    while True:
        print("\033[2J\033[H" + format_counts(client), flush=True)
        time.sleep(args.interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aggregator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = add_command(sub, cmd_run, "run", help="drain predictions into the counts until interrupted", redis=True)
    run.add_argument("--idle-exit", type=float, metavar="S",
                     help="return once nothing arrived for S seconds and no video is pending")  # fmt: skip
    counts = add_command(sub, cmd_counts, "counts", help="print the category counts, most frequent first", redis=True)
    counts.add_argument("--watch", action="store_true", help="refresh until interrupted")
    counts.add_argument("--json", action="store_true", help="one JSON object: counts, counted, pending, failed")
    counts.add_argument("--interval", type=float, default=2.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
