"""How long consumer functions plan to run, from the backend's limits (Lithops' own defaults)."""

from __future__ import annotations

import pytest

from consumer.launcher import (
    MIN_FUNCTION_TIMEOUT_S,
    checked_function_timeout_s,
    consumer_runtime_s,
    function_time_limit_s,
    relaunch_wanted,
)
from consumer.worker import EXIT_SLACK_S
from moments_stream.errors import ConfigError
from moments_stream.lithops_env import backend_time_limit_s

LAMBDA = {"lithops": {"backend": "aws_lambda"}}
LAMBDA_900 = {"lithops": {"backend": "aws_lambda"}, "aws_lambda": {"runtime_timeout": 900}}
LOCALHOST = {"lithops": {"backend": "localhost"}}


@pytest.mark.parametrize(
    ("function_timeout", "margin", "runtime"),
    [(3600, 120, 3465), (900, 120, 765), (900, 600, 660), (100, 120, 60), (45, 10, 20), (30, 120, 8)],
)
def test_consumers_stop_taking_videos_a_margin_before_their_last_video_is_cut(
    function_timeout: int, margin: int, runtime: int
) -> None:
    assert consumer_runtime_s(function_timeout, margin) == runtime
    # the video in hand has the whole margin (at most a quarter of the limit) before it is cut short
    assert function_timeout - EXIT_SLACK_S - runtime == min(margin, function_timeout // 4)


def test_a_time_limit_too_short_to_classify_is_refused_with_the_fix() -> None:
    assert checked_function_timeout_s(MIN_FUNCTION_TIMEOUT_S) == MIN_FUNCTION_TIMEOUT_S
    assert consumer_runtime_s(MIN_FUNCTION_TIMEOUT_S, 120) > 0
    with pytest.raises(ConfigError, match=f"--function-timeout {MIN_FUNCTION_TIMEOUT_S} or more"):
        checked_function_timeout_s(MIN_FUNCTION_TIMEOUT_S - 1)


@pytest.mark.parametrize(
    ("summary", "budget", "wanted", "budget_after"),
    [
        ({"reason": "deadline", "jobs": 12}, 0, True, 0),  # did work: always replaced, free
        ({"reason": "deadline", "jobs": 0}, 2, True, 1),  # started too slowly to work: budgeted
        ({"reason": "deadline", "jobs": 0}, 0, False, 0),
        ({"worker": None, "reason": "crashed", "error": "OSError"}, 1, True, 0),
        ({"worker": None, "reason": "crashed", "error": "OSError"}, 0, False, 0),
        ({"reason": "idle", "jobs": 3}, 3, False, 3),
        ({"reason": "stopped", "jobs": 3}, 3, False, 3),
        ({"reason": "superseded", "jobs": 1}, 3, False, 3),
    ],
)
def test_which_finished_consumers_are_relaunched(summary: dict, budget: int, wanted: bool, budget_after: int) -> None:
    assert relaunch_wanted(summary, budget) == (wanted, budget_after)


def test_backend_limits_come_from_the_config_else_lithops_defaults() -> None:
    assert backend_time_limit_s(LAMBDA) == 180  # Lithops' aws_lambda default until raised
    assert backend_time_limit_s(LAMBDA_900) == 900
    assert backend_time_limit_s(LOCALHOST) is None
    assert backend_time_limit_s({"lithops": {"backend": "k8s"}, "k8s": {"runtime_timeout": 1800}}) == 1800


def test_function_timeout_is_capped_at_the_backend_limit() -> None:
    assert function_time_limit_s(LAMBDA, None) == 180
    assert function_time_limit_s(LAMBDA_900, 1200) == 900
    assert function_time_limit_s(LAMBDA_900, 600) == 600
    assert function_time_limit_s(LOCALHOST, None) == 3600
    assert function_time_limit_s(LOCALHOST, 40) == 40


def test_a_consumer_counts_its_time_from_when_its_process_began() -> None:
    """Slow imports before the function body (a busy machine, a cold start) count against the
    backend's limit, so they count against the consumer's deadline too."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import time\ntime.sleep(2)\n"  # what importing torch costs on a slow start
        "from consumer.worker import process_started\nprint(time.monotonic() - process_started())\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, check=True)
    assert float(done.stdout) >= 2.0


def test_launch_leases_tell_a_consumer_that_died_silently_from_one_still_starting(redis_client) -> None:
    from consumer.launcher import LaunchLeases
    from moments_stream.keys import Keys

    keys = Keys("moments")
    leases = LaunchLeases(redis_client, keys)
    alive, dying, starting = object(), object(), object()
    for future, launch_id in ((alive, "a"), (dying, "b"), (starting, "c")):
        leases.track(future, launch_id)
    redis_client.set(keys.consumer_launch("a"), "worker-a", ex=30)
    redis_client.set(keys.consumer_launch("b"), "worker-b", ex=30)
    assert leases.lost([alive, dying, starting], start_within_s=3600) == []
    redis_client.delete(keys.consumer_launch("b"))  # its lease lapsed: no heartbeat any more
    lost = leases.lost([alive, dying, starting], start_within_s=3600)
    assert [future for future, _ in lost] == [dying] and "lapsed" in lost[0][1]
    assert leases.worker_of(dying) == "worker-b"
    # One that never took its lease is given up only past the start limit it is given.
    never = leases.lost([alive, starting], start_within_s=0)
    assert [future for future, _ in never] == [starting] and "never started" in never[0][1]
    relaunch, left = relaunch_wanted({"reason": "lost"}, 1)
    assert relaunch and left == 0


def test_a_consumer_holds_its_launch_lease_until_its_last_worker_is_done(redis_client) -> None:
    from consumer.worker import LaunchLease
    from moments_stream.keys import Keys

    key = Keys("moments").consumer_launch("abc")
    with LaunchLease(redis_client, key, "moments-host-1-abc", lease_s=30) as lease:
        assert redis_client.get(key) == b"moments-host-1-abc" and 0 < redis_client.ttl(key) <= 30
        redis_client.expire(key, 1)
        lease.renew()  # what its heartbeat does a third of the lease apart
        assert redis_client.ttl(key) > 1


def test_told_to_stop_the_launcher_gives_up_at_once_a_consumer_that_never_started(
    redis_url: str, base_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relaunch into a killed localhost container never starts, and Lithops never says so: once
    told to stop, the launcher does not wait out NEVER_STARTED_GRACE_S for it (it would start only
    to exit)."""
    import threading

    import consumer.launcher as launcher

    class NeverStarting:
        """A Lithops executor whose functions never start and never finish."""

        waits = 0

        def __init__(self, config: dict) -> None:
            pass

        def call_async(self, function: object, data: dict) -> object:
            return object()

        def wait(self, futures: list, **options: object) -> tuple[list, list]:
            NeverStarting.waits += 1
            assert NeverStarting.waits == 1, "the launcher kept waiting on consumers it was told to stop"
            return [], list(futures)

        def clean(self, **options: object) -> None:
            pass

    monkeypatch.setattr(launcher.lithops, "FunctionExecutor", NeverStarting)
    stop = threading.Event()
    stop.set()
    summaries = launcher.run_consumers(base_settings.replace(redis_url=redis_url), workers=2, stop_event=stop)
    assert summaries == [{"worker": None, "reason": "not_started", "jobs": 0}] * 2


def test_a_call_lithops_marks_done_without_output_is_a_crashed_consumer_not_a_crashed_launcher() -> None:
    """Lithops' ResponseFuture.result returns None for a call it marked done whose output it never
    fetched (seen with several launchers under load); the launcher must carry on, not raise."""
    from consumer.launcher import result_of

    class NoOutput:
        def result(self, throw_except: bool = True) -> None:
            return None

    summary = result_of(NoOutput())
    assert summary["reason"] == "crashed" and "no summary" in summary["error"]
    relaunch, _ = relaunch_wanted(summary, 1)
    assert relaunch


def test_a_consumer_that_died_of_keyboardinterrupt_is_crashed_but_a_ctrl_c_here_still_stops_the_launcher() -> None:
    """Lithops re-raises in the launcher whatever the function raised, KeyboardInterrupt included
    (seen: a consumer's rq shutdown command delivered as SIGINT), marking the future as an error
    first; that ended `consumer start` with status 130 as if its user had pressed Ctrl-C."""
    from consumer.launcher import result_of

    class Raising:
        def __init__(self, error: BaseException, remote: bool) -> None:
            self.raised, self.error = error, remote

        def result(self, throw_except: bool = True) -> dict:
            raise self.raised

    for remote_end in (KeyboardInterrupt(), SystemExit(1), RuntimeError("boom")):
        try:
            summary = result_of(Raising(remote_end, remote=True))
        except BaseException as escaped:  # a KeyboardInterrupt escaping would end pytest itself
            pytest.fail(f"the consumer's {type(escaped).__name__} ended the launcher")
        assert summary["reason"] == "crashed" and type(remote_end).__name__ in summary["error"]
    with pytest.raises(KeyboardInterrupt):
        result_of(Raising(KeyboardInterrupt(), remote=False))
