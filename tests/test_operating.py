"""Operating a run as users do, through the CLIs: status, export, counts per model, producer watch.

Every figure a view prints is checked against Redis itself, read with the raw key names the README
gives for redis-cli.
"""

from __future__ import annotations

import collections
import csv
import json
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch

from consumer.model import make_synthetic_checkpoint
from tests.pipeline import (
    BIN,
    client_for,
    counts_of,
    current_model,
    direct_top1,
    make_clips,
    run,
    start,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture()
def env(pipeline_env: dict[str, str]) -> dict[str, str]:
    return pipeline_env


def json_of(env: dict[str, str], *command: str) -> dict:
    done = run(env, *command)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_export_and_counts_per_model(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    clips = make_clips(folder, range(30, 34))
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    expected_a = direct_top1(env, clips)
    done = run(env, "moments-stream", "run", str(folder))
    assert done.returncode == 0, done.stderr
    client = client_for(env)
    model_a = current_model(client)
    assert model_a.startswith("synthetic-v1-")

    # Logs off a terminal are JSON lines: one video_recorded event per video, and no Lithops noise.
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    recorded = [event for event in events if event["event"] == "video_recorded"]
    assert sorted(event["outcome"] for event in recorded) == ["counted"] * 4 + ["failed"]
    for event in recorded:
        assert event["video"].startswith(f"{env['MOMENTS_BUCKET']}/videos/") and event["worker"]
        assert event["level"] in ("info", "warning")
        if event["outcome"] == "counted":
            assert min(event["decode_ms"], event["infer_ms"], event["total_ms"]) > 0
    assert not [line for line in done.stderr.splitlines() if "lithops" in line.lower() and "INFO" in line]

    # status: each figure equals its redis-cli command.
    status = json_of(env, "aggregator", "status", "--json")
    assert status["model"] == model_a
    assert status["counted"] == client.hlen(f"moments:predictions:{model_a}") == 4
    assert status["failed"] == client.hlen("moments:failed") == 1
    assert status["pending"] == client.hlen("moments:pending") == 0
    assert status["queued"] == client.llen("rq:queue:moments-videos") == 0
    assert status["in_flight"] == client.zcard("rq:wip:moments-videos") == 0
    assert status["finished_last_minute"] == client.zcount("moments:recent", status["redis_time"] - 60, "+inf") == 5
    assert status["eta_s"] == 0.0
    text = run(env, "aggregator", "status").stdout
    assert "counted      4" in text and "NOT real predictions" in text

    # export: one row per prediction, equal to the stored records.
    stored = {
        video.decode(): json.loads(raw) for video, raw in client.hgetall(f"moments:predictions:{model_a}").items()
    }
    exported = run(env, "aggregator", "export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {row["video"]: row["top1"] for row in rows} == {v: r["top5"][0][0] for v, r in stored.items()}
    for row in rows:
        record = stored[row["video"]]
        assert [[row[f"top{k}"], row[f"top{k}_probability"]] for k in range(1, 6)] == record["top5"]
        assert (row["worker"], row["total_ms"], row["model_id"]) == (record["worker"], record["total_ms"], model_a)
    out = tmp_path / "export.csv"
    assert run(env, "aggregator", "export", "--format", "csv", "--include-failed", "--out", str(out)).returncode == 0
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and not (tmp_path / "export.csv.partial").exists()
    failed_rows = [row["video"] for row in table if row["outcome"] == "failed"]
    assert failed_rows == [f"{env['MOMENTS_BUCKET']}/videos/corrupt.mp4"]

    assert live_table_by_redis_cli(env) == (json_of(env, "aggregator", "counts", "--json")["counts"], model_a)

    # A second model re-classifies the same videos: its counts go to its own hash.
    weights_b = tmp_path / "b.pth.tar"
    torch.save(make_synthetic_checkpoint(339, seed=7), weights_b)
    env_b = dict(env, MOMENTS_WEIGHTS=str(weights_b))
    expected_b = direct_top1(env_b, clips)
    assert expected_b != expected_a, "the second checkpoint should disagree with the first somewhere"
    reclassify = run(env_b, "producer", "enqueue", "videos/", "--reclassify")
    assert reclassify.stdout.strip() == "enqueued 5, skipped 0", reclassify.stderr
    again = run(env_b, "moments-stream", "run", str(folder))
    assert again.returncode == 0, again.stderr
    model_b = current_model(client)
    assert model_b != model_a
    assert counts_of(client, model_b) == collections.Counter(expected_b.values())
    assert counts_of(client, model_a) == collections.Counter(expected_a.values())
    assert json_of(env, "aggregator", "counts", "--json")["counts"] == counts_of(client, model_b)
    assert live_table_by_redis_cli(env) == (json_of(env, "aggregator", "counts", "--json")["counts"], model_b)
    by_prefix = json_of(env, "aggregator", "counts", "--json", "--model", model_a[:24])
    assert (by_prefix["model"], by_prefix["counts"]) == (model_a, counts_of(client, model_a))
    assert json_of(env, "aggregator", "status", "--json")["counted_by_model"] == {model_a: 4, model_b: 4}
    unknown = run(env, "aggregator", "counts", "--model", "v2-nope")
    assert unknown.returncode == 2 and model_a in unknown.stderr and model_b in unknown.stderr


def live_table_by_redis_cli(env: dict[str, str]) -> tuple[dict[str, int], str]:
    """The live table as README's redis-cli lines read it (the real binary): ``HGETALL moments:counts``,
    checked equal to ``ZREVRANGE moments:ranking 0 -1 WITHSCORES`` in its order, and the current model."""
    cli = [str(BIN / "redis-cli"), "-u", env["MOMENTS_REDIS_URL"]]
    fields = subprocess.run([*cli, "HGETALL", "moments:counts"], capture_output=True, text=True, check=True)
    table = dict(zip(fields.stdout.split()[::2], map(int, fields.stdout.split()[1::2]), strict=True))
    ranked = subprocess.run([*cli, "ZREVRANGE", "moments:ranking", "0", "-1", "WITHSCORES"], capture_output=True,
                            text=True, check=True).stdout.split()
    ranking = list(zip(ranked[::2], map(int, ranked[1::2]), strict=True))
    assert ranking == sorted(table.items(), key=lambda item: (item[1], item[0]), reverse=True)  # ZREVRANGE's order
    model = subprocess.run([*cli, "GET", "moments:current-model"], capture_output=True, text=True, check=True)
    return table, model.stdout.strip()


def test_status_shows_live_workers_and_their_heartbeat(env: dict[str, str]) -> None:
    client = client_for(env)
    consumers = start(env, "consumer", "start", "--workers", "1", "--idle-exit", "120")
    try:
        wait_until(lambda: json_of(env, "aggregator", "status", "--json")["workers_alive"] == 1, 120, "a live worker")
        (key,) = [member.decode() for member in client.smembers("rq:workers:moments-videos")]
        beat_before = client.hget(key, "last_heartbeat").decode()
        status = json_of(env, "aggregator", "status", "--json")
        beat_after = client.hget(key, "last_heartbeat").decode()
        (worker,) = status["workers"]
        assert f"rq:worker:{worker['name']}" == key and worker["video"] is None
        # The heartbeat the view shows is the worker's own (the one before the view or a later one:
        # it beats while the view reads), its age the Redis clock's distance from it, and the
        # worker alive by its lease (the key's expiry): no bound that a slow machine could cross.
        assert beat_before <= worker["last_heartbeat"] <= beat_after
        beat = datetime.fromisoformat(worker["last_heartbeat"].replace("Z", "+00:00"))
        assert worker["heartbeat_age_s"] == pytest.approx(max(0.0, status["redis_time"] - beat.timestamp()), abs=0.06)
        assert client.pttl(key) > 0
    finally:
        run(env, "consumer", "stop")
        consumers.communicate(timeout=120)
    assert json_of(env, "aggregator", "status", "--json")["workers_alive"] == 0


def test_producer_watch_enqueues_a_later_upload_once(env: dict[str, str], tmp_path: Path) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    make_clips(first, range(40, 41))
    make_clips(later, range(41, 42))
    assert run(env, "producer", "upload", str(first), "in/").returncode == 0
    client = client_for(env)
    watch = start(env, "producer", "watch", "in/", "--interval", "0.3", "--verbose")  # a log event per pass

    def passes() -> int:
        return sum('"event": "watch_pass"' in line for line in watch.output()[1].splitlines())

    try:
        wait_until(lambda: client.hlen("moments:pending") == 1, 60, "the first pass")
        assert run(env, "producer", "upload", str(later), "in/").returncode == 0
        wait_until(lambda: client.hlen("moments:pending") == 2, 60, "the later upload to be enqueued")
        passes_then = passes()
        wait_until(lambda: passes() >= passes_then + 3, 60, "three more passes over the same two files")
        assert client.llen("rq:queue:moments-videos") == 2
    finally:
        watch.send_signal(signal.SIGTERM)
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert out.strip() == "enqueued 2 while watching"
    bucket = env["MOMENTS_BUCKET"]
    assert {key.decode() for key in client.hkeys("moments:seen")} == {f"{bucket}/in/clip{n}.mp4" for n in (40, 41)}


def test_reclassify_reaches_the_new_model_while_old_consumers_run(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    clips = make_clips(folder, range(90, 94))
    expected_a = direct_top1(env, clips)
    assert run(env, "producer", "upload", str(folder), "in/").returncode == 0
    assert run(env, "producer", "enqueue", "in/").returncode == 0
    client = client_for(env)
    aggregator = start(env, "aggregator", "run")
    old_consumers = start(env, "consumer", "start", "--workers", "1")
    wait_until(lambda: client.hlen("moments:pending") == 0, 180, "the old model's pass")
    model_a = current_model(client)

    weights_b = tmp_path / "b.pth.tar"
    torch.save(make_synthetic_checkpoint(339, seed=11), weights_b)
    env_b = dict(env, MOMENTS_WEIGHTS=str(weights_b))
    expected_b = direct_top1(env_b, clips)
    reclassify = run(env_b, "producer", "enqueue", "in/", "--reclassify")
    assert reclassify.stdout.strip() == "enqueued 4, skipped 0", reclassify.stderr
    # The old model's consumer is the only one running: it takes a job for the new model, hands it
    # back and retires instead of clearing it with the old model's outcome.
    out, err = old_consumers.communicate(timeout=180)
    assert old_consumers.returncode == 0, err[-3000:]
    assert [json.loads(line)["reason"] for line in out.splitlines()] == ["superseded"]
    assert client.hlen("moments:pending") == 4

    # the handed-back jobs are queued before it starts: it leaves 1 s after the last
    new_consumers = run(env_b, "consumer", "start", "--workers", "1", "--idle-exit", "1", timeout=300)
    assert new_consumers.returncode == 0, new_consumers.stderr[-3000:]
    wait_until(lambda: client.hlen("moments:pending") == 0, 60, "the new model's pass to be recorded")
    aggregator.send_signal(signal.SIGINT)
    report, _ = aggregator.communicate(timeout=60)
    model_b = current_model(client)
    assert model_b != model_a
    assert counts_of(client, model_b) == collections.Counter(expected_b.values())
    assert counts_of(client, model_a) == collections.Counter(expected_a.values())
    assert "recovered from outbox 0," in report, report
