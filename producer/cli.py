"""``producer``: upload local videos into storage and enqueue new keys for the consumers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from moments_stream.cli_common import add_command, run_cli, settings_from_args
from moments_stream.errors import ConfigError
from moments_stream.lithops_env import storage as lithops_storage
from moments_stream.logs import get_logger
from moments_stream.redis_conn import ensure_redis
from moments_stream.settings import Settings

from .enqueue import EnqueueReport, enqueue_objects
from .listing import iter_objects
from .upload import UploadReport, upload_directory

log = get_logger(__name__)


def enqueue_prefix(settings: Settings, prefix: str) -> EnqueueReport:
    client = ensure_redis(settings)
    storage = lithops_storage(settings)
    listed = 0

    def counted():
        nonlocal listed
        for item in iter_objects(storage, settings.bucket, prefix):
            listed += 1
            yield item

    report = enqueue_objects(client, settings, counted())
    if listed == 0:
        raise ConfigError(
            f"no objects under prefix {prefix!r} in bucket {settings.bucket!r}",
            fix="check the prefix and --bucket/MOMENTS_BUCKET; `producer upload DIR PREFIX` copies local files in",
        )
    log.info("enqueued", prefix=prefix, bucket=settings.bucket, enqueued=report.enqueued,
             skipped=report.skipped, ignored=report.ignored)  # fmt: skip
    return report


def upload(settings: Settings, directory: Path, prefix: str) -> UploadReport:
    report = upload_directory(lithops_storage(settings), settings.bucket, directory, prefix)
    log.info("uploaded", directory=str(directory), prefix=prefix, bucket=settings.bucket,
             uploaded=report.uploaded, unchanged=report.unchanged)  # fmt: skip
    return report


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def cmd_enqueue(args: argparse.Namespace) -> int:
    print(enqueue_prefix(settings_from_args(args), normalise_prefix(args.prefix)))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    print(upload(settings_from_args(args), Path(args.directory), normalise_prefix(args.prefix)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="producer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    enqueue = add_command(
        sub, cmd_enqueue, "enqueue", help="enqueue the videos under PREFIX not enqueued before", redis=True
    )
    enqueue.add_argument("prefix", help="key prefix, e.g. videos/")
    upload_cmd = add_command(
        sub, cmd_upload, "upload", help="copy the videos of a local folder into storage under PREFIX", redis=True
    )
    upload_cmd.add_argument("directory")
    upload_cmd.add_argument("prefix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
