"""The runtime images built and run for real: the CPU image and the three backend images made by
runtime/build.sh on a local Debian base (no registry), consumers as Lithops localhost functions
inside the CPU image, the Lambda and Kubernetes images under their platforms' restrictions, and
compose.yaml brought up on these images.

Needs a Docker engine and root (debootstrap); without them every test here skips and says why
(in CI, where .ci/run starts dockerd, they fail instead). The model is a synthetic checkpoint baked
into the images exactly as the release's would be.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from lithops.constants import LITHOPS_TEMP_DIR

from tests.barrier import build_barrier_image, with_barrier
from tests.docker_engine import docker_gateway
from tests.pipeline import client_for, counts_of, direct_top1, make_clips, pipeline_environment, run, start, wait_until
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("MOMENTS_TEST_BASE_IMAGE", "moments-stream-debian:bookworm")
TAG = "ci"
BACKENDS = ("k8s", "code_engine", "aws_lambda")
# The same short leases as the other fault tests, so a killed consumer's video comes back soon.
FAST_HEALING = {"MOMENTS_CONSUMER_LEASE": "4", "MOMENTS_RECOVER_AFTER": "3", "MOMENTS_RETRY_INTERVALS": "1"}


def docker(*args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def why_docker_cannot_run() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client (apt-get install docker.io)"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    if info.returncode != 0:
        return f"no Docker engine answers ({info.stderr.strip()[:200]}): start dockerd (.ci/run does)"
    if not docker_gateway():
        return "Docker's default bridge has no gateway address"
    return None


@pytest.fixture(scope="module")
def docker_engine() -> None:
    reason = why_docker_cannot_run()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"container tests cannot run in CI: {reason}")
        pytest.skip(reason)


def images_on_the_base() -> set[str]:
    """Every image built on runtime/local-base.sh's base (they inherit its label): tagged images, the
    untagged stages of multi-stage builds and the layers under them."""
    listed = docker("images", "--all", "--quiet", "--no-trunc", "--filter", "label=moments-stream.base-inputs")
    return set(listed.stdout.split())


@pytest.fixture(scope="module", autouse=True)
def built_images_removed(docker_engine: None) -> Iterator[None]:
    """The images this module builds (about 4 GB) are removed when it ends, the base excepted: a
    machine that runs the suite again and again (a CI runner) must not fill its disk with them."""
    before = images_on_the_base()
    yield
    kept = set(docker("images", "--quiet", "--no-trunc", BASE_IMAGE, check=False).stdout.split())
    left = images_on_the_base() - before - kept
    # An image with children is refused until they are gone: remove in rounds, leaves first.
    for _ in range(10):
        if not left:
            break
        docker("rmi", "--force", *left, check=False)
        left, removed = images_on_the_base() - before - kept, left
        if left == removed:
            break
    assert not left, f"images this module built are still there: {sorted(left)}"


@pytest.fixture(scope="module")
def python_base(docker_engine: None) -> str:
    """The Debian base runtime/local-base.sh makes (kept while its inputs are unchanged)."""
    if "MOMENTS_TEST_BASE_IMAGE" in os.environ:
        docker("image", "inspect", BASE_IMAGE)
        return BASE_IMAGE
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        reason = "making the Debian base needs root and debootstrap (or set MOMENTS_TEST_BASE_IMAGE)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(["bash", str(REPO / "runtime" / "local-base.sh"), BASE_IMAGE], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return BASE_IMAGE


def build(backend: str, image: str, env: dict[str, str], *flags: str) -> str:
    """runtime/build.sh BACKEND IMAGE --build-only, as a user runs it; returns the base image it made."""
    done = subprocess.run(["bash", str(REPO / "runtime" / "build.sh"), backend, image, "--build-only", *flags],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    base = re.search(r"^base image (\S+)", done.stderr, flags=re.M)
    assert base is not None, done.stderr[-2000:]
    return base.group(1)


@dataclass(frozen=True)
class Images:
    cpu: str  # the CPU runtime image (runtime/Dockerfile) the backend images build on
    backends: dict[str, str]
    build_env: dict[str, str]


@pytest.fixture(scope="module")
def images(python_base: str, checkpoint_v1: Path) -> Images:
    env = dict(os.environ, BASE_IMAGE=python_base, MOMENTS_WEIGHTS=str(checkpoint_v1),
               PYTHON=str(REPO / ".venv" / "bin" / "python"))
    env.pop("MOMENTS_CATEGORIES", None)
    backends = {backend: f"moments-stream-test-{backend.replace('_', '-')}:{TAG}" for backend in BACKENDS}
    bases = {build(backend, image, env) for backend, image in backends.items()}
    assert len(bases) == 1, f"one CPU base for every backend, got {bases}"
    return Images(bases.pop(), backends, env)


@pytest.fixture(scope="module")
def clips_dir(juggling: Path) -> Iterator[Path]:
    """Clips every user may read (the Kubernetes image runs as 1000; pytest's folders are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="moments-container-clips-"))
    folder.chmod(0o755)
    shutil.copy(juggling, folder / "juggling.mp4")
    make_clips(folder, range(2))
    for clip in folder.iterdir():
        clip.chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def host_predictions(checkpoint: Path, clips: list[Path]) -> dict[str, dict]:
    """What `consumer classify --json` says on this machine, with torch: the reference."""
    env = dict(os.environ, MOMENTS_WEIGHTS=str(checkpoint))
    env.pop("MOMENTS_CATEGORIES", None)
    done = run(env, "consumer", "classify", "--json", *map(str, clips))
    assert done.returncode == 0, done.stderr
    return {Path(record["video"]).name: record for record in map(json.loads, done.stdout.splitlines())}


def classify_in(image: str, clips_dir: Path, *run_flags: str) -> dict[str, dict]:
    names = sorted(path.name for path in clips_dir.iterdir())
    done = docker("run", "--rm", "-v", f"{clips_dir}:/clips:ro", *run_flags, "--entrypoint", "consumer", image,
                  "classify", "--json", *(f"/clips/{name}" for name in names))
    return {Path(record["video"]).name: record for record in map(json.loads, done.stdout.splitlines())}


def assert_same_predictions(found: dict[str, dict], expected: dict[str, dict]) -> None:
    assert found.keys() == expected.keys()
    for name, record in found.items():
        assert record["model_id"] == expected[name]["model_id"]
        assert record["model_id"].startswith("synthetic-")
        assert [label for label, _ in record["top5"]] == [label for label, _ in expected[name]["top5"]], name
        for (_, got), (_, want) in zip(record["top5"], expected[name]["top5"], strict=True):
            assert got == pytest.approx(want, abs=1e-5), name


def test_cpu_image_holds_no_torch_and_classifies_as_the_host_does(
    images: Images, clips_dir: Path, checkpoint_v1: Path
) -> None:
    no_torch = docker("run", "--rm", images.cpu, "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    size = int(docker("image", "inspect", "-f", "{{.Size}}", images.cpu).stdout)
    assert size <= 1_000_000_000, f"the CPU runtime image is {size:,} bytes"
    expected = host_predictions(checkpoint_v1, sorted(clips_dir.iterdir()))
    assert_same_predictions(classify_in(images.cpu, clips_dir), expected)


def test_no_layer_of_the_cpu_image_repeats_the_baked_model(images: Images) -> None:
    history = docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", images.cpu).stdout
    baked = [line for line in history.splitlines() if "/baked" in line and not line.startswith("0B")]
    assert len(baked) == 1, history


def test_lambda_image_runs_on_a_read_only_root_with_a_tmpfs_tmp(
    images: Images, clips_dir: Path, checkpoint_v1: Path
) -> None:
    expected = host_predictions(checkpoint_v1, sorted(clips_dir.iterdir()))
    found = classify_in(images.backends["aws_lambda"], clips_dir, "--read-only", "--tmpfs", "/tmp")
    assert_same_predictions(found, expected)


def test_kubernetes_image_runs_as_a_non_root_user(images: Images, clips_dir: Path, checkpoint_v1: Path) -> None:
    image = images.backends["k8s"]
    assert docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() == "1000"
    expected = host_predictions(checkpoint_v1, sorted(clips_dir.iterdir()))
    assert_same_predictions(classify_in(image, clips_dir), expected)


def test_code_engine_image_carries_lithops_handler(images: Images) -> None:
    image = images.backends["code_engine"]
    listing = docker("run", "--rm", "--entrypoint", "ls", image, "/lithops").stdout.split()
    assert "lithopsentry.py" in listing and "lithops" in listing
    done = docker("run", "--rm", "--entrypoint", "python", image, "-c",
                  "import lithopsentry, consumer.classify; print('ok')")
    assert done.stdout.strip() == "ok"


def test_gpu_dockerfile_builds_with_a_stand_in_torch(images: Images, clips_dir: Path) -> None:
    """The CUDA image's Dockerfile path, with a small stand-in for its 5.8 GB torch: everything but
    the torch download runs, the weights and the conversion are baked, and it classifies (OpenVINO)."""
    env = dict(images.build_env, TORCH_SPEC="six")
    base = build("k8s", f"moments-stream-test-k8s-gpu:{TAG}", env, "--gpu")
    assert base.endswith("-gpu")
    listing = docker("run", "--rm", "--entrypoint", "ls", base, "/opt/moments-stream/cache/baked").stdout.split()
    assert {"model.json", "weights.pth.tar"} <= set(listing)
    assert classify_in(base, clips_dir).keys() == {path.name for path in clips_dir.iterdir()}


# --- the pipeline with consumers as Lithops functions inside the CPU image ---------------------------


@pytest.fixture()
def bridged_redis(docker_engine: None, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis with a password on loopback and on Docker's bridge, where Lithops' containers reach it."""
    server = RedisServer(tmp_path / "redis", password=uuid.uuid4().hex,
                         extra_args=["--bind", "127.0.0.1", docker_gateway()])
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def container_env(images: Images, bridged_redis: RedisServer, tmp_path: Path, checkpoint_v1: Path,
                  categories_v1: Path) -> Iterator[dict[str, str]]:
    """The stages' environment: the launcher on this machine, its functions in the CPU image."""
    config = tmp_path / "lithops.yaml"
    config.write_text(f"lithops:\n  backend: localhost\n  storage: localhost\nlocalhost:\n  runtime: {images.cpu}\n")
    env = pipeline_environment(bridged_redis.url, checkpoint_v1, categories_v1, tmp_path / "data")
    env.update(FAST_HEALING, LITHOPS_CONFIG_FILE=str(config),
               MOMENTS_FUNCTION_REDIS_URL=bridged_redis.url.replace("127.0.0.1", docker_gateway()))
    yield env
    shutil.rmtree(os.path.join(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)
    for container in docker("ps", "-q", "--filter", f"ancestor={images.cpu}").stdout.split():
        docker("rm", "-f", container, check=False)


def launcher_env(env: dict[str, str]) -> dict[str, str]:
    """The consumers use the model baked into their image, not this machine's files."""
    return {name: value for name, value in env.items() if name not in ("MOMENTS_WEIGHTS", "MOMENTS_CATEGORIES")}


def enqueue_clips(env: dict[str, str], folder: Path) -> None:
    assert run(env, "producer", "upload", str(folder), "in/").returncode == 0
    enqueued = run(env, "producer", "enqueue", "in/")
    assert enqueued.returncode == 0, enqueued.stderr


def wait_for_all(client: redis.Redis, total: int) -> None:
    wait_until(lambda: client.hlen("moments:pending") == 0 and client.hlen("moments:seen") == total, 300,
               "every video counted", interval=0.5)


def test_pipeline_with_consumers_in_the_cpu_image_counts_exactly(container_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    expected = direct_top1(container_env, make_clips(folder, range(6)))
    enqueue_clips(container_env, folder)
    aggregator = start(container_env, "aggregator", "run")
    consumers = start(launcher_env(container_env), "consumer", "start", "--workers", "2", "--idle-exit", "5")
    client = client_for(container_env)
    try:
        out, err = consumers.communicate(timeout=600)
        assert consumers.returncode == 0, err[-4000:]
        summaries = [json.loads(line) for line in out.splitlines()]
        assert sum(summary["jobs"] for summary in summaries) == 6
        # The functions ran in containers: their worker names carry the container's host name.
        hosts = {summary["worker"].split("-")[1] for summary in summaries}
        assert hosts and all(re.fullmatch(r"[0-9a-f]{12}", host) for host in hosts), hosts
        wait_until(lambda: client.hlen("moments:pending") == 0, 120, "every video recorded")
    finally:
        aggregator.terminate()
        aggregator.communicate(timeout=60)
    assert counts_of(client) == collections.Counter(expected.values())
    assert client.hlen("moments:failed") == 0


def busy_container(client: redis.Redis) -> str:
    """The host name (container id) of the consumer whose rq worker holds a job."""
    from rq import Worker

    busy = [worker.name for worker in Worker.all(connection=client) if worker.get_state() == "busy"]
    assert len(busy) == 1, busy
    return busy[0].split("-")[1]


def test_a_consumer_container_killed_mid_video_loses_nothing(container_env: dict[str, str], images: Images,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    expected = direct_top1(container_env, make_clips(folder, range(10, 16)))
    barrier = tmp_path / "barrier"  # under /tmp, which Lithops mounts into its containers
    barrier.mkdir()
    (barrier / "hold-clip12.mp4").touch()
    # The functions run in the CPU image with the barrier added (tests/barrier.py): nothing else reaches them.
    held_image = build_barrier_image(images.cpu, barrier, f"moments-stream-test-barrier:{TAG}")
    config = tmp_path / "lithops-barrier.yaml"
    config.write_text(f"lithops:\n  backend: localhost\n  storage: localhost\nlocalhost:\n  runtime: {held_image}\n")
    env = with_barrier(dict(container_env, LITHOPS_CONFIG_FILE=str(config)), barrier)
    enqueue_clips(env, folder)
    aggregator = start(env, "aggregator", "run")
    client = client_for(env)
    # Two launchers, each with its own container (one executor each): one is killed, one survives.
    doomed = start(launcher_env(env), "consumer", "start", "--workers", "1")
    wait_until((barrier / "reached-clip12.mp4").exists, 300, "a consumer holding clip12.mp4")
    holder = busy_container(client)  # the one consumer so far, held at the barrier
    survivor = start(launcher_env(env), "consumer", "start", "--workers", "1")
    try:
        docker("kill", holder)
        (barrier / "hold-clip12.mp4").unlink()
        wait_for_all(client, 6)
        assert run(env, "consumer", "stop").returncode == 0
        for launcher in (doomed, survivor):
            launcher.communicate(timeout=300)
    finally:
        aggregator.terminate()
        aggregator.communicate(timeout=60)
        for launcher in (doomed, survivor):
            if launcher.poll() is None:
                launcher.kill()
    assert counts_of(client) == collections.Counter(expected.values())
    assert client.hlen("moments:failed") == 0
    assert client.hlen(f"moments:predictions:{next(iter(client.zrange('moments:models', 0, 0))).decode()}") == 6


# --- compose.yaml on these images ----------------------------------------------------------------


@pytest.fixture()
def redis_image(python_base: str) -> str:
    """Debian's redis-server on the local base: compose's `redis:7` is on Docker Hub."""
    image = f"moments-stream-test-redis:{TAG}"
    dockerfile = (f"FROM {python_base}\nRUN apt-get update && apt-get install -y --no-install-recommends redis-server"
                  " && rm -rf /var/lib/apt/lists/*\n")
    done = subprocess.run(["docker", "build", "-t", image, "-"], input=dockerfile, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return image


def test_compose_stack_counts_exactly_on_the_built_images(
    images: Images, redis_image: str, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path
) -> None:
    folder = tmp_path / "videos"
    clips = make_clips(folder, range(30, 34))
    reference = pipeline_environment("redis://unused", checkpoint_v1, categories_v1, tmp_path / "d")
    expected = direct_top1(dict(reference, MOMENTS_NUM_FRAMES="16"), clips)  # the stack's default
    project = f"moments-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, REDIS_PASSWORD=uuid.uuid4().hex, VIDEOS_DIR=str(folder), MOMENTS_IMAGE=images.cpu,
               REDIS_IMAGE=redis_image, MOMENTS_WORKERS="1")
    compose = ["docker-compose", "-p", project, "-f", str(REPO / "compose.yaml")]

    def compose_run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    up = compose_run("up", "-d", "--no-build")
    try:
        assert up.returncode == 0, up.stderr[-4000:]

        def status() -> dict:
            done = compose_run("exec", "-T", "aggregator", "aggregator", "status", "--json", timeout=120)
            return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}

        wait_until(lambda: status().get("counted") == len(clips), 600, "the stack counting every clip", interval=2)
        counted = compose_run("exec", "-T", "aggregator", "aggregator", "counts", "--json", timeout=120)
        assert counted.returncode == 0, counted.stderr
        table = json.loads(counted.stdout)
        assert {name: count for name, count in table["counts"].items()} == collections.Counter(expected.values())
        assert status()["failed"] == 0
    finally:
        logs = compose_run("logs", "--no-color", timeout=120).stdout
        down = compose_run("down", "-v", timeout=300)
    assert down.returncode == 0, down.stderr[-2000:] + logs[-4000:]
