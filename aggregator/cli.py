"""``aggregator``: keep live per-category counts in Redis; print them.

Arguments in, text out; draining lives in ``aggregator.drain``, the views in ``counts``, ``status``,
``top`` (the live view) and ``export``, the Prometheus endpoint in ``metrics``."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence

from rich.console import RenderableType
from rich.text import Text

from moments_stream import ledger
from moments_stream.cli_common import add_command, run_cli, settings_from_args, stop_on_signals
from moments_stream.embedded_redis import ensure_redis
from moments_stream.logs import get_logger
from moments_stream.results import open_results_queue

from .check import check_document, format_check
from .counts import counts_document, format_counts
from .drain import drain
from .export import FORMATS, export_rows, write_file, write_rows
from .metrics import serve_metrics
from .reconcile import KnownJobs, ReconcileReport, reconcile, reconcile_interval_s
from .status import format_status, status_document
from .top import DEFAULT_ROWS, guarded, render_top, watch

log = get_logger(__name__)


def show(render: Callable[[], str], args: argparse.Namespace) -> int:
    """Print a view once, or with ``--watch`` redraw it every ``--interval`` until ``q`` or Ctrl-C
    (in place on a terminal, as plain text blocks otherwise: ``aggregator.top.watch``)."""
    if not args.watch:
        print(render())
        return 0
    return watch(guarded(lambda: Text(render())), args.interval, args.iterations)


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    stop = threading.Event()
    stop_on_signals(stop, "aggregator_stopping")
    log.info("aggregator_started", idle_exit_s=args.idle_exit)
    server = None
    if args.metrics_port is not None:
        server = serve_metrics(client, settings, args.metrics_port, args.metrics_addr)
    reconciled = ReconcileReport()
    known_jobs: KnownJobs = {}
    report = drain(
        client,
        settings.keys,
        open_results_queue(client, settings),
        idle_exit_s=args.idle_exit,
        stop_event=stop,
        recover_after_s=settings.recover_after_s,
        reconcile=lambda drained: reconcile(client, settings, drain_report=drained, report=reconciled,
                                            known_jobs=known_jobs),
        reconcile_every_s=reconcile_interval_s(settings),
    )
    if server is not None:
        server.shutdown()
    print(
        f"counted {report.counted}, failed {report.failed}, duplicates {report.duplicates}, stale {report.stale}, "
        f"recovered from outbox {report.recovered}, dead letters {report.dead_letters}, "
        f"left for a newer aggregator {report.newer_schema}, "
        f"reconciled: requeued {reconciled.requeued}, failed {reconciled.failed}"
    )
    return 0


def cmd_counts(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    if args.json:
        print(json.dumps(counts_document(client, settings, args.model_id)))
        return 0
    return show(lambda: format_counts(client, settings, args.model_id), args)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    if args.json:
        print(json.dumps(status_document(client, settings, args.model_id)))
        return 0
    return show(lambda: format_status(status_document(client, settings, args.model_id)), args)


def cmd_top(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    status_document(client, settings, args.model_id)  # an unknown --model stops here, before the view

    def render() -> RenderableType:
        return render_top(status_document(client, settings, args.model_id), args.rows, args.interval)

    return watch(guarded(render), args.interval, args.iterations)


def cmd_metrics(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    stop = threading.Event()
    stop_on_signals(stop, "metrics_stopping")
    server = serve_metrics(client, settings, args.metrics_port, args.metrics_addr)
    try:
        stop.wait()
    finally:
        server.shutdown()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    document = check_document(client, settings)
    print(json.dumps(document) if args.json else format_check(document))
    return 0 if document["clean"] else 1


def cmd_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    client = ensure_redis(settings)
    model = ledger.resolve_model(client, settings.keys, args.model_id)
    rows = export_rows(client, settings.keys, model, include_failed=args.include_failed)
    written = write_rows(rows, sys.stdout, args.format) if args.out is None else write_file(rows, args.out, args.format)
    log.info("exported", rows=written, model_id=model, format=args.format, out=args.out or "stdout")
    return 0


def add_model_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model_id", metavar="ID",
                        help="model id or a unique prefix of it (default: the current model)")


def add_view_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument("--watch", action="store_true", help="refresh until interrupted")
    add_refresh_options(parser, "--watch refresh period")
    add_model_id_option(parser)


def add_refresh_options(parser: argparse.ArgumentParser, interval_help: str) -> None:
    parser.add_argument("--interval", type=positive_seconds, default=2.0, metavar="S", help=interval_help)
    parser.add_argument("--iterations", type=int, metavar="N",
                        help="stop after N refreshes (default: until q or Ctrl-C)")


def positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return seconds


def add_metrics_options(parser: argparse.ArgumentParser, prefix: str, required: bool) -> None:
    parser.add_argument(f"--{prefix}port", type=int, required=required, metavar="N", dest="metrics_port",
                        help="serve Prometheus metrics on http://ADDR:N/metrics (0: any free port; the URL is printed)")
    parser.add_argument(f"--{prefix}addr", default="0.0.0.0", metavar="ADDR", dest="metrics_addr",
                        help="the address it listens on (default 0.0.0.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aggregator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = add_command(sub, cmd_run, "run", help="drain predictions into the counts until interrupted", redis=True)
    run.add_argument("--idle-exit", type=float, metavar="S",
                     help="return once nothing arrived for S seconds and no video is pending")
    add_metrics_options(run, "metrics-", required=False)
    counts = add_command(sub, cmd_counts, "counts", help="print the category counts, most frequent first", redis=True)
    add_view_options(counts, "one JSON object: model, counts, counted, pending, failed")
    status = add_command(sub, cmd_status, "status", help="pending, in flight, counted, failed, workers, ETA",
                         redis=True)
    add_view_options(status, "one JSON object with every figure (README: Watching a run)")
    top = add_command(sub, cmd_top, "top", help="live view: top categories, throughput, pending, workers, ETA "
                      "(q quits; plain text when stdout is not a terminal)", redis=True)
    add_refresh_options(top, "refresh period")
    top.add_argument("--rows", type=int, default=DEFAULT_ROWS, metavar="N", help="categories shown (10)")
    add_model_id_option(top)
    metrics = add_command(sub, cmd_metrics, "metrics", help="serve Prometheus metrics (read from Redis at each "
                          "scrape) until interrupted", redis=True)
    add_metrics_options(metrics, "", required=True)
    check = add_command(sub, cmd_check, "check", help="audit the namespace: list every invariant that does not hold "
                        "(exit 1 if any)", redis=True)
    check.add_argument("--json", action="store_true", help="one JSON object: clean, problems")
    export = add_command(sub, cmd_export, "export", help="one row per video: top-5, model, worker, timings",
                         redis=True)
    export.add_argument("--format", choices=FORMATS, default="jsonl")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    export.add_argument("--include-failed", action="store_true", help="also one row per failed video, with its error")
    add_model_id_option(export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
