"""``moments-stream run DIR``: the whole pipeline on a local folder, on the embedded default.

Starts (or reuses) Redis, uploads the folder into Lithops storage, enqueues what is new,
runs consumer functions and the aggregator until every enqueued video is counted or failed,
then prints the counts. The data stays in Redis for ``redis-cli`` and for the next run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from tqdm import tqdm

from aggregator.cli import format_counts
from aggregator.drain import drain
from consumer.launcher import run_consumers, with_local_assets
from producer.cli import enqueue_prefix, normalise_prefix, upload

from . import ledger
from .cli_common import add_command, run_cli, settings_from_args
from .logs import get_logger, stream_is_tty
from .redis_conn import ensure_redis
from .resources import available_cpus, default_local_workers, total_memory_bytes
from .results import open_results_queue
from .settings import Settings

log = get_logger(__name__)


def outcomes_unrecorded(client: redis.Redis, settings: Settings, results: Any) -> bool:
    """Outcomes still on the queue, or only in the outbox of videos still pending."""
    keys = settings.keys
    return bool(results.qsize() or (client.hlen(keys.outbox()) and ledger.pending_count(client, keys)))


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    keys = settings.keys
    # Fail before touching storage or the queue when the model cannot be had.
    settings = with_local_assets(settings)
    prefix = normalise_prefix(args.prefix)
    print(upload(settings, Path(args.directory), prefix), file=sys.stderr)
    print(enqueue_prefix(settings, prefix), file=sys.stderr)

    workers = args.workers or default_local_workers(available_cpus(), total_memory_bytes())
    stop_aggregator = threading.Event()
    results = open_results_queue(client, settings)
    aggregator = threading.Thread(
        target=drain,
        args=(client, keys, results),
        kwargs={"stop_event": stop_aggregator, "recover_after_s": settings.recover_after_s},
        name="aggregator",
        daemon=True,
    )
    aggregator.start()
    total = ledger.pending_count(client, keys)
    consumers_done = threading.Event()
    summaries: list[dict] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            summaries.extend(
                run_consumers(settings, workers, idle_exit_s=args.idle_exit, function_timeout_s=args.function_timeout)
            )
        except BaseException as error:
            errors.append(error)
        finally:
            consumers_done.set()

    consumers = threading.Thread(target=consume, name="consumers", daemon=True)
    if total:
        consumers.start()
    with tqdm(total=total, unit="video", desc="classifying", disable=not stream_is_tty(sys.stderr)) as bar:
        while total:
            left = ledger.pending_count(client, keys)
            bar.update(total - left - bar.n)
            if left == 0 or consumers_done.is_set():
                break
            time.sleep(0.5)
    if total:
        client.set(keys.stop_consumers(), "1")
        consumers.join()
    # What the consumers published is on the queue, or in the outbox until the aggregator recovers it.
    deadline = time.monotonic() + settings.recover_after_s + 30
    while time.monotonic() < deadline and outcomes_unrecorded(client, settings, results):
        time.sleep(0.2)
    stop_aggregator.set()
    aggregator.join()
    if errors:
        raise errors[0]
    print(format_counts(client, settings))
    left = ledger.pending_count(client, keys)
    if left:
        print(f"{left} video(s) still pending: run again, or see `rq info` and `consumer start`", file=sys.stderr)
        return 1
    failed = client.hlen(keys.failed())
    if failed:
        print(f"{failed} video(s) failed: `redis-cli HGETALL {keys.failed()}` lists them", file=sys.stderr)
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
