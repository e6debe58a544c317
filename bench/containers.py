"""The runtime images measured, run by hand, side by side in one run:

- each image's size, by layer (the CPU runtime image and the three backend images on it);
- cold start: `docker run` of the CPU image to the first prediction of `consumer classify` on a
  3 s clip, against `docker run IMAGE true` (Docker's own share) and the same command on the host;
- the pipeline's videos/s with consumers as Lithops localhost functions inside the CPU image (the
  host's CPUs, no limit), against the same pipeline with consumers on the host, alternated.

    .venv/bin/python bench/containers.py                  # the local Debian base (root, debootstrap)
    .venv/bin/python bench/containers.py --base-image python:3.11-slim   # where a registry is reachable

The weights are synthetic (random, release format): speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import torch  # noqa: E402
from lithops.constants import LITHOPS_TEMP_DIR  # noqa: E402

from bench.run import end_to_end, make_clips  # noqa: E402
from consumer.model import make_synthetic_checkpoint  # noqa: E402
from moments_stream.resources import available_cpus, default_local_workers, threads_per_worker, total_memory_bytes  # noqa: E402
from tests.docker_engine import docker_gateway  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BIN = Path(sys.executable).parent
BACKENDS = ("k8s", "code_engine", "aws_lambda")
SHARED_CLIP = REPO.parent / "shared" / "data" / "juggling.mp4"


def sh(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def build_images(base_image: str, weights: Path) -> tuple[str, dict[str, str]]:
    """runtime/build.sh for every backend (the CPU base is built once, then cached); the base's name."""
    env = dict(os.environ, BASE_IMAGE=base_image, MOMENTS_WEIGHTS=str(weights), PYTHON=sys.executable)
    images, bases = {}, set()
    for backend in BACKENDS:
        images[backend] = f"moments-stream-bench-{backend.replace('_', '-')}:latest"
        done = sh("bash", "runtime/build.sh", backend, images[backend], "--build-only", env=env)
        bases.add(re.search(r"^base image (\S+)", done.stderr, flags=re.M).group(1))  # type: ignore[union-attr]
    (cpu,) = bases
    return cpu, images


def layers(image: str) -> list[tuple[int, str]]:
    """(bytes, instruction) of each layer over 1 MB, largest first."""
    raw = sh("docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    rows = []
    for line in raw.stdout.splitlines():
        size, created_by = line.split("\t", 1)
        created_by = re.sub(r"\s+", " ", created_by.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN "))
        if int(size) > 1_000_000:
            rows.append((int(size), created_by[:110]))
    return sorted(rows, reverse=True)


def image_size(image: str) -> int:
    return int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image).stdout)


def first_prediction_s(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time from starting ``command`` to the first line on its stdout (one prediction)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait(timeout=300)
    if process.returncode != 0 or not line.startswith("{"):
        raise RuntimeError(f"{' '.join(command)} gave no prediction (exit {process.returncode})")
    return elapsed


def cold_starts(image: str, clip: Path, weights: Path, repeats: int) -> dict[str, list[float]]:
    in_docker = ["docker", "run", "--rm", "-v", f"{clip.parent}:/clips:ro", "--entrypoint", "consumer", image,
                 "classify", "--json", f"/clips/{clip.name}"]
    on_host = [str(BIN / "consumer"), "classify", "--json", str(clip)]
    host_env = dict(os.environ, MOMENTS_WEIGHTS=str(weights))
    figures: dict[str, list[float]] = {"docker run IMAGE true": [], "docker run ... consumer classify": [],
                                       "host: consumer classify": []}
    first_prediction_s(in_docker)  # the image's files in the page cache, as on a warm node
    for _ in range(repeats):
        started = time.perf_counter()
        sh("docker", "run", "--rm", "--entrypoint", "true", image)
        figures["docker run IMAGE true"].append(time.perf_counter() - started)
        figures["docker run ... consumer classify"].append(first_prediction_s(in_docker))
        figures["host: consumer classify"].append(first_prediction_s(on_host, host_env))
    return figures


def pipelines(cpu_image: str, weights: Path, work: Path, videos: int, rounds: int) -> dict[str, list[float]]:
    """Videos/s from enqueue to counted, consumers on the host and in the CPU image, alternated."""
    cpus = available_cpus()
    workers = default_local_workers(cpus, total_memory_bytes())
    clips = work / "pipeline-clips"
    make_clips(clips, videos)
    config = work / "lithops-containers.yaml"
    config.write_text(f"lithops:\n  backend: localhost\n  storage: localhost\nlocalhost:\n  runtime: {cpu_image}\n")
    server = RedisServer(work / "redis", password=uuid.uuid4().hex,
                         extra_args=["--bind", "127.0.0.1", docker_gateway()])
    server.start()
    figures: dict[str, list[float]] = {"host": [], "containers": []}
    try:
        for _ in range(rounds):
            for where in ("host", "containers"):
                env = dict(os.environ, MOMENTS_REDIS_URL=server.url, MOMENTS_EMBEDDED_REDIS="0",
                           MOMENTS_BUCKET=f"bench-{uuid.uuid4().hex[:8]}", MOMENTS_DATA_DIR=str(work / "data"),
                           MOMENTS_THREADS=str(threads_per_worker(cpus, workers)))
                consumer_env = dict(env)
                if where == "host":
                    consumer_env["MOMENTS_WEIGHTS"] = str(weights)
                else:
                    consumer_env.update(LITHOPS_CONFIG_FILE=str(config),
                                        MOMENTS_FUNCTION_REDIS_URL=server.url.replace("127.0.0.1", docker_gateway()))
                redis.Redis.from_url(server.url).flushdb()
                result = end_to_end(env, clips, [], workers, consumer_env=consumer_env)
                figures[where].append(result["throughput"])
                shutil.rmtree(Path(LITHOPS_TEMP_DIR, env["MOMENTS_BUCKET"]), ignore_errors=True)
    finally:
        server.stop()
    return figures


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-image", default="moments-stream-debian:bookworm",
                        help="the Python base (made by runtime/local-base.sh when it is the default and missing)")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="host/containers pairs of pipeline runs")
    parser.add_argument("--cold-starts", type=int, default=5)
    args = parser.parse_args()

    if args.base_image == "moments-stream-debian:bookworm":
        sh("bash", "runtime/local-base.sh", args.base_image)
    work = Path(tempfile.mkdtemp(prefix="moments-bench-containers-"))
    try:
        weights = work / "weights.pth.tar"
        torch.save(make_synthetic_checkpoint(339, seed=0), weights)
        print("building the images...", file=sys.stderr)
        cpu_image, backend_images = build_images(args.base_image, weights)
        clip = SHARED_CLIP if SHARED_CLIP.is_file() else make_clips(work / "clip", 1)[0]
        print("cold starts...", file=sys.stderr)
        starts = cold_starts(cpu_image, clip, weights, args.cold_starts)
        print("pipelines...", file=sys.stderr)
        runs = pipelines(cpu_image, weights, work, args.videos, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} CPUs; base image {args.base_image}")
    print("\nimage sizes (docker image inspect), layers over 1 MB:")
    for name, image in [("cpu runtime", cpu_image), *backend_images.items()]:
        print(f"  {name:<12} {image}: {image_size(image) / 1e6:,.0f} MB")
        for size, instruction in layers(image):
            print(f"      {size / 1e6:8,.1f} MB  {instruction}")
    print(f"\ncold start to the first prediction ({clip.name}, {args.cold_starts} runs, seconds):")
    for name, values in starts.items():
        print(f"  {name:<34} {spread(values)}")
    print(f"\npipeline, {args.videos} clips 340x256 3 s, videos/s from enqueue to counted:")
    for name, values in runs.items():
        print(f"  consumers on the {name:<11} {spread(values)}")
    ratio = statistics.mean(runs["containers"]) / statistics.mean(runs["host"])
    print(f"  containers / host: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
