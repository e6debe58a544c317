"""Done when (issue 23): a pipeline whose rq queue is deleted right after enqueue still counts every
video, the aggregator's reconciler bringing them back, and ``aggregator check`` is clean at the end.
Real redis-server, real Lithops localhost functions, the stages' CLIs as users run them."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tests.pipeline import client_for, counts, direct_top1, make_clips, predictions_key, run, start, wait_until
from tests.test_faults import finish, stop_aggregator

pytestmark = pytest.mark.e2e

QUEUE_KEY = "rq:queue:moments-videos"


def test_a_deleted_rq_queue_is_reconciled_and_every_video_counted(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(pipeline_env, MOMENTS_RECONCILE_AFTER="1", MOMENTS_RECOVER_AFTER="3", MOMENTS_CONSUMER_LEASE="4")
    clips = make_clips(tmp_path / "in", range(3))
    expected = direct_top1(env, clips)
    assert run(env, "producer", "upload", str(tmp_path / "in"), "in/").returncode == 0
    enqueued = run(env, "producer", "enqueue", "in/")
    assert enqueued.returncode == 0, enqueued.stderr
    client = client_for(env)
    assert client.llen(QUEUE_KEY) == 3
    client.delete(QUEUE_KEY)  # every job lost: three videos pending with no job anywhere

    aggregator = start(env, "aggregator", "run")
    wait_until(lambda: client.llen(QUEUE_KEY) == 3, 60, "the reconciler enqueueing the three videos again")
    consumers = start(env, "consumer", "start", "--workers", "1")
    finish(env, consumers)
    report = stop_aggregator(aggregator)

    assert "reconciled: requeued 3, failed 0" in report, report
    assert counts(env) == collections.Counter(expected.values())
    assert client.hlen(predictions_key(client)) == 3 and client.hlen("moments:failed") == 0
    status = run(env, "aggregator", "status", "--json")
    assert json.loads(status.stdout)["reconciled"] == {"requeued": 3, "failed": 0, "watched": 0}
    checked = run(env, "aggregator", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "every invariant holds" in checked.stdout
