"""Running the real stages as users do (CLI subprocesses) against a real Redis, for e2e tests."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from consumer.classify import Classifier, decode_video, load_classifier
from moments_stream.settings import Settings
from tests.media import synthetic_frames, write_h264, write_opencv

BIN = Path(sys.executable).parent


def make_clips(directory: Path, seeds: range, height: int = 96, width: int = 128) -> list[Path]:
    """3 s, 30 fps clips like MiT's: H.264 mostly, every third one mp4v."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for seed in seeds:
        frames = synthetic_frames(90, height=height, width=width, seed=seed)
        if seed % 3 == 2:
            clips.append(write_opencv(directory / f"clip{seed:02d}.mp4", frames, "mp4v"))
        else:
            clips.append(write_h264(directory / f"clip{seed:02d}.mp4", frames))
    return clips


def pipeline_environment(redis_url: str, checkpoint: Path, categories: Path, data_dir: Path) -> dict[str, str]:
    return dict(
        os.environ,
        MOMENTS_REDIS_URL=redis_url,
        MOMENTS_EMBEDDED_REDIS="0",
        MOMENTS_BUCKET=f"e2e-{uuid.uuid4().hex[:10]}",
        MOMENTS_WEIGHTS=str(checkpoint),
        MOMENTS_CATEGORIES=str(categories),
        MOMENTS_NUM_FRAMES="8",
        MOMENTS_DATA_DIR=str(data_dir),
    )


def run(env: dict[str, str], *command: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout)


class Started(subprocess.Popen):
    """A stage running in the background, its output going to files as it is written: a pipe read
    only at exit would block a chatty process once the pipe's buffer is full."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.output_dir = Path(tempfile.mkdtemp(prefix="moments-process-"))
        atexit.register(shutil.rmtree, self.output_dir, True)
        with (self.output_dir / "stdout").open("w") as out, (self.output_dir / "stderr").open("w") as err:
            super().__init__(argv, env=env, stdout=out, stderr=err, text=True)

    def output(self) -> tuple[str, str]:
        """Everything written so far to stdout and stderr."""
        return (self.output_dir / "stdout").read_text(), (self.output_dir / "stderr").read_text()

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout=timeout)
        return self.output()


def start(env: dict[str, str], *command: str) -> Started:
    return Started([str(BIN / command[0]), *command[1:]], env=env)


def client_for(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["MOMENTS_REDIS_URL"])


def current_model(client: redis.Redis) -> str:
    """The current model (the one the live table holds), read as a user would with redis-cli ("" before any count)."""
    current = client.get("moments:current-model")
    return current.decode() if current is not None else ""


def predictions_key(client: redis.Redis) -> str:
    return f"moments:predictions:{current_model(client)}"


def counts_of(client: redis.Redis, model_id: str | None = None) -> dict[str, int]:
    key = f"moments:counts:{model_id or current_model(client)}"
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def counts(env: dict[str, str]) -> dict[str, int]:
    return counts_of(client_for(env))


# The model `consumer classify` loads for the settings of direct_top1's callers, loaded once in the
# test process (the last one asked for: tests switch between two checkpoints at most), and the
# top-1 it gave each clip, by what the clip is (its bytes) and the model settings.
_MODEL_SETTINGS = ("model", "weights", "categories", "weights_sha256", "cache_dir", "num_frames", "precision",
                   "engine", "threads", "compile", "device", "max_decoded_frames", "max_frame_pixels")
_loaded: dict[tuple, Classifier] = {}
_top1: dict[tuple, str] = {}


def _model_key(settings: Settings) -> tuple:
    key = tuple(getattr(settings, name) for name in _MODEL_SETTINGS)
    weights = Path(settings.weights_source)
    if weights.is_file():  # a checkpoint rewritten at the same path is another model
        key += (weights.stat().st_size, weights.stat().st_mtime_ns)
    return key


def direct_top1(env: dict[str, str], clips: list[Path]) -> dict[str, str]:
    """What `consumer classify` says of each clip, by file name: the truth the pipeline must match.

    It is the command's own path (consumer/cli.py's cmd_classify: the model ``env``'s settings
    load, decode_video, Classifier.classify_decoded), run in the test process instead of one
    `consumer classify` process per test, each of which paid for starting and loading the model:
    the model is loaded once and a clip seen before (same bytes, same model) is not classified again.
    Nothing of the pipeline (Redis, rq, Lithops, consumers) is involved."""
    settings = Settings.from_env(env)
    model = _model_key(settings)
    if model not in _loaded:
        _loaded.clear()
        _loaded[model] = load_classifier(settings, progress=False)
    classifier = _loaded[model]
    top1 = {}
    for clip in clips:
        key = (model, hashlib.sha256(clip.read_bytes()).hexdigest())
        if key not in _top1:
            decoded = decode_video(str(clip), settings.num_frames, settings.max_decoded_frames,
                                   settings.max_frame_pixels)
            _top1[key] = classifier.classify_decoded(decoded).top1
        top1[clip.name] = _top1[key]
    return top1


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
