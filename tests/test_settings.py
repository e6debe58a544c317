"""Settings: every MOMENTS_* variable is checked where it is read, its error names the variable and
what it allows; one way to change settings (Settings.replace), which checks the same way."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from moments_stream.errors import ConfigError
from moments_stream.settings import (
    ENVIRONMENT,
    Choice,
    Directory,
    EnvVar,
    Flag,
    Integer,
    Name,
    RedisUrl,
    Settings,
    Source,
)

README = Path(__file__).resolve().parent.parent / "README.md"
BY_NAME = {variable.name: variable for variable in ENVIRONMENT}


def bad_values(variable: EnvVar, a_file: Path) -> list[str]:
    """Values the variable's kind does not allow."""
    kind = variable.kind
    if isinstance(kind, Integer):
        values = ["twelve", "1.5", str(kind.low - 1 if not kind.zero_unset else -1)]
        return values + ([str(kind.high + 1)] if kind.high is not None else [])
    if isinstance(kind, Flag):
        return ["maybe", "2"]
    if isinstance(kind, Choice):
        return ["no-such-thing"]
    if isinstance(kind, Name):
        return ["not valid/name!"]
    if isinstance(kind, RedisUrl):
        return ["http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0", "127.0.0.1:6379"]
    if isinstance(kind, Source):
        return ["ftp://example.org/weights.pth.tar", "s3://bucket/weights.pth.tar"]
    if isinstance(kind, Directory):
        return [str(a_file)]  # a file stands where the directory would be
    raise AssertionError(f"no bad value for {kind!r}")


def as_text(value: object) -> str:
    """A field's value as its variable's text."""
    if value is None:
        return "0"  # optional whole numbers: 0 lets the program choose (other optional values stay unset)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def test_every_field_is_read_from_one_variable() -> None:
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert fields == {variable.field for variable in ENVIRONMENT}
    assert len(BY_NAME) == len(ENVIRONMENT) and all(name.startswith("MOMENTS_") for name in BY_NAME)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_a_bad_value_is_refused_naming_the_variable_and_what_it_allows(name: str, tmp_path: Path) -> None:
    variable = BY_NAME[name]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for value in bad_values(variable, a_file):
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({name: value})
        assert name in refused.value.message, (value, refused.value.message)
        assert name in refused.value.fix and f"default {variable.default}" in refused.value.fix
        assert (variable.allowed or variable.kind.allowed) in refused.value.fix


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_the_default_is_accepted_as_the_variables_value(name: str) -> None:
    variable = BY_NAME[name]
    defaults = Settings.from_env({})
    default = getattr(defaults, variable.field)
    if default is None and not (isinstance(variable.kind, Integer) and variable.kind.zero_unset):
        assert Settings.from_env({name: ""}) == defaults  # unset: an empty variable is no value
        return
    assert Settings.from_env({name: as_text(default)}) == defaults
    assert Settings.from_env({name: ""}) == defaults


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [("MOMENTS_JOB_RETRIES", "0", 0), ("MOMENTS_JOB_BATCH", "1000", 1000), ("MOMENTS_COMPILE", "yes", True),
     ("MOMENTS_EMBEDDED_REDIS", "off", False), ("MOMENTS_THREADS", "0", None), ("MOMENTS_THREADS", "4", 4),
     ("MOMENTS_DEVICE", "cuda:1", "cuda:1"), ("MOMENTS_QUEUE", "other-queue", "other-queue"),
     ("MOMENTS_REDIS_URL", "rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem", "rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem"),
     ("MOMENTS_REDIS_URL", "unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
     ("MOMENTS_WEIGHTS", "https://example.org/w.pth.tar", "https://example.org/w.pth.tar"),
     ("MOMENTS_WEIGHTS", "relative/w.pth.tar", "relative/w.pth.tar"),
     ("MOMENTS_WEIGHTS_SHA256", "AB" * 32, "AB" * 32), ("MOMENTS_MODEL", "v2", "v2")],
)
def test_allowed_values_are_read(name: str, text: str, value: object) -> None:
    assert getattr(Settings.from_env({name: text}), BY_NAME[name].field) == value


def test_negative_job_retries_are_refused_where_they_are_read() -> None:
    """The case that started it: MOMENTS_JOB_RETRIES=-1 used to pass, then every enqueue failed in rq."""
    with pytest.raises(ConfigError, match=re.escape("MOMENTS_JOB_RETRIES=-1 is out of range")) as refused:
        Settings.from_env({"MOMENTS_JOB_RETRIES": "-1"})
    assert "from 0 to 100" in refused.value.fix


def test_replace_checks_the_new_values_and_can_unset_an_optional_field() -> None:
    settings = Settings.from_env({"MOMENTS_FUNCTION_REDIS_URL": "redis://10.0.0.1:6379/0"})
    with pytest.raises(ConfigError, match="MOMENTS_JOB_RETRIES=-1 is out of range"):
        settings.replace(job_retries=-1)
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8' \(MOMENTS_PRECISION\)") as refused:
        settings.replace(precision="fp8")
    assert "--precision" in refused.value.fix
    assert settings.replace(function_redis_url=None).function_redis_url is None
    functions = settings.for_functions()
    assert (functions.redis_url, functions.function_redis_url) == ("redis://10.0.0.1:6379/0", None)
    assert settings.replace(num_frames=8).num_frames == 8 and settings.num_frames == 16


def test_readme_documents_every_variable() -> None:
    readme = README.read_text()
    missing = [name for name in BY_NAME if f"`{name}" not in readme]
    assert not missing, f"README's settings tables lack {missing}"
