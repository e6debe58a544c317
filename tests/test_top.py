"""``aggregator top``, the live view, in a real terminal (tmux) against a real Redis: it redraws as
videos are counted, ``q`` and Ctrl-C quit with status 0 and the terminal's settings restored; when
stdout is not a terminal it prints plain text, as ``status --watch`` does."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from rq import SimpleWorker

from aggregator.drain import DrainReport, apply_batch
from aggregator.top import sparkline
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome, counted
from moments_stream.queues import JOB_SERIALIZER, enqueue_videos, video_queue
from moments_stream.settings import Settings
from tests.pipeline import BIN, run, wait_until

MODEL = "v1-aaaaaaaaaaaa-11111111"
DEADLINE_S = 60  # generous: a loaded machine redraws late, never wrongly
ESCAPE = "\x1b"
BAR = "[█▉▊▋▌▍▎▏]+"  # rich's bar: full blocks, then an eighth-block for the remainder


def outcome(index: int, top1: str) -> VideoOutcome:
    return counted(f"v/{index}.mp4", "1:1", MODEL, [(top1, 0.7), ("other", 0.3)], worker="w1",
                   download_ms=4.0, decode_ms=30.0, infer_ms=200.0)


def record(client: redis.Redis, *outcomes: VideoOutcome) -> None:
    """Outcomes recorded as the aggregator records them (the ledger, then the stage histograms)."""
    apply_batch(client, Keys(), list(outcomes), DrainReport())


@pytest.fixture()
def env(redis_url: str, redis_client: redis.Redis) -> dict[str, str]:
    enqueue_videos(redis_client, Settings.from_env({}).replace(redis_url=redis_url),
                   {f"v/{i}.mp4": "1:1" for i in range(10)})
    record(redis_client, outcome(0, "juggling"), outcome(1, "juggling"), outcome(2, "juggling"), outcome(3, "running"))
    return dict(os.environ, MOMENTS_REDIS_URL=redis_url, MOMENTS_EMBEDDED_REDIS="0")


class Tmux:
    """One tmux server of its own (its own socket, no user configuration) holding one session."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"moments-top-{uuid.uuid4().hex[:10]}"
        self.env = env

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args], env=self.env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, command: str) -> None:
        self("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", command)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.name)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], env=self.env, capture_output=True, timeout=30)


@pytest.fixture()
def tmux(env: dict[str, str]) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    session = Tmux(env)
    try:
        yield session
    finally:
        session.kill()


def wait_for_screen(tmux: Tmux, pattern: str, what: str) -> str:
    seen: list[str] = []

    def shows() -> bool:
        seen[:] = [tmux.screen()]
        return re.search(pattern, seen[0], re.MULTILINE) is not None

    try:
        wait_until(shows, DEADLINE_S, what, interval=0.2)
    except AssertionError as error:
        raise AssertionError(f"{error}; the screen:\n{seen[0] if seen else ''}") from None
    return seen[0]


def top_in_tmux(tmux: Tmux, tmp_path: Path) -> tuple[Path, Path]:
    """``aggregator top`` in the session's terminal; after it exits, its status and ``stty -a`` of the
    same terminal go to files."""
    status, stty = tmp_path / "status", tmp_path / "stty"
    top = shlex.quote(str(BIN / "aggregator"))
    tmux.start(f"{top} top --interval 0.2 2>{shlex.quote(str(tmp_path / 'stderr'))}; echo $? > {status}.part; "
               f"stty -a > {stty}; mv {status}.part {status}")
    return status, stty


def exit_status(status: Path, tmp_path: Path) -> int:
    wait_until(status.exists, DEADLINE_S, "aggregator top to exit")
    code = int(status.read_text())
    assert code == 0, (tmp_path / "stderr").read_text()
    return code


def assert_terminal_restored(stty: Path) -> None:
    settings = stty.read_text()
    # cbreak mode clears ICANON and ECHO; both must be back on
    assert re.search(r"(?<![-\w])icanon\b", settings), settings
    assert re.search(r"(?<![-\w])echo\b", settings), settings


def test_live_view_redraws_as_videos_are_counted_and_q_quits(
    tmux: Tmux, redis_client: redis.Redis, tmp_path: Path
) -> None:
    status, stty = top_in_tmux(tmux, tmp_path)
    screen = wait_for_screen(tmux, r"counted 4\b", "the first view")
    assert re.search(rf"^ *juggling +{BAR} +3 +75\.0%", screen, re.MULTILINE), screen
    assert re.search(rf"^ *running +{BAR} +1 +25\.0%", screen, re.MULTILINE), screen
    assert re.search(r"pending 6\b", screen) and MODEL in screen, screen

    record(redis_client, outcome(4, "running"), outcome(5, "running"), outcome(6, "running"))
    screen = wait_for_screen(tmux, rf"^ *running +{BAR} +4 +57\.1%", "running counted 4 times")
    assert re.search(r"counted 7\b", screen) and re.search(r"pending 3\b", screen), screen
    assert re.search(rf"^ *juggling +{BAR} +3 +42\.9%", screen, re.MULTILINE), screen

    tmux("send-keys", "-t", tmux.name, "q")
    assert exit_status(status, tmp_path) == 0
    assert_terminal_restored(stty)


@pytest.mark.parametrize("quit_by", ["C-c", "SIGTERM"])
def test_ctrl_c_or_sigterm_quits_the_live_view_with_status_0(tmux: Tmux, tmp_path: Path, quit_by: str) -> None:
    status, stty = top_in_tmux(tmux, tmp_path)
    wait_for_screen(tmux, r"counted 4\b", "the first view")
    if quit_by == "C-c":
        tmux("send-keys", "-t", tmux.name, "C-c")
    else:
        shell = psutil.Process(int(tmux("display-message", "-p", "-t", tmux.name, "#{pane_pid}")))
        (top,) = shell.children()  # the shell that runs it waits for it
        top.send_signal(signal.SIGTERM)
    assert exit_status(status, tmp_path) == 0
    assert_terminal_restored(stty)


def test_plain_text_when_stdout_is_not_a_terminal(env: dict[str, str], redis_client: redis.Redis,
                                                  redis_url: str) -> None:
    settings = Settings.from_env({}).replace(redis_url=redis_url)
    queue = video_queue(redis_client, settings)
    busy = SimpleWorker([queue], connection=redis_client, name="busy-consumer", serializer=JOB_SERIALIZER)
    busy.register_birth()
    job, _ = queue.dequeue_any([queue], timeout=None, connection=redis_client, serializer=JOB_SERIALIZER)
    busy.prepare_execution(job)
    held = job.args[0][0][0]

    done = run(env, "aggregator", "top", "--iterations", "2", "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert ESCAPE not in done.stdout
    frames = done.stdout.split("\n\n" + "moments top")
    assert len(frames) == 2, done.stdout
    first = frames[0]
    assert first.startswith(f"moments top  model {MODEL}")
    assert re.search(r"^counted 4 +failed 0 +pending 6 ", first, re.MULTILINE), first
    assert re.search(r"^ *juggling +█{32} +3 +75\.0%$", first, re.MULTILINE), first  # the peak fills the bar
    assert re.search(rf"^ *running +█{{10}}{BAR} +1 +25\.0%$", first, re.MULTILINE), first  # a third of it
    assert "stage means  download 4 ms, decode 30 ms, infer 200 ms  (over 4 videos)" in first
    assert re.search(r"^in flight 1 jobs +queued 9 jobs ", first, re.MULTILINE), first
    assert re.search(rf"^ *busy-consumer +busy +\d+ s ago +{re.escape(held)}$", first, re.MULTILINE), first
    # recorded together, the 4 finishes fall in one minute, whichever it is by now
    assert re.search(r"last 10 min [▁▂▃▄▅▆▇█]{10} per minute, peak 4$", first, re.MULTILINE), first

    watched = run(env, "aggregator", "status", "--watch", "--iterations", "2", "--interval", "0.1")
    assert watched.returncode == 0, watched.stderr
    assert ESCAPE not in watched.stdout
    once = run(env, "aggregator", "status").stdout.rstrip("\n")

    def steady(text: str) -> list[str]:  # throughput, ETA and heartbeat ages move with the clock
        return [re.sub(r"heartbeat \d+ s ago", "heartbeat N s ago", line) for line in text.splitlines()
                if not line.startswith(("throughput", "ETA"))]

    assert steady(watched.stdout) == steady(f"{once}\n\n{once}\n")
    assert watched.stdout.count("model        ") == 2


def test_an_unknown_model_stops_before_the_view(env: dict[str, str]) -> None:
    done = run(env, "aggregator", "top", "--model", "v9-nothing")
    assert done.returncode != 0 and "is not a model that has counted videos" in done.stderr, done.stderr
    assert done.stdout == ""


def test_sparkline() -> None:
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 7, 14]) == "▁▅█"
