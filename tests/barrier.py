"""The fault tests' barrier: a consumer stops before publishing a chosen video's outcome, so that a
test acts (kills it, cuts its host off, restarts Redis) while that video is known to be in its hands.

It is installed through the product's hook point (:mod:`consumer.hooks`), never carried by the
product: in this process by :func:`install`, and in the consumers a test starts (CLI subprocesses
and the Lithops functions they start) by :func:`with_barrier`'s environment, which puts
``tests/barrier_site`` (a ``sitecustomize``) on ``PYTHONPATH`` and names the barrier directory in
``MOMENTS_TEST_BARRIER_DIR``.

Protocol, in the barrier directory: a ``hold-<name>`` file holds the video whose file name is
``<name>``; a consumer that reaches it publishes what its batch did before it, writes
``reached-<name>`` (its pid) and waits until the hold file is gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from consumer import hooks

BARRIER_ENV = "MOMENTS_TEST_BARRIER_DIR"
SITE_DIR = Path(__file__).resolve().parent / "barrier_site"


def file_name(video: str) -> str:
    """The name a video's hold/reached files carry: its key's last segment (``BUCKET/KEY``)."""
    return video.rsplit("/", 1)[-1]


class Barrier:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __call__(self, video: str, publish_held: Callable[[], None]) -> None:
        name = file_name(video)
        hold = self.directory / f"hold-{name}"
        if not hold.exists():
            return
        publish_held()  # what the batch did before the held video is out of its hands
        (self.directory / f"reached-{name}").write_text(f"{os.getpid()}\n")
        while hold.exists():
            time.sleep(0.05)


def install(directory: str | Path) -> Barrier:
    """Hold videos in this process by ``directory``'s hold files; returns the hook (see :func:`remove`)."""
    barrier = Barrier(directory)
    hooks.before_publish.append(barrier)
    return barrier


def remove(barrier: Barrier) -> None:
    hooks.before_publish.remove(barrier)


def install_from_env(env: Mapping[str, str] = os.environ) -> None:
    """What ``barrier_site/sitecustomize.py`` runs at a process's start: install the barrier that
    ``MOMENTS_TEST_BARRIER_DIR`` names, if any."""
    directory = env.get(BARRIER_ENV)
    if directory:
        install(directory)


def barrier_vars(directory: str | Path, pythonpath: str | None = None) -> dict[str, str]:
    """The environment variables that give every process started with them (and their children)
    the barrier of ``directory``; ``pythonpath``: the ``PYTHONPATH`` to keep after ours."""
    pythonpath = os.environ.get("PYTHONPATH") if pythonpath is None else pythonpath
    path = os.pathsep.join(part for part in (str(SITE_DIR), pythonpath) if part)
    return {BARRIER_ENV: str(directory), "PYTHONPATH": path}


def with_barrier(env: Mapping[str, str], directory: str | Path) -> dict[str, str]:
    """``env`` with the barrier of ``directory`` (:func:`barrier_vars`)."""
    return {**env, **barrier_vars(directory, env.get("PYTHONPATH", ""))}


# In a container: ``docker exec`` (how Lithops' localhost backend runs a function in its image)
# passes no environment, so the barrier goes into an image of its own, on the runtime image.
IN_IMAGE = "/opt/moments-test-barrier"


def barrier_dockerfile(base_image: str, directory: str | Path) -> str:
    """A Dockerfile (build context: this ``tests`` folder) adding the barrier of ``directory`` (a
    folder the containers see at the same path, e.g. under /tmp, which Lithops mounts) to ``base_image``."""
    return (f"FROM {base_image}\n"
            f"COPY barrier.py {IN_IMAGE}/barrier.py\n"
            f"COPY barrier_site/sitecustomize.py {IN_IMAGE}/barrier_site/sitecustomize.py\n"
            f"ENV PYTHONPATH={IN_IMAGE}/barrier_site {BARRIER_ENV}={directory}\n")


def build_barrier_image(base_image: str, directory: str | Path, tag: str) -> str:
    """``base_image`` with the barrier of ``directory`` (:func:`barrier_dockerfile`), built as ``tag``."""
    import subprocess

    done = subprocess.run(["docker", "build", "-t", tag, "-f", "-", str(SITE_DIR.parent)],
                          input=barrier_dockerfile(base_image, directory), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tag
