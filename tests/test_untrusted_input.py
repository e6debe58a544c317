"""Redis contents, storage keys and video files are untrusted input: a message crafted to run code,
TLS to a server named otherwise, credentials in URLs and logs, keys that name host files, objects
too large to download, frames too large to decode (issue 23, finding 10, and finding 6)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from lithops.constants import LITHOPS_TEMP_DIR

from aggregator.drain import drain
from consumer.context import WorkerContext
from consumer.download import download_once
from consumer.jobs import classify_one
from moments_stream import ledger, outcome, results
from moments_stream.errors import ConfigError, RedisUnavailableError, VideoDecodeError
from moments_stream.keys import Keys
from moments_stream.logs import configure_logging, get_logger, reset_logging
from moments_stream.redaction import redact, redact_text
from moments_stream.redis_conn import connect
from moments_stream.settings import Settings
from moments_stream.videos import pending_entry
from producer.listing import iter_localhost
from tests.instant import InstantClassifier
from tests.redis_server import (
    TLS_CAPABLE_BINARY,
    RedisServer,
    make_tls_files,
    running_redis,
    tls_capable_server_available,
)

KEYS = Keys("untrusted-test")
MODEL = "v1-aaaaaaaaaaaa-11111111"


class RunsCode:
    """A pickle that, when loaded by a full unpickler, runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class WritesFile:
    """A pickle that, when loaded by a full unpickler, writes a file through ``builtins.exec``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def test_a_message_crafted_to_run_code_runs_nothing_and_is_dead_lettered(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    markers = [tmp_path / f"marker-{index}" for index in range(3)]
    queue = results.ResultsQueue(redis_client, KEYS, expiry_s=60)
    redis_client.hset(KEYS.pending(), "good.mp4", pending_entry("1:1", None))
    # protocol 5 (STACK_GLOBAL), protocol 0 (GLOBAL) and a builtins callable
    redis_client.rpush(KEYS.results_list(), pickle.dumps(RunsCode(f"touch {markers[0]}"), protocol=5))
    redis_client.rpush(KEYS.results_list(), pickle.dumps(RunsCode(f"touch {markers[1]}"), protocol=0))
    redis_client.rpush(KEYS.results_list(), pickle.dumps(WritesFile(markers[2])))
    results.publish(redis_client, KEYS, outcome.counted("good.mp4", "1:1", MODEL, [("juggling", 0.9)]))

    report = drain(redis_client, KEYS, queue, idle_exit_s=0.3, poll_s=0.1, recover_after_s=3600)

    assert [marker.exists() for marker in markers] == [False, False, False]
    assert (report.counted, report.dead_letters) == (1, 3)  # draining went on past them
    letters = [json.loads(raw) for raw in redis_client.hvals(KEYS.dead_letters())]
    reasons = sorted(letter["reason"] for letter in letters)
    # never unpickled: read as text, the binary pickles are no UTF-8 and protocol 0's is no JSON
    assert sum(reason.startswith("not a results message: a pickle") for reason in reasons) == 2
    assert sum(reason.startswith("payload is not JSON") for reason in reasons) == 1
    assert ledger.counts(redis_client, KEYS, MODEL) == {"juggling": 1}


# --- storage keys and object sizes: the consumer's download --------------------------------------

BUCKET = "untrusted-test"


@pytest.fixture()
def bucket_dir() -> Iterator[Path]:
    root = Path(LITHOPS_TEMP_DIR) / BUCKET
    root.mkdir(parents=True, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def context_for(redis_client: redis.Redis, storage: object, max_video_bytes: int = 1 << 20) -> WorkerContext:
    settings = Settings.from_env({"MOMENTS_BUCKET": BUCKET, "MOMENTS_MAX_VIDEO_BYTES": str(max_video_bytes)})
    queue = results.ResultsQueue(redis_client, settings.keys, expiry_s=60)
    return WorkerContext(InstantClassifier(), redis_client, storage, queue, settings, "untrusted-test")  # type: ignore[arg-type]


@pytest.mark.parametrize(("video", "reason"), [
    (f"{BUCKET}//etc/passwd", "the key is an absolute path"),
    (f"{BUCKET}/../../../../etc/passwd", "the key has a '..' path segment"),
    (f"{BUCKET}/videos/../../../../../etc/passwd", "the key has a '..' path segment"),
    ("../etc/passwd", "the bucket name '..' is not a bucket"),
])
def test_a_key_that_names_a_host_file_fails_without_a_read(
    redis_client: redis.Redis, bucket_dir: Path, video: str, reason: str
) -> None:
    from lithops import Storage

    context = context_for(redis_client, Storage(backend="localhost"), max_video_bytes=1 << 30)
    message = classify_one(context, video, "1:1")
    assert message.outcome == "failed" and message.error is not None
    assert "refused, never read" in message.error and reason in message.error, message.error
    assert context.classifier.calls == {}  # type: ignore[attr-defined]


def test_an_oversized_object_is_refused_before_a_byte_is_read(redis_client: redis.Redis, bucket_dir: Path) -> None:
    """A 1 TiB (sparse) object under a 1 MiB limit: refused from its size alone. Read whole, as
    Lithops' localhost get_object does, it could not even be allocated."""
    (bucket_dir / "v").mkdir()
    with open(bucket_dir / "v" / "huge.mp4", "wb") as huge:
        huge.truncate(1 << 40)
    from lithops import Storage

    context = context_for(redis_client, Storage(backend="localhost"), max_video_bytes=1 << 20)
    message = classify_one(context, f"{BUCKET}/v/huge.mp4", f"{1 << 40}:1")
    assert message.outcome == "failed" and message.error is not None
    assert f"{1 << 40:,} bytes, larger than the {1 << 20:,}-byte limit (MOMENTS_MAX_VIDEO_BYTES)" in message.error


class HeadOnlyStorage:
    """An object store that answers HEAD with a size and fails the test if the object is fetched."""

    backend = "aws_s3"

    def __init__(self, size: int) -> None:
        self.size = size

    def head_object(self, bucket: str, key: str) -> dict[str, str]:
        return {"content-length": str(self.size)}

    def get_object(self, bucket: str, key: str, stream: bool = False) -> object:
        raise AssertionError(f"{key} was downloaded")


def test_an_oversized_remote_object_is_refused_from_its_head(redis_client: redis.Redis) -> None:
    context = context_for(redis_client, HeadOnlyStorage(5 << 20), max_video_bytes=1 << 20)
    message = classify_one(context, f"{BUCKET}/v/big.mp4", "5:1")
    assert message.outcome == "failed" and "MOMENTS_MAX_VIDEO_BYTES" in (message.error or ""), message.error


def test_an_object_the_consumer_may_not_read_is_reported_as_such(redis_client: redis.Redis, bucket_dir: Path) -> None:
    """Not as "deleted after enqueue", which Lithops' localhost get_object says of every error. As
    root (where permissions do not stop a read), the download runs in a child that gives root up."""
    (bucket_dir / "v").mkdir()
    locked = bucket_dir / "v" / "locked.mp4"
    locked.write_bytes(b"\x00" * 1000)
    locked.chmod(0)
    from lithops import Storage

    context = context_for(redis_client, Storage(backend="localhost"))
    target = Path(tempfile.mkdtemp())
    target.chmod(0o777)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                download_once(context, BUCKET, "v/locked.mp4", str(target))
                report = "downloaded"
            except VideoDecodeError as error:
                report = error.message
            except BaseException as error:
                report = f"{type(error).__name__}: {error}"
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(child, 0)
    shutil.rmtree(target, ignore_errors=True)
    assert "storage refused to read it (PermissionError" in report, report
    assert "deleted after enqueue" not in report


def test_a_missing_object_is_still_reported_deleted(redis_client: redis.Redis, bucket_dir: Path) -> None:
    from lithops import Storage

    context = context_for(redis_client, Storage(backend="localhost"))
    message = classify_one(context, f"{BUCKET}/v/gone.mp4", "1:1")
    assert "no longer exists in storage (deleted after enqueue)" in (message.error or "")


def test_a_small_object_downloads_whole(redis_client: redis.Redis, bucket_dir: Path, tmp_path: Path) -> None:
    from lithops import Storage

    (bucket_dir / "v").mkdir()
    (bucket_dir / "v" / "small.mp4").write_bytes(b"abc" * 1000)
    context = context_for(redis_client, Storage(backend="localhost"), max_video_bytes=3000)
    local = download_once(context, BUCKET, "v/small.mp4", str(tmp_path))
    assert Path(local).read_bytes() == b"abc" * 1000


@pytest.mark.parametrize("prefix", ["../outside-untrusted-test/", "v/../../outside-untrusted-test/"])
def test_the_producer_lists_nothing_outside_the_bucket(bucket_dir: Path, prefix: str) -> None:
    outside = Path(LITHOPS_TEMP_DIR) / "outside-untrusted-test"
    outside.mkdir(exist_ok=True)
    (outside / "secret.mp4").write_bytes(b"not yours")
    (bucket_dir / "v").mkdir()
    try:
        with pytest.raises(ConfigError, match="reaches outside the bucket"):
            list(iter_localhost(BUCKET, prefix))
        with pytest.raises(ConfigError, match="not a bucket name"):
            list(iter_localhost("..", "outside-untrusted-test/"))
    finally:
        shutil.rmtree(outside)


# --- credentials in URLs, error messages and logs -------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw-secret@h:1/0", "redis://:***@h:1/0"),
    ("redis://user:pw%40secret@h:1/0?db=1", "redis://user:***@h:1/0?db=1"),
    ("redis://h:1/0?password=pw-secret&db=2", "redis://h:1/0?password=***&db=2"),
    ("rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_password=pw-secret", "rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_password=***"),
    ("unix:///run/redis.sock?db=0&password=pw-secret", "unix:///run/redis.sock?db=0&password=***"),
    ("redis://user@h:1/0", "redis://user@h:1/0"),
])
def test_every_credential_form_is_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert redact_text(f"failed: {url} (retrying)") == f"failed: {shown} (retrying)"


def test_connection_errors_never_show_the_password(tmp_path: Path) -> None:
    from tests.redis_server import free_port

    with pytest.raises(RedisUnavailableError) as refused:
        connect(f"redis://127.0.0.1:{free_port()}/0?password=pw-secret-1")
    assert "password=***" in str(refused.value) and "pw-secret-1" not in str(refused.value)
    with running_redis(tmp_path / "redis", password="right-password") as good_url:
        port = good_url.rsplit(":", 1)[1].split("/")[0]
        for url in (f"redis://127.0.0.1:{port}/0?password=pw-secret-2", f"redis://:pw-secret-2@127.0.0.1:{port}/0"):
            with pytest.raises(RedisUnavailableError, match="refused the credentials") as wrong:
                connect(url)
            assert "pw-secret-2" not in str(wrong.value) and "***" in str(wrong.value)
        connect(f"redis://127.0.0.1:{port}/0?password=right-password").ping()


def test_logs_never_show_a_password(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import logging

    configure_logging(json_logs=True)  # our handler now writes to capsys's stderr: undone below
    try:
        log = get_logger("untrusted-test")
        log.warning("redis_lost", url="redis://h:1/0?password=pw-secret-3", urls=["redis://:pw-secret-4@h/0"])
        try:
            raise ConnectionError("lost rediss://:pw-secret-5@h:6380/0")
        except ConnectionError:
            log.exception("with_traceback")
        logging.getLogger("lithops").warning("connecting to %s", "redis://h/0?password=pw-secret-6")
    finally:
        reset_logging()
    err = capsys.readouterr().err  # every record, structlog's and stdlib's, through our one handler
    assert "redis_lost" in err and "with_traceback" in err and "redis://:***@h/0" in err
    assert "connecting to redis://h/0?password=***" in err
    assert "pw-secret" not in err, err
    # Other handlers (pytest's here) get stdlib records redacted too.
    assert "connecting to redis://h/0?password=***" in caplog.messages
    assert not any("pw-secret" in message for message in caplog.messages)


# --- TLS: the server's certificate must name the host ---------------------------------------------

class ImpostorServer(RedisServer):
    """A TLS Redis whose certificate names another host; the harness (start, stop) reaches it
    without the host name check, the test with it."""

    @property
    def strict_url(self) -> str:
        return super().url

    @property
    def url(self) -> str:
        return super().url + "&ssl_check_hostname=false"


@pytest.mark.skipif(not tls_capable_server_available(), reason=f"needs a TLS-capable {TLS_CAPABLE_BINARY}")
def test_a_tls_server_whose_certificate_names_another_host_is_refused(tmp_path: Path) -> None:
    """A certificate the CA signed, for another host: the connection is refused, by our connect and
    by a plain redis-py client of the release pyproject requires (Lithops builds its own)."""
    impostor = ImpostorServer(tmp_path / "redis", tls=make_tls_files(tmp_path / "impostor", "redis.example.org"))
    impostor.start()
    try:
        url = impostor.strict_url
        with pytest.raises(RedisUnavailableError, match=r"(?i)certificate") as refused:
            connect(url)
        assert "doesn't match" in str(refused.value) or "mismatch" in str(refused.value), refused.value
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
            redis.Redis.from_url(url, socket_connect_timeout=5).ping()
        assert redis.Redis.from_url(impostor.url).ping()  # the server is up: only the name is wrong
    finally:
        impostor.stop()
    genuine = make_tls_files(tmp_path / "genuine")  # names 127.0.0.1: the same set-up connects
    with running_redis(tmp_path / "redis-genuine", tls=genuine) as url:
        assert connect(url).ping()


def test_pyproject_requires_a_redis_py_that_checks_tls_host_names() -> None:
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (spec,) = [Requirement(line).specifier for line in project["project"]["dependencies"]
               if Requirement(line).name == "redis"]
    assert not spec.contains("5.3.1") and spec.contains("6.0.0")


# --- frames too large to decode -------------------------------------------------------------------

def test_a_stream_of_frames_larger_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    from consumer.frames import _Decoder, read_frames
    from tests.media import synthetic_frames, write_h264

    clip = write_h264(tmp_path / "clip.mp4", synthetic_frames(30, height=96, width=128))
    with pytest.raises(VideoDecodeError) as refused:
        _Decoder(str(clip), "v/clip.mp4", max_frame_pixels=128 * 96 - 1)  # opening the container decodes nothing
    assert refused.value.reason == (
        "its frames are 128x96 (12,288 pixels), more than the 12,287-pixel limit (MOMENTS_MAX_FRAME_PIXELS)"
    )
    with pytest.raises(VideoDecodeError, match="MOMENTS_MAX_FRAME_PIXELS"):
        read_frames(str(clip), 8, max_frame_pixels=128 * 96 - 1)
    assert read_frames(str(clip), 8, max_frame_pixels=128 * 96).frames.shape == (8, 96, 128, 3)
    assert read_frames(str(clip), 8).frame_count == 30  # the default (8K) takes it


def test_the_frame_limit_setting() -> None:
    assert Settings.from_env({}).max_frame_pixels == 8192 * 4352 >= 7680 * 4320
    assert Settings.from_env({"MOMENTS_MAX_FRAME_PIXELS": "100"}).max_frame_pixels == 100
    with pytest.raises(ConfigError, match="MOMENTS_MAX_FRAME_PIXELS"):
        Settings.from_env({"MOMENTS_MAX_FRAME_PIXELS": "0"})


def test_an_oversized_s3_object_is_refused_from_its_head(redis_client: redis.Redis, tmp_path: Path) -> None:
    """Against a real S3-compatible server through Lithops' minio backend: the HEAD's size refuses
    the large object, a GET the small one streams whole, a missing one is reported deleted."""
    from lithops import Storage

    from tests.s3_server import ACCESS_KEY, SECRET_KEY, running_s3, s3_client

    with running_s3(tmp_path / "moto") as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="v/big.mp4", Body=b"\x00" * 5000)
        s3.put_object(Bucket=BUCKET, Key="v/small.mp4", Body=b"abc" * 1000)
        storage = Storage(config={"lithops": {"storage": "minio"},
                                  "minio": {"endpoint": endpoint, "access_key_id": ACCESS_KEY,
                                            "secret_access_key": SECRET_KEY, "storage_bucket": BUCKET}})
        context = context_for(redis_client, storage, max_video_bytes=4000)
        big = classify_one(context, f"{BUCKET}/v/big.mp4", "5000:x")
        assert "5,000 bytes, larger than the 4,000-byte limit (MOMENTS_MAX_VIDEO_BYTES)" in (big.error or ""), big
        assert Path(download_once(context, BUCKET, "v/small.mp4", str(tmp_path))).read_bytes() == b"abc" * 1000
        gone = classify_one(context, f"{BUCKET}/v/gone.mp4", "1:x")
        assert "deleted after enqueue" in (gone.error or ""), gone
