"""Listing and enqueueing against Lithops localhost storage and a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from lithops.constants import LITHOPS_TEMP_DIR
from redis.client import Pipeline

from consumer.download import safe_local_name
from moments_stream import queues
from moments_stream.errors import ConfigError, RedisUnavailableError
from moments_stream.failures import requeue_failed
from moments_stream.keys import Keys
from moments_stream.lithops_env import lithops_redis_section
from moments_stream.queues import enqueue_videos, video_queue
from moments_stream.redis_conn import connect, redact
from moments_stream.settings import Settings
from producer.enqueue import enqueue_objects
from producer.listing import StoredObject, is_video_key, iter_localhost
from producer.service import enqueue_prefix, normalise_prefix
from producer.upload import upload_directory
from tests.redis_server import free_port, running_redis

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bucket() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    os.makedirs(os.path.join(LITHOPS_TEMP_DIR, name), exist_ok=True)
    yield name
    shutil.rmtree(os.path.join(LITHOPS_TEMP_DIR, name), ignore_errors=True)


def put(bucket: str, key: str, data: bytes = b"video") -> None:
    path = Path(LITHOPS_TEMP_DIR, bucket, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("key", "expected"),
    [("a/b.mp4", True), ("a/b.MOV", True), ("x.webm", True), ("a/b.txt", False), ("a.mp4/readme", False),
     ("noext", False), ("c.m4v", True), ("d.mkv", True), ("e.avi", True)],
)
def test_is_video_key(key: str, expected: bool) -> None:
    assert is_video_key(key) is expected


def test_localhost_listing_is_lazy_recursive_and_prefix_exact(bucket: str) -> None:
    for key in ("v/a.mp4", "v/sub/b.avi", "v2/c.mp4", "w/d.mp4"):
        put(bucket, key)
    listing = iter_localhost(bucket, "v/")
    assert not isinstance(listing, list)
    assert sorted(o.key for o in listing) == ["v/a.mp4", "v/sub/b.avi"]
    assert sorted(o.key for o in iter_localhost(bucket, "v")) == ["v/a.mp4", "v/sub/b.avi", "v2/c.mp4"]


def test_unknown_bucket_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_localhost(f"missing-{uuid.uuid4().hex}", "v/"))


def test_enqueue_only_new_or_replaced(redis_client: redis.Redis, redis_url: str) -> None:
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    objects = [StoredObject(f"v/{i}.mp4", 10, "1") for i in range(5)] + [StoredObject("v/notes.txt", 1, "1")]
    first = enqueue_objects(redis_client, settings, objects)
    assert (first.enqueued, first.skipped, first.ignored) == (5, 0, 1)
    assert len(video_queue(redis_client, settings)) == 5
    again = enqueue_objects(redis_client, settings, objects)
    assert (again.enqueued, again.skipped) == (0, 5)
    replaced = [StoredObject("v/0.mp4", 11, "2"), StoredObject("v/9.mp4", 10, "1"), *objects[1:]]
    third = enqueue_objects(redis_client, settings, replaced)
    assert (third.enqueued, third.skipped) == (2, 4)
    # A video is named by bucket and key: the same key in another bucket is another video.
    video = f"{settings.bucket}/v/0.mp4"
    assert json.loads(redis_client.hget(Keys().pending(), video)) == {"fingerprint": "11:2", "model": None}
    job = video_queue(redis_client, settings).jobs[0]
    assert job.func_name == "consumer.jobs.classify_videos" and job.args == [[[video, "10:1"]], None]
    # Jobs are plain JSON in Redis (rq's JSONSerializer), never a pickle that could run code on load.
    stored = json.loads(zlib.decompress(redis_client.hget(f"rq:job:{job.id}", "data")))  # rq zlib-compresses it
    assert stored == ["consumer.jobs.classify_videos", None, [[[video, "10:1"]], None], {}]
    elsewhere = enqueue_objects(redis_client, settings.replace(bucket="other-bucket"), objects)
    assert (elsewhere.enqueued, elsewhere.skipped) == (5, 0)


def test_reclassify_jobs_name_their_model(redis_client: redis.Redis, redis_url: str) -> None:
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    objects = [StoredObject(f"v/{i}.mp4", 10, "1") for i in range(2)]
    enqueue_objects(redis_client, settings, objects)
    again = enqueue_objects(redis_client, settings, objects, reclassify=True, model_id="v1-new")
    assert (again.enqueued, again.skipped) == (2, 0)
    video = f"{settings.bucket}/v/0.mp4"
    assert json.loads(redis_client.hget(Keys().pending(), video)) == {"fingerprint": "10:1", "model": "v1-new"}
    assert video_queue(redis_client, settings).jobs[-1].args == [[[f"{settings.bucket}/v/1.mp4", "10:1"]], "v1-new"]


def test_large_listings_are_written_by_worker_processes_exactly_once(redis_client: redis.Redis, redis_url: str) -> None:
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    objects = [StoredObject(f"big/{index:05d}.mp4", 10, "1") for index in range(3500)]
    report = enqueue_objects(redis_client, settings, objects, processes=2)
    assert (report.enqueued, report.skipped) == (3500, 0)
    queue = video_queue(redis_client, settings)
    assert len(queue) == 3500
    assert sorted(job.args[0][0][0] for job in queue.jobs) == [f"{settings.bucket}/{item.key}" for item in objects]
    assert redis_client.hlen(Keys().pending()) == redis_client.hlen(Keys().seen()) == 3500
    again = enqueue_objects(redis_client, settings, objects, processes=2)
    assert (again.enqueued, again.skipped) == (0, 3500) and len(queue) == 3500
    # In a fresh process (no other thread, so forking is safe) the second batch goes to a forked worker.
    script = (
        "import sys\nfrom moments_stream.settings import Settings\nfrom moments_stream.redis_conn import connect\n"
        "from producer.enqueue import BatchWriter\n"
        "settings = Settings.from_env({}).replace(redis_url=sys.argv[1])\nclient = connect(sys.argv[1])\n"
        "with BatchWriter(settings, processes=2, only_new=True) as writer:\n"
        "    writer.write(client, {'big/x.mp4': '1:1'})\n    writer.write(client, {'big/y.mp4': '1:1'})\n"
        "    assert writer.pool is not None\nprint(writer.enqueued)\n"
    )
    forked = subprocess.run([sys.executable, "-c", script, redis_url], capture_output=True, text=True, cwd=REPO)
    assert forked.returncode == 0 and forked.stdout.strip() == "2", forked.stderr
    assert len(queue) == 3502


def test_a_producer_that_lost_the_race_enqueues_nothing(redis_client: redis.Redis, redis_url: str) -> None:
    """Two producers listed the same new videos; the second one to write finds them taken."""
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    videos = {f"race/{index}.mp4": "10:1" for index in range(3)}
    listed_as_new_by_both = videos
    assert enqueue_videos(redis_client, settings, listed_as_new_by_both, only_new=True) == 3
    assert enqueue_videos(redis_client, settings, listed_as_new_by_both, only_new=True) == 0
    assert enqueue_videos(redis_client, settings, {**videos, "race/0.mp4": "11:2"}, only_new=True) == 1  # replaced
    assert len(video_queue(redis_client, settings)) == 4


def interleave_on_first_build(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> list[dict[str, str]]:
    """``queues.queue_jobs`` recording every batch it builds (video -> fingerprint), with ``meanwhile``
    run once, at the first build: another writer slipping in between a read and its write."""
    builds: list[dict[str, str]] = []
    build = queues.queue_jobs

    def building(pipe: Pipeline, client: redis.Redis, settings: Settings, videos: dict[str, str],
                 model_id: str | None) -> None:
        builds.append(dict(videos))
        if len(builds) == 1:
            meanwhile()
        build(pipe, client, settings, videos, model_id)

    monkeypatch.setattr(queues, "queue_jobs", building)
    return builds


def test_a_producer_racing_mid_write_leaves_out_what_the_other_enqueued(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producer A reads the seen hash and builds its jobs; producer B enqueues two of A's videos
    (and one of its own) before A writes. A's write finds its choice changed, writes nothing, and
    reads and builds again: each video is enqueued once."""
    settings = Settings.from_env({}).replace(redis_url=redis_url)

    def b_enqueues() -> None:  # at A's first build: B writes in between
        assert enqueue_videos(redis_client, settings, {"b/1.mp4": "10:1", "b/2.mp4": "10:1", "b/9.mp4": "1:1"},
                              only_new=True) == 3

    builds = interleave_on_first_build(monkeypatch, b_enqueues)
    assert enqueue_videos(redis_client, settings, {f"b/{index}.mp4": "10:1" for index in range(3)}, only_new=True) == 1
    assert [sorted(batch) for batch in builds] == [
        ["b/0.mp4", "b/1.mp4", "b/2.mp4"], ["b/1.mp4", "b/2.mp4", "b/9.mp4"], ["b/0.mp4"]]
    queued = sorted(job.args[0][0][0] for job in video_queue(redis_client, settings).jobs)
    assert queued == ["b/0.mp4", "b/1.mp4", "b/2.mp4", "b/9.mp4"]
    assert redis_client.hlen(Keys().pending()) == redis_client.hlen(Keys().seen()) == 4


def test_other_videos_written_meanwhile_never_make_a_producer_build_again(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: the seen check was a WATCH on the whole seen hash, so any other batch written
    between a producer's read and its write (its own writer processes' too) threw its jobs away and
    had them built again; 100k keys took 13.3 s instead of 7. Only the videos it writes count now."""
    settings = Settings.from_env({}).replace(redis_url=redis_url)

    def another_batch_is_written() -> None:
        assert enqueue_videos(redis_client, settings, {"other/0.mp4": "1:1", "other/1.mp4": "1:1"}, only_new=True) == 2
        redis_client.hset(Keys().seen(), "b/1.mp4", "9:9")  # an older version of one of them: still new

    builds = interleave_on_first_build(monkeypatch, another_batch_is_written)
    assert enqueue_videos(redis_client, settings, {f"b/{index}.mp4": "10:1" for index in range(3)}, only_new=True) == 3
    assert [sorted(batch) for batch in builds] == [["b/0.mp4", "b/1.mp4", "b/2.mp4"], ["other/0.mp4", "other/1.mp4"]]
    assert len(video_queue(redis_client, settings)) == 5
    assert redis_client.hget(Keys().seen(), "b/1.mp4") == b"10:1"


def test_a_write_larger_than_one_command_is_one_write(redis_client: redis.Redis, redis_url: str) -> None:
    """More videos than one seen/pending command holds, and jobs of several videos, in one atomic write."""
    settings = Settings.from_env({}).replace(redis_url=redis_url, job_batch=1000)
    videos = {f"b/{index:05d}.mp4": "1:1" for index in range(2500)}
    redis_client.config_resetstat()
    assert enqueue_videos(redis_client, settings, videos, only_new=True) == 2500
    writes = redis_client.info("commandstats")["cmdstat_evalsha"]
    assert writes["calls"] - writes["failed_calls"] == 1  # failed: the script's first call, before it is loaded
    assert [len(job.args[0]) for job in video_queue(redis_client, settings).jobs] == [1000, 1000, 500]
    assert redis_client.hlen(Keys().pending()) == redis_client.hlen(Keys().seen()) == 2500
    assert enqueue_videos(redis_client, settings, {**videos, "b/00007.mp4": "2:2"}, only_new=True) == 1


def test_an_enqueue_the_script_was_not_written_for_is_refused_whole(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write replays the commands rq builds; one that writes more than its first key is refused."""
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    build = queues.queue_jobs

    def build_with_a_rename(
        pipe: Pipeline, client: redis.Redis, settings_: Settings, videos: dict[str, str], model_id: str | None
    ) -> None:
        build(pipe, client, settings_, videos, model_id)
        pipe.rename("a", "b")

    monkeypatch.setattr(queues, "queue_jobs", build_with_a_rename)
    with pytest.raises(RuntimeError, match="RENAME"):
        enqueue_videos(redis_client, settings, {"b/0.mp4": "1:1"}, only_new=True)
    assert redis_client.dbsize() == 0


def test_a_requeue_racing_a_producer_requeues_the_version_the_producer_enqueued(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """consumer requeue reads the version last enqueued; a producer enqueueing the replaced file
    before the requeue writes makes it read again, so it never marks the older version back."""
    settings = Settings.from_env({}).replace(redis_url=redis_url, bucket="b")
    redis_client.hset(Keys().seen(), "b/v.mp4", "1:1")
    record = {"video": "b/v.mp4", "fingerprint": "1:1", "error": "storage said no", "worker": "w"}
    redis_client.hset(Keys().failed(), "b/v.mp4", json.dumps(record))

    def the_file_is_replaced() -> None:  # at the requeue's first try, in its MULTI: the producer writes first
        assert enqueue_videos(redis_client, settings, {"b/v.mp4": "2:2"}, only_new=True) == 1

    builds = interleave_on_first_build(monkeypatch, the_file_is_replaced)
    assert requeue_failed(redis_client, settings, ["v.mp4"]) == ["b/v.mp4"]
    assert builds == [{"b/v.mp4": "1:1"}, {"b/v.mp4": "2:2"}, {"b/v.mp4": "2:2"}]  # requeue, producer, requeue
    assert redis_client.hget(Keys().seen(), "b/v.mp4") == b"2:2"
    assert json.loads(redis_client.hget(Keys().pending(), "b/v.mp4")) == {"fingerprint": "2:2", "model": None}
    assert [job.args[0] for job in video_queue(redis_client, settings).jobs] == [[["b/v.mp4", "2:2"]]] * 2
    assert redis_client.hlen(Keys().failed()) == 0


def test_enqueue_prefix_end_to_end_on_storage(redis_client: redis.Redis, redis_url: str, bucket: str,
                                              tmp_path: Path) -> None:
    settings = Settings.from_env({}).replace(redis_url=redis_url, bucket=bucket)
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "in" / name).write_bytes(name.encode() * 100)
    storage_settings = __import__("moments_stream.lithops_env", fromlist=["storage"]).storage(settings)
    assert upload_directory(storage_settings, bucket, tmp_path / "in", "p/").uploaded == 2
    assert str(enqueue_prefix(settings, "p/")) == "enqueued 2, skipped 0"
    assert upload_directory(storage_settings, bucket, tmp_path / "in", "p/").unchanged == 2
    assert str(enqueue_prefix(settings, "p/")) == "enqueued 0, skipped 2"
    with pytest.raises(ConfigError, match="no objects under prefix"):
        enqueue_prefix(settings, "nothing-here/")


def test_normalise_prefix() -> None:
    assert normalise_prefix("/videos") == "videos/" and normalise_prefix("a/b/") == "a/b/"


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../x.mp4", "/abs/path.mp4", "..", "a\\..\\b.mp4", "é ü.mp4"])
def test_storage_keys_never_escape_the_download_directory(key: str, tmp_path: Path) -> None:
    name = safe_local_name(key)
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_unreachable_redis_names_the_url_and_fix() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError) as caught:
        connect(url)
    assert url in caught.value.message and "MOMENTS_REDIS_URL" in caught.value.fix


def test_wrong_or_missing_password_is_a_clear_error(tmp_path: Path) -> None:
    with running_redis(tmp_path, password="s3cret") as url:
        assert connect(url).ping()
        wrong = url.replace("s3cret", "nope")
        with pytest.raises(RedisUnavailableError, match="refused the credentials") as caught:
            connect(wrong)
        assert "nope" not in caught.value.message
        with pytest.raises(RedisUnavailableError, match="requires a password"):
            connect(url.replace(":s3cret@", ""))


def test_redis_url_translations() -> None:
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert lithops_redis_section("rediss://user:pw@h:6380/2") == {
        "host": "h", "port": 6380, "db": 2, "username": "user", "password": "pw", "ssl": True,
    }
    tls = lithops_redis_section("rediss://:p%40ss@h:6380/0?ssl_ca_certs=/tmp/ca.pem&ssl_cert_reqs=required")
    assert tls == {"host": "h", "port": 6380, "db": 0, "password": "p@ss", "ssl": True,
                   "ssl_ca_certs": "/tmp/ca.pem", "ssl_cert_reqs": "required"}
    assert json.loads(json.dumps(tls)) == tls  # Lithops passes it in an environment variable


def test_embedded_redis_starts_on_the_default_url_with_aof(tmp_path: Path) -> None:
    from moments_stream.embedded_redis import ensure_redis

    try:
        connect("redis://127.0.0.1:6379/0")
        pytest.skip("a Redis already listens on 127.0.0.1:6379")
    except RedisUnavailableError:
        pass
    settings = Settings.from_env({}).replace(data_dir=tmp_path)
    client = ensure_redis(settings)
    try:
        client.set("moments:probe", "1")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert Path(client.config_get("dir")["dir"]) == tmp_path / "redis"
        assert ensure_redis(settings).get("moments:probe") == b"1"  # reused, not restarted
    finally:
        redis.Redis(host="127.0.0.1", port=6379).shutdown(nosave=True)  # no outage retries


def test_backoff_doubles_up_to_its_cap_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    from moments_stream import backoff as backoff_module

    slept: list[float] = []
    monkeypatch.setattr(backoff_module.time, "sleep", slept.append)
    backoff = backoff_module.Backoff(first_s=0.5, max_s=3)
    for _ in range(5):
        backoff.wait(ConnectionError("down"))
    assert slept == [0.5, 1, 2, 3, 3]
    backoff.reset()
    assert backoff.delay_s == 0.5
