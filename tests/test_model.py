"""The model core against an independent reference: PIL resize + torchvision normalize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from consumer.classify import Classifier, load_classifier
from consumer.frames import sample_indices
from consumer.model import (
    build_model,
    checkpoint_state_dict,
    load_checkpoint,
    make_synthetic_checkpoint,
)
from moments_stream.errors import CheckpointError
from moments_stream.settings import Settings
from tests.media import synthetic_frames, write_ffv1

RELEASE_TRANSFORM = T.Compose(
    [T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
)


def reference_probabilities(checkpoint: Path, frames: np.ndarray) -> torch.Tensor:
    """The release's test_video.py path, written independently of the project's code."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = torchvision.models.resnet50(num_classes=339)
    model.load_state_dict({k.replace("module.", "", 1): v for k, v in state.items()})
    model.eval()
    batch = torch.stack([RELEASE_TRANSFORM(Image.fromarray(frame)) for frame in frames])
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1).mean(dim=0)


@pytest.mark.parametrize(("height", "width"), [(96, 128), (256, 340), (480, 480)])
def test_lossless_clip_matches_reference_within_1e4(
    tmp_path: Path, classifier: Classifier, checkpoint_v1: Path, height: int, width: int
) -> None:
    frames = synthetic_frames(45, height=height, width=width, seed=height)
    clip = write_ffv1(tmp_path / "clip.avi", frames)
    expected = reference_probabilities(checkpoint_v1, frames[sample_indices(45, classifier.num_frames)])

    prediction = classifier.classify_file(str(clip))

    assert len(prediction.top5) == 5
    names = classifier.categories
    for name, probability in prediction.top5:
        assert abs(probability - float(expected[names.index(name)])) < 1e-4
    # Random weights can tie; the top-1 must be a reference maximum.
    assert float(expected[names.index(prediction.top1)]) >= float(expected.max()) - 1e-4
    assert [p for _, p in prediction.top5] == sorted((p for _, p in prediction.top5), reverse=True)


def test_categories_are_in_model_output_order(classifier: Classifier) -> None:
    assert len(classifier.categories) == 339
    assert classifier.categories[0] == "clapping"
    assert classifier.categories[-1] == "typing"


def test_checkpoint_with_and_without_module_prefix(checkpoint_v1: Path, tmp_path: Path) -> None:
    release = torch.load(checkpoint_v1, weights_only=True)
    assert all(key.startswith("module.") for key in release["state_dict"])
    bare = {key.removeprefix("module."): value for key, value in release["state_dict"].items()}
    bare_path = tmp_path / "bare.pth"
    torch.save(bare, bare_path)

    with_prefix = build_model(load_checkpoint(checkpoint_v1)[0], 339)
    without_prefix = build_model(load_checkpoint(bare_path)[0], 339)
    for (name, a), (_, b) in zip(with_prefix.state_dict().items(), without_prefix.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_wrong_class_count_is_a_clear_error(tmp_path: Path, categories_v1: Path) -> None:
    path = tmp_path / "v2like.pth.tar"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(305, 2048)}}, path)
    with pytest.raises(CheckpointError, match="305 classes but the category list has 339") as caught:
        build_model(load_checkpoint(path)[0], 339)
    assert "category_momentsv2" in caught.value.fix


def test_non_checkpoint_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth.tar"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_state_dict_of_non_tensors_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="no state_dict"):
        checkpoint_state_dict({"state_dict": {"fc.weight": "nope"}})


def test_incomplete_resnet_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="does not fit"):
        build_model({"fc.weight": torch.zeros(339, 2048), "fc.bias": torch.zeros(339)}, 339)


def test_synthetic_checkpoint_is_flagged_in_model_id(classifier: Classifier, juggling: Path) -> None:
    assert classifier.synthetic_weights
    assert classifier.model_id.startswith("synthetic-v1-")
    assert classifier.classify_file(str(juggling)).synthetic_weights


def test_real_release_checkpoint_is_not_flagged(tmp_path: Path, categories_v1: Path) -> None:
    checkpoint = make_synthetic_checkpoint(339)
    del checkpoint["moments_stream_synthetic"]
    path = tmp_path / "release_like.pth.tar"
    torch.save(checkpoint, path)
    settings = Settings.from_env({}).replace(weights=str(path), categories=str(categories_v1), cache_dir=tmp_path)
    loaded = load_classifier(settings, progress=False)
    assert not loaded.synthetic_weights
    assert loaded.model_id.startswith("v1-")


def test_v2_release_pairs_305_classes(tmp_path: Path, shared_data: Path) -> None:
    path = tmp_path / "moments_v2.pth.tar"
    torch.save(make_synthetic_checkpoint(305), path)
    settings = Settings.from_env({}).replace(
        model="v2", weights=str(path), categories=str(shared_data / "category_momentsv2.txt"), cache_dir=tmp_path
    )
    loaded = load_classifier(settings, progress=False)
    assert len(loaded.categories) == 305
    assert loaded.model_id.startswith("synthetic-v2-")


def test_bf16_stays_close_to_fp32(base_settings: Settings, classifier: Classifier, tmp_path: Path) -> None:
    # torch against torch: engines part at the synthetic model's near-ties (test_engines.py).
    bf16 = load_classifier(base_settings.replace(precision="bf16", engine="torch"), progress=False)
    fp32 = load_classifier(base_settings.replace(engine="torch"), progress=False)
    for seed in range(4):
        clip = write_ffv1(tmp_path / f"c{seed}.avi", synthetic_frames(30, seed=seed))
        reference = dict(fp32.classify_file(str(clip)).top5)
        fast = bf16.classify_file(str(clip))
        # At most one of 16 frames may change its vote (1/16 of probability mass).
        assert reference.get(fast.top1, 0.0) >= max(reference.values()) - 1 / 16 - 1e-3


@pytest.mark.e2e  # compiling takes 10-30 s on this CPU
def test_compiled_bf16_model_agrees_with_eager(base_settings: Settings, classifier: Classifier, tmp_path: Path) -> None:
    eager_bf16 = load_classifier(base_settings.replace(precision="bf16", num_frames=8), progress=False)
    compiled = load_classifier(base_settings.replace(precision="bf16", num_frames=8, compile=True), progress=False)
    eager_fp32 = load_classifier(base_settings.replace(num_frames=8, engine="torch"), progress=False)
    for seed in range(3):
        clip = str(write_ffv1(tmp_path / f"k{seed}.avi", synthetic_frames(30, seed=seed)))
        reference = dict(eager_fp32.classify_file(clip).top5)
        eager, fast = eager_bf16.classify_file(clip), compiled.classify_file(clip)
        for prediction in (eager, fast):
            # bf16 may move one of the 8 frames' votes (1/8 of the probability mass), no more.
            assert reference.get(prediction.top1, 0.0) >= max(reference.values()) - 1 / 8 - 1e-3
        compiled_probs, eager_probs = dict(fast.top5), dict(eager.top5)
        shared = set(compiled_probs) & set(eager_probs)
        # The synthetic model's frames vote almost one-hot: again at most one vote may move.
        assert shared and all(abs(compiled_probs[name] - eager_probs[name]) <= 1 / 8 + 1e-3 for name in shared)
