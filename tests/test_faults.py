"""Fault injection against a real redis-server and real Lithops localhost functions.

Each test breaks something users' runs meet (killed functions, a dead aggregator, a Redis restart,
poison input, locked-down Redis) and then asserts exact final counts and the exact failed set.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from lithops.constants import LITHOPS_TEMP_DIR
from rq import Worker

from tests.pipeline import client_for, counts, direct_top1, make_clips, pipeline_environment, run, start, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

# Short leases and recovery delays so that faults heal within a test's time.
FAST_HEALING = {"MOMENTS_CONSUMER_LEASE": "4", "MOMENTS_RECOVER_AFTER": "3"}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def env(server: RedisServer, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path) -> Iterator[dict[str, str]]:
    env = dict(pipeline_environment(server.url, checkpoint_v1, categories_v1, tmp_path / "data"), **FAST_HEALING)
    yield env
    shutil.rmtree(os.path.join(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)


def upload_and_enqueue(env: dict[str, str], folder: Path, prefix: str = "in/") -> None:
    assert run(env, "producer", "upload", str(folder), prefix).returncode == 0
    enqueued = run(env, "producer", "enqueue", prefix)
    assert enqueued.returncode == 0, enqueued.stderr


def recorded(client: redis.Redis) -> int:
    return client.hlen("moments:predictions") + client.hlen("moments:failed")


def finish(env: dict[str, str], consumers: subprocess.Popen[str]) -> list[dict]:
    """Wait until nothing is pending, then stop the consumers; returns their summaries."""
    client = client_for(env)
    wait_until(lambda: client.hlen("moments:pending") == 0, 240, "every video counted or failed", interval=0.5)
    assert run(env, "consumer", "stop").returncode == 0
    out, err = consumers.communicate(timeout=120)
    assert consumers.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines()]


def stop_aggregator(aggregator: subprocess.Popen[str]) -> str:
    aggregator.send_signal(signal.SIGINT)
    out, _ = aggregator.communicate(timeout=60)
    return out


def busy_worker(client: redis.Redis, exclude: set[str]) -> Worker | None:
    for worker in Worker.all(connection=client):
        if worker.name not in exclude and worker.get_state() == "busy" and worker.get_current_job_id():
            return worker
    return None


def test_consumer_killed_mid_video_twice(env: dict[str, str], tmp_path: Path) -> None:
    clips = make_clips(tmp_path / "in", range(30))
    expected = direct_top1(env, clips)
    upload_and_enqueue(env, tmp_path / "in")
    client = client_for(env)
    aggregator = start(env, "aggregator", "run")
    consumers = start(env, "consumer", "start", "--workers", "2")

    killed: dict[str, str] = {}  # worker -> the video it was classifying
    while len(killed) < 2:
        wait_until(lambda: busy_worker(client, set(killed)), 120, "a consumer busy with a video", interval=0.02)
        victim = busy_worker(client, set(killed))
        assert victim is not None
        video = victim.get_current_job().args[0]
        os.kill(victim.pid, signal.SIGKILL)
        killed[victim.name] = video
    summaries = finish(env, consumers)
    stop_aggregator(aggregator)

    assert counts(env) == collections.Counter(expected.values())
    assert client.hlen("moments:failed") == 0
    assert client.hlen("moments:predictions") == 30
    for worker, video in killed.items():  # the interrupted videos were finished by other consumers
        counted_by = json.loads(client.hget("moments:predictions", video))["worker"]
        assert counted_by != worker
    assert [s["reason"] for s in summaries].count("crashed") == 2  # and both were relaunched
