"""Object storage other than localhost: the producer, consumers and aggregator against a real
S3-compatible server on 127.0.0.1 (moto's standalone server), through Lithops' ``aws_s3`` and
``minio`` storage backends."""

from __future__ import annotations

import collections
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from moments_stream.errors import ConfigError
from moments_stream.settings import Settings
from producer.service import enqueue_prefix
from tests.pipeline import client_for, counts, direct_top1, make_clips, pipeline_environment, run
from tests.redis_server import running_redis
from tests.s3_server import STORAGE_BACKENDS, lithops_s3_environment, put_many, running_s3, s3_client

# Names a user's bucket really holds: spaces, accents, CJK, nesting.
AWKWARD_NAMES = ["a clip with spaces.mp4", "ünïcödé/vidéo 動画.mp4", "nested/deeper/plain.mp4", "zz last.mp4"]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def new_bucket(endpoint: str) -> str:
    name = f"moments-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("backend", STORAGE_BACKENDS)
def test_enqueue_pages_through_more_than_1000_keys(
    backend: str, s3_endpoint: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = new_bucket(s3_endpoint)
    keys = [f"many/{index:05d}.mp4" for index in range(2100)] + [f"many/{name}" for name in AWKWARD_NAMES]
    put_many(s3_endpoint, bucket, [*keys, "many/readme.txt", "other/outside.mp4"])
    for name, value in lithops_s3_environment(backend, s3_endpoint, new_bucket(s3_endpoint), tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LITHOPS_CONFIG", raising=False)
    settings = Settings.from_env({}).replace(redis_url=redis_url, bucket=bucket)

    first = enqueue_prefix(settings, "many/")
    assert (first.enqueued, first.skipped, first.ignored) == (len(keys), 0, 1)
    assert {key.decode() for key in redis_client.hkeys("moments:pending")} == {f"{bucket}/{key}" for key in keys}
    again = enqueue_prefix(settings, "many/")
    assert (again.enqueued, again.skipped) == (0, len(keys))

    with pytest.raises(ConfigError, match="does not exist in object storage"):
        enqueue_prefix(settings.replace(bucket=f"missing-{uuid.uuid4().hex[:8]}"), "many/")
    with pytest.raises(ConfigError, match="no objects under prefix"):
        enqueue_prefix(settings, "nothing-here/")


@pytest.mark.e2e
@pytest.mark.parametrize("backend", STORAGE_BACKENDS)
def test_pipeline_with_storage_on_s3(
    backend: str, s3_endpoint: str, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path
) -> None:
    folder = tmp_path / "videos"
    clips = make_clips(tmp_path / "made", range(60, 64))
    named = []
    for clip, name in zip(clips, AWKWARD_NAMES, strict=True):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(clip.read_bytes())
        named.append(target)
    (folder / "broken file.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    bucket = new_bucket(s3_endpoint)
    # Thumbnails beside the videos push the listing past one 1000-key page; the producer must
    # page through them to reach the videos whose names sort after them.
    put_many(s3_endpoint, bucket, [f"videos/a thumbs/{index:04d}.jpg" for index in range(1100)])

    with running_redis(tmp_path / "redis") as url:
        env = pipeline_environment(url, checkpoint_v1, categories_v1, tmp_path / "data")
        env.pop("LITHOPS_CONFIG", None)
        env.update(
            lithops_s3_environment(backend, s3_endpoint, new_bucket(s3_endpoint), tmp_path), MOMENTS_BUCKET=bucket
        )
        expected = direct_top1(env, named)

        done = run(env, "moments-stream", "run", str(folder), "--prefix", "videos/", timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "uploaded 5, unchanged 0" in done.stderr and "enqueued 5, skipped 0" in done.stderr
        assert counts(env) == collections.Counter(expected.values())
        client = client_for(env)
        failed = {video.decode(): json.loads(raw)["error"] for video, raw in client.hgetall("moments:failed").items()}
        broken = f"{bucket}/videos/broken file.mp4"
        assert list(failed) == [broken] and "cannot decode" in failed[broken]
        stored = {
            obj["Key"] for obj in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix="videos/ü")["Contents"]
        }
        assert stored == {"videos/ünïcödé/vidéo 動画.mp4"}

        again = run(env, "moments-stream", "run", str(folder), "--prefix", "videos/", timeout=600)
        assert again.returncode == 0, again.stderr[-4000:]
        assert "uploaded 0, unchanged 5" in again.stderr and "enqueued 0, skipped 5" in again.stderr
        assert counts(env) == collections.Counter(expected.values())
