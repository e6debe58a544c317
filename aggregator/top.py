"""``aggregator top``: the live terminal view of a run, and the refresh loop every ``--watch`` shares.

The figures come from one :func:`aggregator.status.status_document` snapshot per refresh (the
document ``status --json`` prints), drawn with ``rich``: the current model's top categories with
bars, throughput over the last minutes, pending / in flight / failed, the workers and their
videos, ETA. On a terminal the view is redrawn in place (``rich.live`` on the alternate screen) and
``q`` quits: stdin is put in cbreak mode (keys arrive one by one, Ctrl-C still interrupts) and
restored on every way out. When stdout is not a terminal each refresh is printed as plain text.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import IO, Any

from rich.bar import Bar
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from moments_stream.redis_conn import REDIS_OUTAGE
from moments_stream.settings import RECENT_WINDOW_S, THROUGHPUT_WINDOW_S, TIMED_STAGES

from .status import format_duration, model_label

QUIT_KEYS = frozenset("qQ")
DEFAULT_ROWS = 10
MAX_WORKER_ROWS = 8
BAR_WIDTH = 32
SPARKS = "▁▂▃▄▅▆▇█"
PLAIN_WIDTH = 100


class _Quit(Exception):
    """SIGTERM or SIGHUP arrived: leave the view as ``q`` would."""


def _quit(signum: int, frame: object) -> None:
    raise _Quit(signum)


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest (all lowest when nothing happened)."""
    peak = max(values, default=0)
    if peak == 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round(value / peak * (len(SPARKS) - 1))] for value in values)


def _mean_ms(histogram: dict[str, Any]) -> str:
    return f"{histogram['sum'] / histogram['count'] * 1000:.0f} ms" if histogram["count"] else "-"


def render_top(document: dict[str, Any], rows: int = DEFAULT_ROWS, interval_s: float | None = None) -> RenderableType:
    """The view of one status snapshot (``status_document``)."""
    clock = datetime.fromtimestamp(document["redis_time"], tz=timezone.utc).strftime("%H:%M:%S UTC")
    header = Text.assemble(("moments top", "bold"), f"  model {model_label(document['model'])}  ", (clock, "dim"))
    if interval_s is not None:
        header.append(f"  every {interval_s:g} s, q quits", style="dim")

    figures = Table.grid(padding=(0, 3))
    for _ in range(4):
        figures.add_column()
    lag = document["drain_lag_s"]
    figures.add_row(
        Text.assemble("counted ", (str(document["counted"]), "bold green")),
        Text.assemble("failed ", (str(document["failed"]), "bold red" if document["failed"] else "bold")),
        Text.assemble("pending ", (str(document["pending"]), "bold yellow")),
        Text.assemble("ETA ", (format_duration(document["eta_s"], unknown="unknown"), "bold")),
    )
    figures.add_row(
        f"in flight {document['in_flight']} jobs",
        f"queued {document['queued']} jobs",
        f"retry scheduled {document['retry_scheduled']}",
        f"awaiting aggregator {document['awaiting_aggregator']}",
    )
    figures.add_row(
        f"results queue {document['results_queued']}",
        f"drain lag {'unreadable' if lag is None else f'{lag:.1f} s'}",
        f"dead letters {document['dead_letters']}",
        f"workers alive {document['workers_alive']}",
    )
    stage_means = Text("stage means  " + ", ".join(
        f"{stage} {_mean_ms(document['stage_seconds'][stage])}" for stage in TIMED_STAGES
    ) + f"  (over {document['stage_seconds'][TIMED_STAGES[-1]]['count']} videos)", style="dim")

    per_minute = document["finished_per_minute"]
    throughput = Text.assemble(
        "throughput ",
        (f"{document['throughput_per_s']:.2f}/s", "bold"),
        f" ({document['finished_last_minute']} in the last {THROUGHPUT_WINDOW_S} s)   "
        f"last {RECENT_WINDOW_S // 60} min ",
        (sparkline(per_minute), "cyan"),
        f" per minute, peak {max(per_minute, default=0)}",
    )

    counts = document["counts"]
    total = sum(counts.values())
    peak = max(counts.values(), default=0)
    categories = Table(title=f"top categories ({len(counts)} seen, {total} videos)", title_justify="left",
                       box=None, padding=(0, 1), show_edge=False)
    categories.add_column("category", no_wrap=True, max_width=32)
    categories.add_column("", width=BAR_WIDTH)
    categories.add_column("videos", justify="right")
    categories.add_column("share", justify="right")
    for name, count in list(counts.items())[:rows]:
        categories.add_row(name, Bar(peak, 0, count, width=BAR_WIDTH, color="green"), str(count),
                           f"{count / total:.1%}")

    workers = Table(title=f"workers ({document['workers_alive']} alive)", title_justify="left", box=None,
                    padding=(0, 1), show_edge=False)
    workers.add_column("worker", no_wrap=True)
    workers.add_column("state")
    workers.add_column("heartbeat", justify="right")
    workers.add_column("video", no_wrap=True, overflow="ellipsis")
    for worker in document["workers"][:MAX_WORKER_ROWS]:
        age = worker["heartbeat_age_s"]
        workers.add_row(worker["name"], worker["state"] or "?", "never" if age is None else f"{age:.0f} s ago",
                        worker["video"] or "-")
    hidden = len(document["workers"]) - MAX_WORKER_ROWS
    if hidden > 0:
        workers.add_row(f"... and {hidden} more", "", "", "")

    parts: list[RenderableType] = [header, figures, throughput, stage_means, Text(), categories, Text(), workers]
    others = {model: n for model, n in document["counted_by_model"].items() if model != document["model"]}
    if others:
        parts.append(Text("other models: " + ", ".join(f"{model} {n}" for model, n in others.items()), style="dim"))
    return Group(*parts)


def render_error(error: Exception) -> RenderableType:
    return Text(f"Redis unreachable ({type(error).__name__}: {error}); trying again at the next refresh",
                style="bold red")


def guarded(render: Callable[[], RenderableType]) -> Callable[[], RenderableType]:
    """``render``, drawing a Redis outage as a message instead of leaving the view."""

    def draw() -> RenderableType:
        try:
            return render()
        except REDIS_OUTAGE as error:
            return render_error(error)

    return draw


def _sleep(timeout_s: float) -> str:
    time.sleep(timeout_s)
    return ""


@contextlib.contextmanager
def keyboard(stream: IO[str]) -> Iterator[Callable[[float], str]]:
    """A ``wait(timeout_s)`` that returns the keys typed meanwhile ("" when none): stdin in cbreak
    mode (no echo, no line buffering; Ctrl-C still interrupts), its settings restored on leaving
    whatever the reason. Without a terminal on stdin it only waits."""
    try:
        fd = stream.fileno()
        interactive = os.isatty(fd)
    except (AttributeError, ValueError, OSError):
        interactive = False
    if not interactive:
        yield _sleep
        return
    saved = termios.tcgetattr(fd)
    closed = False

    def wait(timeout_s: float) -> str:
        nonlocal closed
        if closed:
            return _sleep(timeout_s)
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            return ""
        typed = os.read(fd, 64)
        closed = not typed  # end of input: only the interval is left to wait on
        return typed.decode(errors="replace")

    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _quit_on_signals() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _quit) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def plain_text(renderable: RenderableType, width: int = PLAIN_WIDTH) -> str:
    """A renderable as plain text: no colours, no escape codes."""
    console = Console(width=width, color_system=None, force_terminal=False, highlight=False, emoji=False)
    with console.capture() as capture:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in capture.get().rstrip("\n").splitlines())


def watch(
    render: Callable[[], RenderableType],
    interval_s: float,
    iterations: int | None = None,
    out: IO[str] | None = None,
    keys_in: IO[str] | None = None,
) -> int:
    """Show ``render()`` every ``interval_s`` until ``q``, Ctrl-C, SIGTERM or SIGHUP (or after
    ``iterations`` refreshes): in place on a terminal, else as plain text, one block per refresh
    separated by a blank line. Returns 0 (the exit status) on each of those."""
    out = sys.stdout if out is None else out
    keys_in = sys.stdin if keys_in is None else keys_in
    console = Console(file=out)
    try:
        with _quit_on_signals():
            if console.is_terminal:
                _live(console, render, interval_s, iterations, keys_in)
            else:
                _plain(out, render, interval_s, iterations)
    except (KeyboardInterrupt, _Quit):
        pass
    return 0


def _live(console: Console, render: Callable[[], RenderableType], interval_s: float, iterations: int | None,
          keys_in: IO[str]) -> None:
    with keyboard(keys_in) as wait, Live(console=console, screen=True, auto_refresh=False,
                                         redirect_stdout=False, redirect_stderr=False) as live:
        shown = 0
        while True:
            live.update(render(), refresh=True)
            shown += 1
            if iterations is not None and shown >= iterations:
                return
            if QUIT_KEYS.intersection(wait(interval_s)):
                return


def _plain(out: IO[str], render: Callable[[], RenderableType], interval_s: float, iterations: int | None) -> None:
    shown = 0
    while True:
        if shown:
            out.write("\n")
        out.write(plain_text(render()) + "\n")
        out.flush()
        shown += 1
        if iterations is not None and shown >= iterations:
            return
        time.sleep(interval_s)
