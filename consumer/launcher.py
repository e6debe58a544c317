"""Launching N long-running consumer functions on Lithops and keeping N alive while work remains."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import lithops
import redis
from lithops.wait import ALWAYS

from moments_stream import ledger
from moments_stream.errors import ConfigError
from moments_stream.keys import Keys
from moments_stream.lithops_env import backend_time_limit_s, lithops_config, localhost_runs_in_container
from moments_stream.logs import get_logger
from moments_stream.redis_conn import REDIS_OUTAGE, connect
from moments_stream.resources import available_cpus, threads_per_worker
from moments_stream.settings import DEFAULT_FUNCTION_TIMEOUT_S, Settings

from .assets import is_url
from .baked import baked_dir, read_baked, why_not_used
from .classify import resolve_model_files
from .worker import EXIT_SLACK_S, run_consumer

log = get_logger(__name__)


def with_local_assets(settings: Settings) -> Settings:
    """Download weights and categories once here instead of once per function (localhost), unless
    the functions will load the model baked on this machine (a runtime image's)."""
    baked = read_baked(baked_dir(settings.cache_dir))
    if baked is not None and why_not_used(baked, settings) is None:
        return settings
    weights, categories = resolve_model_files(settings)
    return settings.replace(weights=str(weights), categories=str(categories))


def check_model_reaches_containers(settings: Settings, image: str) -> None:
    """Functions in a container see the image's files, not this machine's: a local weights or
    categories path named here would not be there."""
    local = {name: value for name, value in (("MOMENTS_WEIGHTS", settings.weights),
                                             ("MOMENTS_CATEGORIES", settings.categories))
             if value and not is_url(value)}
    if local:
        named = ", ".join(f"{name}={value}" for name, value in local.items())
        raise ConfigError(
            f"consumers run in the container image {image}, which cannot read {named} on this machine",
            fix=f"unset {' and '.join(local)} to use the model baked into {image} (runtime/build.sh), "
            "or give http(s) URLs",
        )


def request_stop(settings: Settings) -> int:
    """Ask every consumer to finish its current video and exit; returns how many rq workers were told."""
    from rq import Worker
    from rq.command import send_shutdown_command

    from moments_stream.queues import JOB_SERIALIZER, video_queue

    client = connect(settings.redis_url)
    client.set(settings.keys.stop_consumers(), "1")
    # Only this namespace's consumers: the workers of its own rq queue.
    workers = Worker.all(queue=video_queue(client, settings), serializer=JOB_SERIALIZER)
    for worker in workers:
        send_shutdown_command(client, worker.name)
    return len(workers)


# The shortest time limit that leaves a consumer time to start and take videos.
MIN_FUNCTION_TIMEOUT_S = 2 * EXIT_SLACK_S


def consumer_runtime_s(function_timeout_s: int, stop_margin_s: int) -> int:
    """How long a consumer takes new videos: until a margin for the video in hand (at most a
    quarter of the limit, so short limits still get work done) before the point where that video
    is cut short, ``EXIT_SLACK_S`` before the function's time limit."""
    return function_timeout_s - EXIT_SLACK_S - min(stop_margin_s, function_timeout_s // 4)


def checked_function_timeout_s(function_timeout_s: int) -> int:
    """A time limit that leaves a consumer time to take videos, else a ConfigError naming the fix."""
    if function_timeout_s < MIN_FUNCTION_TIMEOUT_S:
        raise ConfigError(
            f"a {function_timeout_s} s function time limit leaves a consumer no time to classify "
            f"(it stops {EXIT_SLACK_S} s before the limit, plus a margin for the video in hand): "
            f"use --function-timeout {MIN_FUNCTION_TIMEOUT_S} or more, or raise the backend's runtime_timeout"
        )
    return function_timeout_s


def relaunch_wanted(summary: dict[str, Any], relaunches_left: int) -> tuple[bool, int]:
    """Whether a finished consumer is replaced (while videos are pending), and the relaunch budget
    left. A consumer that left for its time limit after doing work is always replaced; one that
    crashed, or reached its limit without finishing a video (a start-up slower than its time to
    take videos), would likely do the same again, so those draw on a budget."""
    reason = summary.get("reason")
    if reason == "deadline" and summary.get("jobs", 0) > 0:
        return True, relaunches_left
    if reason in ("deadline", "crashed", "lost") and relaunches_left > 0:
        return True, relaunches_left - 1
    return False, relaunches_left


def function_time_limit_s(config: dict, requested_s: int | None) -> int:
    """The time limit consumers plan for: ``--function-timeout`` if given, capped at the backend's
    own limit (a function past it is killed, not stopped); else the backend's limit."""
    backend_limit = backend_time_limit_s(config)
    if requested_s is None:
        return backend_limit or DEFAULT_FUNCTION_TIMEOUT_S
    if backend_limit is not None and requested_s > backend_limit:
        log.warning("function_timeout_capped", requested_s=requested_s, backend_limit_s=backend_limit,
                    fix="raise runtime_timeout in the backend's Lithops config section")
        return backend_limit
    return requested_s


def with_threads_for(settings: Settings, workers: int, cpus: int) -> Settings:
    """On one machine, ``workers`` consumers share its CPUs: give each its share of torch threads
    (unless set) so that together they never run more threads than cores."""
    if workers > cpus:
        log.warning("more_consumers_than_cpus", workers=workers, cpus=cpus,
                    meaning="models compete for cores; throughput drops", fix=f"--workers {cpus}")
    if settings.threads is not None:
        return settings
    return settings.replace(threads=threads_per_worker(cpus, workers))


# How often the launcher looks at its functions and at their leases.
LAUNCH_POLL_S = 1.0
# Once nothing is pending, a launched function that has not taken its lease by this long after its
# launch is given up: it would start only to find an empty queue. Once consumers are told to stop,
# one that has not taken it is given up at once: it would start only to exit (a relaunch into a
# killed localhost container never starts, and Lithops never says so).
NEVER_STARTED_GRACE_S = 120


def result_of(future: Any) -> dict[str, Any]:
    """A finished consumer function's summary, or one that says how it crashed."""
    try:
        summary = future.result(throw_except=True)
    except BaseException as error:
        # Lithops re-raises here whatever the function raised, KeyboardInterrupt and SystemExit
        # included (it marks the future as an error first): the consumer's end, not this process's.
        if not isinstance(error, Exception) and not getattr(future, "error", False):
            raise  # this process itself was interrupted
        return _crashed(f"{type(error).__name__}: {error}")
    if not isinstance(summary, dict):  # Lithops may mark a call done and still give no output
        return _crashed(f"the function gave no summary ({summary!r})")
    return summary


def _crashed(error: str) -> dict[str, Any]:
    log.error("consumer_crashed", error=error)
    return {"worker": None, "reason": "crashed", "error": error}


class LaunchLeases:
    """The launcher's view of whether each consumer it launched is alive: a consumer keeps its
    launch lease (``Keys.consumer_launch``) while its heartbeat runs. A backend that loses a function
    without a status (a killed localhost container: Lithops then waits on it for ever) shows as a
    lease that was held and then lapsed while the function still counts as running."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._launches: dict[Any, tuple[str, float]] = {}  # future -> (launch id, when launched)
        self._workers: dict[Any, str] = {}  # future -> worker id, once its lease was seen

    def track(self, future: Any, launch_id: str) -> Any:
        self._launches[future] = (launch_id, time.monotonic())
        return future

    def forget(self, future: Any) -> None:
        self._launches.pop(future, None)
        self._workers.pop(future, None)

    def worker_of(self, future: Any) -> str | None:
        return self._workers.get(future)

    def not_started(self, running: list[Any]) -> list[Any]:
        """The running futures whose consumer has not been seen to take its lease (as of the last
        :meth:`lost`)."""
        return [future for future in running if future in self._launches and future not in self._workers]

    def lost(self, running: list[Any], start_within_s: float) -> list[tuple[Any, str]]:
        """The running futures whose consumer held its lease and no longer does, or never took it
        within ``start_within_s`` of its launch; each with what happened."""
        tracked = [future for future in running if future in self._launches]
        if not tracked:
            return []
        try:
            holders = self._client.mget([self._keys.consumer_launch(self._launches[f][0]) for f in tracked])
        except REDIS_OUTAGE:
            return []  # nothing can be told while Redis is away; the leases are read again next time
        lost = []
        for future, holder in zip(tracked, holders, strict=True):
            if holder is not None:
                self._workers[future] = holder.decode() if isinstance(holder, bytes) else str(holder)
            elif future in self._workers:
                lost.append((future, "its lease lapsed while its function ran: the function or its container died"))
            elif time.monotonic() - self._launches[future][1] > start_within_s:
                lost.append((future, f"it never started within {round(start_within_s)} s of its launch"))
        return lost


def run_consumers(
    settings: Settings,
    workers: int,
    idle_exit_s: int | None = None,
    function_timeout_s: int | None = None,
    stop_event: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Run ``workers`` consumer functions until stopped, idle or out of work; relaunch those that
    reach their time limit (or die) while videos are still pending."""
    client = connect(settings.redis_url)
    keys = settings.keys
    client.delete(keys.stop_consumers())
    config = lithops_config(settings, workers=workers)
    function_timeout_s = checked_function_timeout_s(function_time_limit_s(config, function_timeout_s))
    config["lithops"]["execution_timeout"] = function_timeout_s
    if config["lithops"]["backend"] == "localhost":
        if localhost_runs_in_container(config):
            check_model_reaches_containers(settings, config["localhost"]["runtime"])
        else:
            settings = with_local_assets(settings)
        settings = with_threads_for(settings, workers, available_cpus())
    max_runtime_s = consumer_runtime_s(function_timeout_s, settings.stop_margin_s)
    executor = lithops.FunctionExecutor(config=config)
    call = {"settings": settings.for_functions(), "max_runtime_s": max_runtime_s,
            "function_timeout_s": function_timeout_s, "idle_exit_s": idle_exit_s}

    launches = LaunchLeases(client, keys)

    def launch(count: int) -> list[Any]:
        return [launches.track(executor.call_async(run_consumer, dict(call, launch_id=launch_id)), launch_id)
                for launch_id in (uuid.uuid4().hex[:12] for _ in range(count))]

    running = launch(workers)
    relaunches_left = 3 * workers
    summaries: list[dict[str, Any]] = []
    log.info("consumers_launched", workers=workers, backend=config["lithops"]["backend"],
             max_runtime_s=max_runtime_s, idle_exit_s=idle_exit_s)
    def stop_requested() -> bool:
        return (stop_event is not None and stop_event.is_set()) or bool(client.exists(keys.stop_consumers()))

    while running:
        done, pending = executor.wait(running, return_when=ALWAYS, throw_except=False, show_progressbar=False)
        stopping = stop_requested()
        winding_down = stopping or not ledger.pending_count(client, keys)
        # A function past its time limit is not running; with nothing left to do, one that has not
        # started by now would only find an empty queue.
        lost = launches.lost(list(pending), NEVER_STARTED_GRACE_S if winding_down else function_timeout_s)
        lost_futures = {future for future, _ in lost}
        running = [future for future in pending if future not in lost_futures]
        given_up = launches.not_started(running) if stopping else []
        running = [future for future in running if future not in given_up]
        if not done and not lost and not given_up:
            time.sleep(LAUNCH_POLL_S)
            continue
        finished: list[tuple[Any, dict[str, Any] | None]] = [(future, None) for future in done]
        finished += [(future, {"worker": launches.worker_of(future), "reason": "lost", "error": what})
                     for future, what in lost]
        finished += [(future, {"worker": None, "reason": "not_started", "jobs": 0}) for future in given_up]
        for future, known in finished:
            summary = known or result_of(future)
            if summary["reason"] == "lost":
                log.error("consumer_lost", worker=summary["worker"], error=summary["error"])
            elif summary["reason"] == "not_started":
                log.info("consumer_given_up", meaning="told to stop before it started: it exits if it ever starts")
            launches.forget(future)
            summaries.append(summary)
            # Read again for each: fetching a result can take a while, and a stop may arrive meanwhile.
            if stop_requested() or not ledger.pending_count(client, keys):
                continue
            wanted, relaunches_left = relaunch_wanted(summary, relaunches_left)
            if wanted:
                log.info("consumer_relaunched", previous=summary.get("worker"), reason=summary.get("reason"))
                running.extend(launch(1))
            elif summary.get("reason") in ("deadline", "crashed", "lost"):
                log.error("consumer_not_relaunched", previous=summary.get("worker"), reason=summary.get("reason"),
                          fix="read the consumers' errors above; for slow starts raise --function-timeout")
    executor.clean(clean_cloudobjects=True)
    return summaries
