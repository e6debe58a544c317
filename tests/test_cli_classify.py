"""`consumer classify` as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.classify import decode_video
from moments_stream.settings import DEFAULT_MAX_DECODED_FRAMES


def run_consumer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def model_args(checkpoint_v1: Path, categories_v1: Path) -> list[str]:
    return ["--weights", str(checkpoint_v1), "--categories", str(categories_v1)]


def test_classify_prints_top5_like_the_release(juggling: Path, model_args: list[str]) -> None:
    done = run_consumer("classify", str(juggling), *model_args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"RESULT ON {juggling}"
    assert len(lines) == 6 and all(" -> " in line for line in lines[1:])
    assert "NOT real action predictions" in done.stderr


def test_classify_json_and_bad_input_together(juggling: Path, model_args: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    done = run_consumer("classify", str(juggling), str(broken), "--json", *model_args)
    assert done.returncode == 1
    good, bad = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert good["video"] == str(juggling) and len(good["top5"]) == 5 and good["frame_count"] == 90
    assert good["synthetic_weights"] is True and good["model_id"].startswith("synthetic-v1-")
    assert bad["video"] == str(broken) and "cannot decode" in bad["error"]


def test_missing_weights_names_the_fix(juggling: Path, categories_v1: Path, tmp_path: Path) -> None:
    done = run_consumer(
        "classify", str(juggling), "--weights", str(tmp_path / "nope.pth.tar"), "--categories", str(categories_v1)
    )
    assert done.returncode == 2
    assert "error: file" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_environment_variables_select_the_model(juggling: Path, checkpoint_v1: Path, categories_v1: Path) -> None:
    import os

    env = dict(
        os.environ, MOMENTS_WEIGHTS=str(checkpoint_v1), MOMENTS_CATEGORIES=str(categories_v1), MOMENTS_NUM_FRAMES="8"
    )
    done = run_consumer("classify", str(juggling), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["top5"]) == 5


def test_make_test_checkpoint_writes_release_format(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "w.pth.tar"
    done = run_consumer("make-test-checkpoint", str(out), "--model", "v2")
    assert done.returncode == 0, done.stderr
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["state_dict"]["module.fc.weight"].shape == (305, 2048)
    assert checkpoint["moments_stream_synthetic"] is True


def test_offline_trial_needs_only_a_test_checkpoint(tmp_path: Path) -> None:
    """The category list ships with the package: weights from make-test-checkpoint are enough, for
    a phone-style HEVC clip and an AV1 web video alike."""
    from tests.media import ffmpeg

    weights = tmp_path / "synthetic.pth.tar"
    assert run_consumer("make-test-checkpoint", str(weights)).returncode == 0
    source = "testsrc2=size=160x120:rate=30:duration=2"
    hevc, av1 = tmp_path / "phone.mov", tmp_path / "web.webm"
    ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
           "-pix_fmt", "yuv420p", str(tmp_path / "plain.mov"))
    ffmpeg("-display_rotation", "90", "-i", str(tmp_path / "plain.mov"), "-c", "copy", str(hevc))
    ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", str(av1))
    env = {**os.environ, "MOMENTS_CACHE_DIR": str(tmp_path / "empty-cache")}
    env.pop("MOMENTS_CATEGORIES", None)
    done = run_consumer("classify", str(hevc), str(av1), "--json", "--weights", str(weights), env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["codec"], r["sampling"], r["frame_count"]) for r in records] == [("hevc", "seek", 60),
                                                                                ("libdav1d", "seek", 60)]
    assert all(len(r["top5"]) == 5 and r["synthetic_weights"] for r in records)


def test_frames_larger_than_the_pixel_limit_are_refused_as_the_setting_says(juggling: Path,
                                                                             model_args: list[str]) -> None:
    """MOMENTS_MAX_FRAME_PIXELS reaches the decoder (the clip is 480x480): the command refuses the
    clip one pixel under its frame size; at its size exactly the decoder takes it (checked in this
    process, no second command loading the model: the command classifying a clip it accepts is
    test_classify_prints_top5_like_the_release's check)."""
    env = dict(os.environ, MOMENTS_MAX_FRAME_PIXELS=str(480 * 480 - 1))
    done = run_consumer("classify", str(juggling), "--json", *model_args, env=env)
    assert done.returncode == 1
    assert "MOMENTS_MAX_FRAME_PIXELS" in json.loads(done.stdout)["error"]
    decoded = decode_video(str(juggling), 8, DEFAULT_MAX_DECODED_FRAMES, max_frame_pixels=480 * 480)
    assert decoded.sampled.frames.shape[0] == 8
