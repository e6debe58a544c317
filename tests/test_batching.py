"""Several videos per forward pass (the GPU path), checked on the CPU: each video gets exactly the
probabilities it would get alone, whatever it is batched with."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from consumer.batching import InferenceBatcher
from consumer.classify import Classifier
from consumer.preprocess import to_model_input
from consumer.scores import split_by_video, video_probabilities
from consumer.worker import combined_exit_reason, decode_threads_for
from moments_stream.settings import Settings


def test_split_by_video_means_each_videos_own_frames() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0]], dtype=np.float32)
    first, second = split_by_video(probs, [2, 4])
    assert np.allclose(first, [0.5, 0.5]) and np.allclose(second, [0.275, 0.725])
    with pytest.raises(ValueError):
        split_by_video(probs, [2, 3])


def random_videos(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (3 + index % 3, 120, 160, 3), dtype=np.uint8) for index in range(count)]


def test_concurrent_videos_share_forward_passes_with_unchanged_results(classifier: Classifier) -> None:
    videos = random_videos(6)
    alone = [video_probabilities(classifier.engine.frame_probabilities(to_model_input(video))) for video in videos]
    batcher = InferenceBatcher(classifier.engine, max_videos=4, max_wait_s=0.5)
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(videos))

    def decode_thread(index: int) -> None:
        start.wait()
        results[index] = batcher.probabilities(videos[index])

    threads = [threading.Thread(target=decode_thread, args=(index,)) for index in range(len(videos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    batcher.close()
    assert sum(batcher.batch_sizes) == 6 and max(batcher.batch_sizes) > 1 and max(batcher.batch_sizes) <= 4
    for index, expected in enumerate(alone):
        assert np.allclose(results[index], expected, atol=1e-5), index


def test_a_bad_video_fails_alone(classifier: Classifier) -> None:
    batcher = InferenceBatcher(classifier.engine, max_videos=4)
    try:
        with pytest.raises(ValueError, match="expected"):
            batcher.probabilities(np.zeros((2, 8, 8), dtype=np.uint8))
        assert batcher.probabilities(random_videos(1)[0]).shape == (339,)
    finally:
        batcher.close()


def test_decode_threads_default_to_one_on_cpu_and_several_on_gpu() -> None:
    settings = Settings.from_env({})
    assert decode_threads_for(settings, "cpu") == 1
    assert decode_threads_for(settings, "cuda") > 1
    assert decode_threads_for(settings.replace(decode_threads=3), "cpu") == 3


def test_a_consumer_stops_for_its_deadline_if_any_of_its_workers_did() -> None:
    assert combined_exit_reason(["idle", "deadline", "idle"]) == "deadline"
    assert combined_exit_reason(["deadline", "stopped"]) == "stopped"
    assert combined_exit_reason(["idle", "idle"]) == "idle"
