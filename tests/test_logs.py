"""Logs: one renderer for structlog's events and stdlib records (rq, Lithops, redis-py, warnings),
each line on stderr one JSON object with the logger's name when stderr is not a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
from lithops.utils import setup_lithops_logger

from moments_stream.cli_common import add_command, run_cli
from moments_stream.errors import ConfigError
from moments_stream.logs import configure_logging, get_logger, reset_logging, tell
from tests.pipeline import make_clips, run, start


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` as a JSON object with an event and a logger (fails on any other line)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}\n--- stderr ---\n{text[-6000:]}")
        assert isinstance(event, dict) and "event" in event and event.get("logger"), line
        events.append(event)
    return events


def test_structlog_and_stdlib_records_are_json_lines_with_their_logger(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(verbose=True, json_logs=True)
    try:
        get_logger("consumer.jobs").info("video_processed", video="b/v.mp4")
        logging.getLogger("rq.worker").info("Worker %s started", "w1")
        # What a Lithops executor or function process does to the "lithops" logger: a plain-text
        # handler that does not propagate. Logging set up again takes it back.
        setup_lithops_logger("DEBUG")
        configure_logging(verbose=True, json_logs=True)
        logging.getLogger("lithops.invokers").info("Starting function invocation")
        try:
            raise ValueError("bad frame")
        except ValueError:
            get_logger("aggregator.drain").exception("drain_failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        tell(get_logger("pipeline.cli"), "enqueue_report", "enqueued 2, skipped 0")
    finally:
        reset_logging()
    events = json_lines(capsys.readouterr().err)
    by_event = {event["event"]: event for event in events}
    assert by_event["video_processed"]["logger"] == "consumer.jobs"
    assert by_event["video_processed"]["level"] == "info" and "timestamp" in by_event["video_processed"]
    assert by_event["Worker w1 started"]["logger"] == "rq.worker"
    assert by_event["Starting function invocation"]["logger"] == "lithops.invokers"
    failed = by_event["drain_failed"]
    assert failed["logger"] == "aggregator.drain" and failed["level"] == "error"
    assert failed["exception"][0]["exc_type"] == "ValueError" and failed["exception"][0]["exc_value"] == "bad frame"
    assert any(event["logger"] == "py.warnings" and "a library's warning" in event["event"] for event in events)
    assert by_event["enqueue_report"]["message"] == "enqueued 2, skipped 0"


def test_quiet_by_default_and_plain_text_on_a_console(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(verbose=False, json_logs=False)
    try:
        logging.getLogger("rq.worker").info("rq chatter")
        logging.getLogger("lithops").info("lithops chatter")
        get_logger("producer.service").debug("debug only")
        get_logger("producer.service").info("enqueued", enqueued=2)
        tell(get_logger("pipeline.cli"), "enqueue_report", "enqueued 2, skipped 0")
    finally:
        reset_logging()
    err = capsys.readouterr().err
    assert "chatter" not in err and "debug only" not in err
    assert "enqueued" in err and "producer.service" in err
    assert "enqueued 2, skipped 0\n" in err  # tell: the text itself on a console


def test_a_commands_errors_and_crashes_are_json_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: argparse.Namespace) -> int:
        raise ConfigError("MOMENTS_JOB_RETRIES=-1 is out of range", fix="set MOMENTS_JOB_RETRIES to 0 up to 100")

    def crashes(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    parser = argparse.ArgumentParser(prog="test")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command(commands, fails, "fails")
    add_command(commands, crashes, "crashes")
    try:
        assert run_cli(parser, ["fails"]) == 2
        assert run_cli(parser, ["crashes"]) == 1
    finally:
        reset_logging()
    events = json_lines(capsys.readouterr().err)
    assert [(event["event"], event["level"]) for event in events] == [
        ("command_failed", "error"), ("command_fix", "error"), ("command_crashed", "error")]
    assert events[0]["message"] == "error: MOMENTS_JOB_RETRIES=-1 is out of range"
    assert events[1]["message"] == "fix: set MOMENTS_JOB_RETRIES to 0 up to 100"
    assert events[2]["exception"][0]["exc_type"] == "RuntimeError"
    assert {event["logger"] for event in events} == {"moments_stream.cli_common"}


@pytest.mark.e2e
def test_every_stage_logs_only_json_lines_with_verbose(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    first, second = make_clips(tmp_path / "clips", range(2), height=48, width=64)
    folder.mkdir()
    shutil.copy(first, folder / first.name)

    done = run(pipeline_env, "moments-stream", "run", str(folder), "--workers", "1", "--idle-exit", "2", "--verbose")
    assert done.returncode == 0, done.stderr[-6000:]
    events = json_lines(done.stderr)
    loggers = {event["logger"] for event in events}
    assert {"producer.service", "consumer.launcher", "aggregator.drain", "pipeline.cli"} <= loggers, loggers
    assert any(name.startswith("lithops") for name in loggers) and any(name.startswith("rq") for name in loggers)
    assert any("enqueued 1, skipped 0" in event.get("message", "") for event in events)

    # The stages one by one: upload, enqueue, an aggregator and a consumer function.
    shutil.copy(second, folder / second.name)
    for command in (("producer", "upload", str(folder), "videos/"), ("producer", "enqueue", "videos/")):
        stage = run(pipeline_env, *command, "--verbose")
        assert stage.returncode == 0, stage.stderr[-6000:]
        assert {"producer.service"} <= {event["logger"] for event in json_lines(stage.stderr)}
    aggregator = start(pipeline_env, "aggregator", "run", "--idle-exit", "3", "--verbose")
    consumers = run(pipeline_env, "consumer", "start", "--workers", "1", "--idle-exit", "2", "--verbose")
    assert consumers.returncode == 0, consumers.stderr[-6000:]
    assert "consumer.launcher" in {event["logger"] for event in json_lines(consumers.stderr)}
    _out, err = aggregator.communicate(timeout=120)
    assert aggregator.returncode == 0, err[-6000:]
    recorded = [event for event in json_lines(err) if event["event"] == "video_recorded"]
    assert [event["logger"] for event in recorded] == ["aggregator.drain"]
