"""The pipeline as users run it: real CLIs, a real redis-server, real Lithops localhost functions.

Counts are checked against direct `consumer classify` results on the same clips.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import redis

from tests.barrier import with_barrier
from tests.pipeline import BIN, counts, current_model, direct_top1, make_clips, run, start, wait_until

pytestmark = pytest.mark.e2e


def test_main_command_counts_exactly_and_only_new_videos(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    first = make_clips(folder, range(6))
    later = make_clips(tmp_path / "later", range(6, 9))
    expected = direct_top1(pipeline_env, first + later)
    assert len(set(expected.values())) > 1, "test clips should not all share one top-1"

    done = run(pipeline_env, "moments-stream", "run", str(folder), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "enqueued 6, skipped 0" in done.stderr
    first_counts = counts(pipeline_env)
    assert sum(first_counts.values()) == 6
    assert first_counts == collections.Counter(expected[p.name] for p in first)
    assert "total" in done.stdout and all(name in done.stdout for name in first_counts)

    again = run(pipeline_env, "moments-stream", "run", str(folder), "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert "enqueued 0, skipped 6" in again.stderr
    assert counts(pipeline_env) == first_counts

    for clip in later:
        shutil.copy(clip, folder / clip.name)
    grown = run(pipeline_env, "moments-stream", "run", str(folder), "--workers", "2")
    assert grown.returncode == 0, grown.stderr
    assert "enqueued 3, skipped 6" in grown.stderr
    final = counts(pipeline_env)
    assert sum(final.values()) == 9
    assert final == collections.Counter(expected.values())

    reenqueue = run(pipeline_env, "producer", "enqueue", "videos/")
    assert reenqueue.returncode == 0, reenqueue.stderr
    assert reenqueue.stdout.strip() == "enqueued 0, skipped 9"


def test_stages_as_separate_processes_with_a_corrupt_video(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    clips = make_clips(folder, range(20, 23))
    (folder / "corrupt.mp4").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 40_000, dtype=np.uint8)))
    expected = direct_top1(pipeline_env, clips)

    assert run(pipeline_env, "producer", "upload", str(folder), "batch/").returncode == 0
    enqueued = run(pipeline_env, "producer", "enqueue", "batch/")
    assert enqueued.stdout.strip() == "enqueued 4, skipped 0", enqueued.stderr

    # Idle exits of 1 s: every job is queued before the consumers start, and the aggregator leaves
    # idle only once nothing is pending.
    aggregator = start(pipeline_env, "aggregator", "run", "--idle-exit", "1")
    consumers = run(pipeline_env, "consumer", "start", "--workers", "2", "--idle-exit", "1")
    assert consumers.returncode == 0, consumers.stderr
    summaries = [json.loads(line) for line in consumers.stdout.splitlines()]
    assert len(summaries) == 2 and sum(s["jobs"] for s in summaries) == 4
    out, err = aggregator.communicate(timeout=120)
    assert aggregator.returncode == 0, err
    assert out.strip().startswith("counted 3, failed 1, duplicates 0")

    assert counts(pipeline_env) == collections.Counter(expected.values())
    client = redis.Redis.from_url(pipeline_env["MOMENTS_REDIS_URL"])
    failure = json.loads(client.hget("moments:failed", f"{pipeline_env['MOMENTS_BUCKET']}/batch/corrupt.mp4"))
    assert "cannot decode" in failure["error"]
    assert client.hlen("moments:pending") == 0
    table = run(pipeline_env, "aggregator", "counts")
    assert "pending 0, failed 1" in table.stdout and "total      " in table.stdout
    document = json.loads(run(pipeline_env, "aggregator", "counts", "--json").stdout)
    expected_document = {"counts": counts(pipeline_env), "counted": 3, "pending": 0, "failed": 1}
    assert document == {"model": current_model(client), **expected_document}


def test_unreachable_redis_fails_fast_with_the_url(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    from tests.redis_server import free_port

    env = dict(pipeline_env, MOMENTS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = run(env, "producer", "enqueue", "videos/")
    assert done.returncode == 2
    assert env["MOMENTS_REDIS_URL"] in done.stderr and "fix:" in done.stderr


def test_namespaces_share_one_redis_without_touching_each_other(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    """Two pipelines on one Redis: each enqueues the same prefix for itself, and `consumer stop` in
    one namespace stops its own consumers only."""
    client = redis.Redis.from_url(pipeline_env["MOMENTS_REDIS_URL"])
    make_clips(tmp_path / "clips", range(2))
    assert run(pipeline_env, "producer", "upload", str(tmp_path / "clips"), "videos/").returncode == 0
    envs = {name: dict(pipeline_env, MOMENTS_NAMESPACE=name) for name in ("alpha", "beta")}
    for env in envs.values():
        enqueued = run(env, "producer", "enqueue", "videos/")
        assert enqueued.returncode == 0 and "enqueued 2, skipped 0" in enqueued.stdout, enqueued.stderr
    assert {key.decode().split(":")[0] for key in client.keys("*") if not key.startswith(b"rq:")} == set(envs)

    consumers = {}
    # One after the other: Lithops localhost executors starting at the same instant on one machine
    # race copying Lithops into its shared temporary directory (seen with lithops 3.8).
    for name, env in envs.items():
        with (tmp_path / f"{name}.out").open("w") as out, (tmp_path / f"{name}.err").open("w") as err:
            consumers[name] = subprocess.Popen([str(BIN / "consumer"), "start", "--workers", "1"], env=env,
                                               stdout=out, stderr=err, text=True)
        wait_until(lambda name=name: client.scard(f"rq:workers:{name}-videos") or consumers[name].poll() is not None,
                   120, f"a {name} consumer")
        assert consumers[name].poll() is None, (tmp_path / f"{name}.err").read_text()[-3000:]

    stopped = run(envs["alpha"], "consumer", "stop")
    assert stopped.returncode == 0 and "1 running worker(s)" in stopped.stdout
    assert consumers["alpha"].wait(timeout=60) == 0, (tmp_path / "alpha.err").read_text()[-3000:]
    assert json.loads((tmp_path / "alpha.out").read_text().splitlines()[0])["reason"] == "stopped"
    assert consumers["beta"].poll() is None  # beta's consumer goes on
    (beta_worker,) = client.smembers("rq:workers:beta-videos")
    assert client.exists(beta_worker)

    assert run(envs["beta"], "consumer", "stop").returncode == 0
    assert consumers["beta"].wait(timeout=60) == 0


def test_consumer_with_several_decode_threads_batches_videos_exactly(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """The GPU layout (decode threads sharing one model, videos batched per forward pass), on the CPU."""
    folder = tmp_path / "threads"
    clips = make_clips(folder, range(80, 89))
    expected = direct_top1(pipeline_env, clips)
    # The thread that takes the first clip holds it (the consumer's test barrier) until every other
    # clip is counted, so the others are certainly classified by the other decode threads.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    held = barrier / f"hold-{clips[0].name}"
    held.touch()
    env = with_barrier(dict(pipeline_env, MOMENTS_DECODE_THREADS="3"), barrier)
    running = start(env, "moments-stream", "run", str(folder), "--workers", "1")
    client = redis.Redis.from_url(env["MOMENTS_REDIS_URL"])
    wait_until(lambda: client.hlen(f"moments:predictions:{current_model(client)}") == len(clips) - 1
               or running.poll() is not None, 300, "every clip but the held one counted")
    held.unlink()
    assert running.wait(timeout=300) == 0, running.output()[1][-3000:]
    assert counts(env) == collections.Counter(expected.values())
    records = [json.loads(raw) for raw in client.hvals(f"moments:predictions:{current_model(client)}")]
    assert {Path(record["video"]).name: record["top5"][0][0] for record in records} == expected
    holder = {record["worker"] for record in records if Path(record["video"]).name == clips[0].name}
    others = {record["worker"] for record in records} - holder
    assert len(holder) == 1 and others, "the videos were shared by the decode threads"
