"""A real S3-compatible server (moto's standalone server) on a free loopback port, and the Lithops
configurations that point its S3 backends at it: ``aws_s3`` (through boto3's standard
``AWS_ENDPOINT_URL_S3``) and ``minio`` (endpoint in the config)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from tests.redis_server import free_port

ACCESS_KEY = "moments-test-key"
SECRET_KEY = "moments-test-secret"
REGION = "us-east-1"
STORAGE_BACKENDS = ("aws_s3", "minio")


@contextlib.contextmanager
def running_s3(log_dir: Path) -> Iterator[str]:
    """Start ``moto_server`` on 127.0.0.1 and yield its endpoint URL."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).parent / "moto_server"
    with (log_dir / "moto.log").open("w") as log:
        server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(log_dir / 'moto.log').read_text()}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION)


def put_many(endpoint: str, bucket: str, keys: list[str], body: bytes = b"x") -> None:
    client = s3_client(endpoint)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=body), keys))


def lithops_s3_environment(backend: str, endpoint: str, internal_bucket: str, config_dir: Path) -> dict[str, str]:
    """Environment variables that make Lithops (and every stage) use the S3 server for storage."""
    if backend == "aws_s3":
        config = {
            "lithops": {"backend": "localhost", "storage": "aws_s3"},
            "aws": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "region": REGION},
            "aws_s3": {"storage_bucket": internal_bucket},
        }
        extra = {"AWS_ENDPOINT_URL_S3": endpoint}
    elif backend == "minio":
        config = {
            "lithops": {"backend": "localhost", "storage": "minio"},
            "minio": {"endpoint": endpoint, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
                      "storage_bucket": internal_bucket},
        }
        extra = {}
    else:
        raise ValueError(backend)
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"lithops-{backend}.json"
    # Lithops reads YAML; JSON is YAML.
    path.write_text(json.dumps(config))
    return {"LITHOPS_CONFIG_FILE": str(path), **extra}
