"""Several videos per forward pass, for accelerators: decode threads submit frames, one inference
thread runs them together.

A GPU is fed only when many frames arrive at once; one 16-frame video leaves it mostly idle while
the next video is decoded. Decoding threads each submit a video's frames and wait; they decode in
parallel because PyAV releases the GIL while FFmpeg reads, decodes and converts (av_read_frame,
avcodec_send_packet/receive_frame and sws_scale run ``with nogil`` in PyAV 18), and so does PIL
while it resizes. The inference thread takes whatever videos are waiting, up to ``max_videos``,
runs them as one batch and hands each video its own mean probabilities. On a CPU, one video per
pass is as fast, so consumers there classify one video at a time (see README "Performance").
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .engines import Engine
from .preprocess import to_model_input
from .scores import split_by_video


@dataclass
class _Request:
    frames_rgb: np.ndarray
    result: Future


class InferenceBatcher:
    """One inference thread over a shared model; ``probabilities(frames)`` is safe from any thread."""

    def __init__(self, engine: Engine, max_videos: int, max_wait_s: float = 0.005) -> None:
        if max_videos < 1:
            raise ValueError("max_videos must be at least 1")
        self._engine = engine
        self.max_videos = max_videos
        self.max_wait_s = max_wait_s
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self.batch_sizes: list[int] = []  # videos per forward pass, for logs and tests
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self._thread.start()

    def probabilities(self, frames_rgb: np.ndarray) -> np.ndarray:
        """The video's class probabilities (mean over its frames), computed in some batch."""
        request = _Request(frames_rgb, Future())
        self._requests.put(request)
        return request.result.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=30)

    def _next_batch(self) -> list[_Request] | None:
        first = self._requests.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_videos:
            try:
                request = self._requests.get(timeout=self.max_wait_s)
            except queue.Empty:
                break
            if request is None:
                self._requests.put(None)  # finish this batch, then stop
                break
            batch.append(request)
        return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            ready, inputs = [], []
            for request in batch:
                try:
                    inputs.append(to_model_input(request.frames_rgb))
                    ready.append(request)
                except Exception as error:  # a bad video fails alone
                    request.result.set_exception(error)
            if not ready:
                continue
            try:
                probs = self._engine.frame_probabilities(np.concatenate(inputs))
                per_video = split_by_video(probs, [len(frames) for frames in inputs])
            except BaseException as error:  # every waiting video learns why; none hangs
                for request in ready:
                    request.result.set_exception(error)
                continue
            self.batch_sizes.append(len(ready))
            for request, result in zip(ready, per_video, strict=True):
                request.result.set_result(result)
