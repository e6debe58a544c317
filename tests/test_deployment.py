"""compose.yaml and the runtime Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from consumer.classify import resolve_model_files
from moments_stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "runtime" / "Dockerfile"


def compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return subprocess.run([binary, "-f", str(REPO / "compose.yaml"), "config", "-q"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_compose_file_is_valid() -> None:
    done = compose(dict(os.environ, REDIS_PASSWORD="from-the-environment"))
    assert done.returncode == 0, done.stderr


def test_compose_holds_no_password_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    done = compose(env)
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr


def test_dockerfile_bakes_weights_where_the_consumer_looks(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    cache_dir = re.search(r"MOMENTS_CACHE_DIR=(\S+)", text).group(1)
    settings = Settings.from_env({"MOMENTS_CACHE_DIR": cache_dir})
    assert str(settings.cache_dir) == cache_dir
    assert "resolve_model_files(Settings.from_env()" in text and callable(resolve_model_files)
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        for part in source.split():
            assert (REPO / part).exists(), f"Dockerfile copies missing {part}"
    assert "torch==2.14.1 torchvision==0.29.1" in text
