"""How long consumer functions plan to run, from the backend's limits (Lithops' own defaults)."""

from __future__ import annotations

import pytest

from consumer.launcher import consumer_runtime_s, function_time_limit_s
from consumer.worker import EXIT_SLACK_S
from moments_stream.lithops_env import backend_time_limit_s

LAMBDA = {"lithops": {"backend": "aws_lambda"}}
LAMBDA_900 = {"lithops": {"backend": "aws_lambda"}, "aws_lambda": {"runtime_timeout": 900}}
LOCALHOST = {"lithops": {"backend": "localhost"}}


@pytest.mark.parametrize(
    ("function_timeout", "margin", "runtime"),
    [(3600, 120, 3480), (900, 120, 780), (900, 600, 675), (100, 120, 75), (40, 10, 40 - EXIT_SLACK_S)],
)
def test_consumers_stop_taking_videos_before_their_limit(function_timeout: int, margin: int, runtime: int) -> None:
    assert consumer_runtime_s(function_timeout, margin) == runtime
    assert runtime <= function_timeout - EXIT_SLACK_S


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
