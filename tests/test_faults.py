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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from lithops.constants import LITHOPS_TEMP_DIR

from consumer.launcher import consumer_runtime_s
from tests.barrier import with_barrier
from tests.media import synthetic_frames, write_h264
from tests.pipeline import (
    client_for,
    counts,
    counts_of,
    direct_top1,
    make_clips,
    pipeline_environment,
    predictions_key,
    run,
    start,
    wait_until,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

# Short leases and recovery delays so that faults heal within a test's time; a killed consumer's job
# is retried 1 s later (still scheduled, and moved back by the consumers' rq scheduler steps), not 5 s.
FAST_HEALING = {"MOMENTS_CONSUMER_LEASE": "4", "MOMENTS_RECOVER_AFTER": "3", "MOMENTS_RETRY_INTERVALS": "1"}
# Every fault here hits jobs of two videos (a GPU fleet's batches, small enough that each test's
# held videos still fall in different jobs); tests/test_multihost.py keeps one video a job.
BATCHED = {"MOMENTS_JOB_BATCH": "2"}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def env(server: RedisServer, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path) -> Iterator[dict[str, str]]:
    env = dict(pipeline_environment(server.url, checkpoint_v1, categories_v1, tmp_path / "data"), **FAST_HEALING,
               **BATCHED)
    yield env
    shutil.rmtree(os.path.join(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)


def upload_and_enqueue(env: dict[str, str], folder: Path, prefix: str = "in/") -> None:
    assert run(env, "producer", "upload", str(folder), prefix).returncode == 0
    enqueued = run(env, "producer", "enqueue", prefix)
    assert enqueued.returncode == 0, enqueued.stderr


def recorded(client: redis.Redis) -> int:
    return client.hlen(predictions_key(client)) + client.hlen("moments:failed")


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


@dataclass
class RunningPipeline:
    expected: dict[str, str]  # clip name -> top-1 from `consumer classify`
    client: redis.Redis
    aggregator: subprocess.Popen[str]
    consumers: subprocess.Popen[str]


def start_pipeline(env: dict[str, str], folder: Path, seeds: range) -> RunningPipeline:
    """Clips uploaded and enqueued, an aggregator and two consumer functions running on them."""
    expected = direct_top1(env, make_clips(folder, seeds))
    upload_and_enqueue(env, folder)
    aggregator = start(env, "aggregator", "run")
    consumers = start(env, "consumer", "start", "--workers", "2")
    return RunningPipeline(expected, client_for(env), aggregator, consumers)


def hold(barrier: Path, *names: str) -> None:
    """Consumers stop before publishing these videos (the test barrier, tests/barrier.py)."""
    barrier.mkdir(exist_ok=True)
    for name in names:
        (barrier / f"hold-{name}").touch()


def kill_the_holder(barrier: Path, name: str) -> int:
    """Wait until a consumer holds ``name``, let later attempts through, SIGKILL that consumer; its pid."""
    reached = barrier / f"reached-{name}"
    wait_until(reached.exists, 180, f"a consumer holding {name}")
    holder = int(reached.read_text())
    (barrier / f"hold-{name}").unlink()
    reached.unlink()
    os.kill(holder, signal.SIGKILL)
    return holder


def test_consumer_killed_mid_video_twice(env: dict[str, str], tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    hold(barrier, "clip05.mp4", "clip17.mp4")
    env = with_barrier(env, barrier)
    pipeline = start_pipeline(env, tmp_path / "in", range(30))
    client = pipeline.client

    killed = {name: kill_the_holder(barrier, name) for name in ("clip05.mp4", "clip17.mp4")}
    summaries = finish(env, pipeline.consumers)
    stop_aggregator(pipeline.aggregator)

    assert counts(env) == collections.Counter(pipeline.expected.values())
    assert client.hlen("moments:failed") == 0
    assert client.hlen(predictions_key(client)) == 30
    for name, pid in killed.items():  # the interrupted videos were finished by other consumers
        video = f"{env['MOMENTS_BUCKET']}/in/{name}"
        counted_by = json.loads(client.hget(predictions_key(client), video))["worker"]
        assert f"-{pid}-" not in counted_by
    assert [s["reason"] for s in summaries].count("crashed") == 2  # and both were relaunched


def test_consumers_end_before_their_time_limit_and_are_relaunched(env: dict[str, str], tmp_path: Path) -> None:
    """A backend that stops functions early (Lambda: 15 min) must see them leave, never kill them."""
    function_timeout, margin = 45, 10
    takes_videos_for = consumer_runtime_s(function_timeout, margin)  # 20 s from its process start
    barrier = tmp_path / "barrier"
    # The first video in the queue is held until its consumer's time to take videos has passed, so
    # that consumer certainly leaves for its time limit with videos still pending, however fast it is;
    # the other video of its job is handed back, not classified past the deadline.
    hold(barrier, "clip40.mp4")
    env = with_barrier(env, barrier)
    expected = direct_top1(env, make_clips(tmp_path / "in", range(40, 52)))
    upload_and_enqueue(env, tmp_path / "in")
    aggregator = start(env, "aggregator", "run")
    consumers = start(dict(env, MOMENTS_STOP_MARGIN=str(margin)), "consumer", "start", "--workers", "1",
                      "--function-timeout", str(function_timeout), "--idle-exit", "5")
    reached = barrier / "reached-clip40.mp4"
    wait_until(reached.exists, 180, "a consumer holding clip40.mp4")
    holder = int(reached.read_text())
    past_its_deadline = psutil.Process(holder).create_time() + takes_videos_for + 1
    wait_until(lambda: time.time() > past_its_deadline, takes_videos_for + 5, "the holder's deadline")
    (barrier / "hold-clip40.mp4").unlink()
    out, err = consumers.communicate(timeout=600)
    assert consumers.returncode == 0, err[-3000:]
    summaries = [json.loads(line) for line in out.splitlines()]
    client = client_for(env)
    wait_until(lambda: client.hlen("moments:pending") == 0, 120, "every video recorded")
    stop_aggregator(aggregator)

    reasons = [summary["reason"] for summary in summaries]
    # The holder (whichever consumer it was: one slow to start may have left before taking a video)
    # left for its time limit with the held video's job alone done, the rest of its batch handed back.
    (held_by,) = [summary for summary in summaries if f"-{holder}-" in (summary["worker"] or "")]
    assert held_by["reason"] == "deadline" and held_by["jobs"] == 1, summaries
    # every consumer but the last left for its time limit and was replaced; the last one left idle,
    # or for its time limit once nothing was pending. Each returned its own summary, so none was
    # killed at its time limit (Lithops stops a function at --function-timeout, and the launcher
    # then reports it crashed, with no worker): no clock of the test's is compared with the limit.
    assert len(summaries) >= 2 and set(reasons[:-1]) == {"deadline"} and reasons[-1] in ("idle", "deadline"), summaries
    assert all(summary["worker"] for summary in summaries), summaries
    assert counts(env) == collections.Counter(expected.values())
    assert client.hlen("moments:failed") == 0


def test_video_that_kills_its_consumer_on_every_attempt_is_recorded_failed(env: dict[str, str], tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    # Every attempt at killer.mp4 stops before publishing, so each kill lands while it is in hand.
    hold(barrier, "killer.mp4")
    env = with_barrier(dict(env, MOMENTS_JOB_RETRIES="1"), barrier)  # two attempts
    folder = tmp_path / "in"
    expected = direct_top1(env, make_clips(folder, range(4)))
    write_h264(folder / "killer.mp4", synthetic_frames(30, seed=99))
    upload_and_enqueue(env, folder)
    aggregator = start(env, "aggregator", "run")
    consumers = start(env, "consumer", "start", "--workers", "2")
    client = client_for(env)
    killer = f"{env['MOMENTS_BUCKET']}/in/killer.mp4"
    for _ in range(2):
        kill_the_holder(barrier, "killer.mp4")
        hold(barrier, "killer.mp4")  # the next attempt is held too
    summaries = finish(env, consumers)
    stop_aggregator(aggregator)

    failure = json.loads(client.hget("moments:failed", killer))
    assert "consumer died while classifying it on every attempt" in failure["error"]
    assert client.hlen("moments:failed") == 1
    assert counts(env) == collections.Counter(expected.values())
    assert [summary["reason"] for summary in summaries].count("crashed") == 2


STEAL_ONE_MESSAGE = """
import json
from moments_stream.redis_conn import connect
from moments_stream.results import open_results_queue
from moments_stream.settings import Settings
settings = Settings.from_env()
print(open_results_queue(connect(settings.redis_url), settings).receive(120)[0].decode())
"""


def test_aggregator_killed_mid_run_and_a_popped_message_lost(env: dict[str, str], tmp_path: Path) -> None:
    """The aggregator is killed while it certainly holds no message (every later video is held at
    the consumers' barrier), then one message is popped and thrown away, as an aggregator that dies
    between the pop and the record would: exactly that one is recovered from the outbox."""
    barrier = tmp_path / "barrier"
    held = [f"clip{seed}.mp4" for seed in range(43, 52)]
    hold(barrier, *held)
    env = with_barrier(env, barrier)
    pipeline = start_pipeline(env, tmp_path / "in", range(40, 52))
    client = pipeline.client
    wait_until(lambda: client.hlen(predictions_key(client)) == 3, 120, "the three videos not held")
    wait_until(lambda: len(list(barrier.glob("reached-*"))) == 2, 120, "both consumers holding a video")
    pipeline.aggregator.kill()  # nothing can be in its hands: nothing was published since the three
    pipeline.aggregator.wait()
    first_held = sorted(barrier.glob("reached-*"))[0].name.removeprefix("reached-")
    (barrier / f"hold-{first_held}").unlink()  # its outcome goes on the queue, with no aggregator
    stolen = subprocess.run([sys.executable, "-c", STEAL_ONE_MESSAGE], env=env, capture_output=True, text=True,
                            timeout=180)
    assert stolen.returncode == 0, stolen.stderr
    lost_video = json.loads(stolen.stdout)["video"]
    assert lost_video.endswith(f"/in/{first_held}") and client.hexists("moments:pending", lost_video)

    for name in held:
        (barrier / f"hold-{name}").unlink(missing_ok=True)
    restarted = start(env, "aggregator", "run")
    finish(env, pipeline.consumers)
    report = stop_aggregator(restarted)

    assert counts(env) == collections.Counter(pipeline.expected.values())
    assert client.hlen(predictions_key(client)) == 12 and client.hlen("moments:failed") == 0
    assert "recovered from outbox 1," in report, report
    assert client.hlen("moments:outbox") == 0


class RedisAway:
    """Redis gone from its port, and in its place a listener that closes every connection at once
    (what a client reconnecting to a restarting server meets), counting those made by ``watched``."""

    def __init__(self, port: int, watched: psutil.Process) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: Redis's port, just freed
        self.listener.settimeout(0.1)
        self.watched = watched
        self.refused_from_watched = 0
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._refuse, name="redis-away", daemon=True)

    def _refuse(self) -> None:
        while not self.closing.is_set():
            try:
                connection, peer = self.listener.accept()
            except TimeoutError:
                continue
            with connection:  # the client's end is still open here: whose it is can be read
                try:
                    if any(tuple(c.laddr) == peer for c in self.watched.net_connections("tcp")):
                        self.refused_from_watched += 1
                except psutil.Error:
                    pass

    def __enter__(self) -> RedisAway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.thread.join(timeout=10)
        self.listener.close()


def test_redis_restarted_mid_run_with_aof(server: RedisServer, env: dict[str, str], tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    hold(barrier, "clip70.mp4")  # so that Redis goes away mid-run, with a video in a consumer's hands
    env = with_barrier(env, barrier)
    pipeline = start_pipeline(env, tmp_path / "in", range(60, 80))
    client = pipeline.client
    wait_until((barrier / "reached-clip70.mp4").exists, 180, "a consumer holding clip70.mp4")
    holder = psutil.Process(int((barrier / "reached-clip70.mp4").read_text()))
    server.stop()
    # Down until the consumer holding clip70.mp4 has certainly met the outage: two of its
    # reconnection attempts (its lease's heartbeat) refused, however long that takes.
    with RedisAway(server.port, holder) as away:
        wait_until(lambda: away.refused_from_watched >= 2, 120, "the holder's reconnections to be refused")
    server.start()
    (barrier / "hold-clip70.mp4").unlink()

    finish(env, pipeline.consumers)
    report = stop_aggregator(pipeline.aggregator)
    assert counts(env) == collections.Counter(pipeline.expected.values())
    assert client.hlen(predictions_key(client)) == 20 and client.hlen("moments:failed") == 0
    assert report.startswith("counted ")  # the aggregator lived through the outage


def make_poison(folder: Path, max_bytes: int) -> dict[str, str]:
    """Eight inputs that cannot be classified, each with what its recorded error must say."""
    from tests.media import write_audio_only_mp4, write_h264

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    (folder / "random-bytes.mp4").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("meeting notes, not a video\n" * 50)
    (folder / "error-page.webm").write_text("<html><body>404 Not Found</body></html>")
    write_audio_only_mp4(folder / "audio-only.mp4")
    full = write_h264(folder / "header-only.mp4", synthetic_frames(30, seed=9)).read_bytes()
    (folder / "header-only.mp4").write_bytes(full[:600])
    (folder / "huge.mp4").write_bytes(rng.integers(0, 256, max_bytes + 1, dtype=np.uint8).tobytes())
    write_h264(folder / "deleted.mp4", synthetic_frames(30, seed=10))
    return {
        "random-bytes.mp4": "cannot decode",
        "empty.mp4": "empty",
        "notes.mp4": "cannot decode",
        "error-page.webm": "cannot decode",
        "audio-only.mp4": "cannot decode",
        "header-only.mp4": "cannot decode",
        "huge.mp4": "MOMENTS_MAX_VIDEO_BYTES",
        "deleted.mp4": "no longer exists",
    }


def test_ten_good_and_eight_bad_inputs(env: dict[str, str], tmp_path: Path) -> None:
    from tests.media import write_test_pattern_h264

    max_bytes = 20 * 1024 * 1024
    env = dict(env, MOMENTS_MAX_VIDEO_BYTES=str(max_bytes))
    folder = tmp_path / "mixed"
    good = make_clips(folder, range(90, 97))
    good.append(write_h264(folder / "one-frame.mp4", synthetic_frames(1, seed=11)))
    good.append(write_test_pattern_h264(folder / "ten-minutes.mp4", 600, 64, 64))
    good.append(write_test_pattern_h264(folder / "uhd-4k.mp4", 0.2, 3840, 2160))
    expected = direct_top1(env, good)
    errors = make_poison(folder, max_bytes)
    upload_and_enqueue(env, folder, "mixed/")
    os.remove(os.path.join(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"], "mixed/deleted.mp4"))

    aggregator = start(env, "aggregator", "run")
    consumers = start(env, "consumer", "start", "--workers", "2")
    summaries = finish(env, consumers)
    stop_aggregator(aggregator)

    client = client_for(env)
    assert counts(env) == collections.Counter(expected.values())
    assert client.hlen(predictions_key(client)) == 10
    failed = {json.loads(raw)["video"]: json.loads(raw)["error"] for raw in client.hvals("moments:failed")}
    bucket = env["MOMENTS_BUCKET"]
    assert set(failed) == {f"{bucket}/mixed/{name}" for name in errors}
    for name, words in errors.items():
        assert words in failed[f"{bucket}/mixed/{name}"], (name, failed[f"{bucket}/mixed/{name}"])
    assert all(summary["reason"] != "crashed" for summary in summaries)  # workers carried on

    listed = run(env, "consumer", "failures")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 8
    requeued = run(env, "consumer", "requeue", "mixed/empty.mp4", "mixed/nope.mp4")
    assert requeued.stdout.strip() == "requeued 1" and "mixed/nope.mp4" in requeued.stderr
    assert client.hget("moments:pending", f"{bucket}/mixed/empty.mp4") is not None
    assert client.llen("rq:queue:moments-videos") == 1 and client.hlen("moments:failed") == 7


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls-and-password"])
def test_locked_down_redis_runs_the_whole_pipeline(
    tls: bool, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path
) -> None:
    from tests.redis_server import make_tls_files, tls_capable_server_available

    if tls and not tls_capable_server_available():
        pytest.skip("needs Debian's redis-server (built with TLS); .ci/run installs it")
    server = RedisServer(
        tmp_path / "redis", password="s3cret-pw", tls=make_tls_files(tmp_path / "tls") if tls else None
    )
    server.start()
    try:
        env = pipeline_environment(server.url, checkpoint_v1, categories_v1, tmp_path / "data")
        clips = make_clips(tmp_path / "in", range(100, 104))
        expected = direct_top1(env, clips)
        done = run(env, "moments-stream", "run", str(tmp_path / "in"), "--workers", "2", "--idle-exit", "5")
        assert done.returncode == 0, done.stderr[-3000:]
        client = redis.Redis.from_url(server.url)
        assert counts_of(client) == collections.Counter(expected.values())
        assert "s3cret-pw" not in done.stderr + done.stdout
        without_password = run(
            dict(env, MOMENTS_REDIS_URL=server.url.replace(":s3cret-pw@", "")), "aggregator", "counts"
        )
        assert without_password.returncode == 2 and "requires a password" in without_password.stderr
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
