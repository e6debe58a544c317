"""`consumer classify` as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


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
