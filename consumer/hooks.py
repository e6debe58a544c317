"""Hook points in a consumer's job: callables others may install to watch or steer it from outside
the product (instrumentation; the fault tests' barriers). The product installs none: every list
here is empty unless something appends to it, and calling an empty list does nothing.

A hook is installed in the process that runs the consumer, by importing this module and appending
to a list; a process started by someone else (a Lithops function) can be given hooks through
Python's own start-up mechanisms (a ``sitecustomize`` module or ``.pth`` file on its path). The
consumer itself never imports or configures anything for them.
"""

from __future__ import annotations

from collections.abc import Callable

# Called in a job after each video is classified and before its outcome joins the outcomes the job
# has not yet published: ``hook(video, publish_held)``, where ``video`` is ``BUCKET/KEY`` and
# ``publish_held()`` publishes the outcomes the job holds at that moment (the video's own is not yet
# among them). A hook that blocks keeps the video in this consumer's hands, unpublished, meanwhile.
BeforePublish = Callable[[str, Callable[[], None]], None]
before_publish: list[BeforePublish] = []


def run_before_publish(video: str, publish_held: Callable[[], None]) -> None:
    for hook in tuple(before_publish):
        hook(video, publish_held)
