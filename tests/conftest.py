from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from consumer.classify import Classifier, load_classifier
from consumer.model import make_synthetic_checkpoint
from moments_stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOMENTS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "juggling.mp4").is_file():
        pytest.fail(
            f"reference data missing at {SHARED_DATA}: check out ../shared beside the repo or set MOMENTS_SHARED_DATA"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def juggling(shared_data: Path) -> Path:
    return shared_data / "juggling.mp4"


@pytest.fixture(scope="session")
def categories_v1(shared_data: Path) -> Path:
    return shared_data / "category_momentsv1.txt"


@pytest.fixture(scope="session")
def checkpoint_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "moments_RGB_resnet50_imagenetpretrained.pth.tar"
    torch.save(make_synthetic_checkpoint(339, seed=0), path)
    return path


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory, checkpoint_v1: Path, categories_v1: Path) -> Settings:
    cache = tmp_path_factory.mktemp("cache")
    return Settings.from_env({}).replace(weights=str(checkpoint_v1), categories=str(categories_v1), cache_dir=cache)


@pytest.fixture(scope="session")
def classifier(base_settings: Settings) -> Classifier:
    return load_classifier(base_settings, progress=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    from tests.redis_server import running_redis

    with running_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture()
def redis_client(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture()
def pipeline_env(tmp_path: Path, checkpoint_v1: Path, categories_v1: Path):
    """The environment the stages' CLIs run in: a fresh redis-server, a fresh bucket, test weights."""
    import shutil

    from lithops.constants import LITHOPS_TEMP_DIR

    from tests.pipeline import pipeline_environment
    from tests.redis_server import running_redis

    with running_redis(tmp_path / "redis") as url:
        env = pipeline_environment(url, checkpoint_v1, categories_v1, tmp_path / "data")
        yield env
    shutil.rmtree(os.path.join(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)
