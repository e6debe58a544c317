"""CPU inference engines: the same probabilities as torch fp32, converted once and cached, and a
clear error when an engine's package is missing or broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from consumer import engines
from consumer.classify import Classifier, load_classifier
from consumer.engines import InferenceOptions
from consumer.frames import read_frames
from consumer.model import SYNTHETIC_MARKER
from consumer.preprocess import resize_frame, to_model_input
from moments_stream.errors import ConfigError
from moments_stream.settings import Settings
from tests.media import synthetic_frames, write_h264

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
CPU_FP32 = InferenceOptions()


def well_conditioned_checkpoint(path: Path, frames: np.ndarray) -> Path:
    """A release-format checkpoint (random, marked synthetic) whose logits have a trained model's
    scale on real frames (std 3: top-1 probabilities around 0.3).

    ``make_synthetic_checkpoint`` makes top-1 depend on the input by cancelling the huge common
    component of a random network's features, which multiplies any fp32 rounding difference about a
    thousandfold (logits of std ~650): there, two correct fp32 implementations part by up to 2e-3
    where two classes nearly tie. Trained weights do not cancel like that; this model does not either.
    """
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=339).eval()
    with torch.inference_mode():
        scale = 3.0 / float(model(torch.from_numpy(frames)).std())
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    state = {"module." + key: value for key, value in model.state_dict().items()}
    torch.save({"epoch": 0, "arch": "resnet50", "state_dict": state, SYNTHETIC_MARKER: True}, path)
    return path


@pytest.fixture(scope="module")
def conditioned_settings(
    base_settings: Settings, decoded_batches: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    folder = tmp_path_factory.mktemp("conditioned")
    weights = well_conditioned_checkpoint(folder / "moments_RGB_resnet50_imagenetpretrained.pth.tar",
                                          decoded_batches[0])
    return base_settings.replace(weights=str(weights), cache_dir=folder / "cache")


@pytest.fixture(scope="module")
def torch_classifier(conditioned_settings: Settings) -> Classifier:
    return load_classifier(conditioned_settings.replace(engine="torch"), progress=False)


@pytest.fixture(scope="module")
def decoded_batches(juggling: Path, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Model inputs from real decoded clips: the MiT clip and an H.264 clip of moving shapes."""
    clip = write_h264(tmp_path_factory.mktemp("clips") / "shapes.mp4", synthetic_frames(90, 240, 320, seed=7))
    return [to_model_input(read_frames(str(path), 16, keep=resize_frame).frames) for path in (juggling, clip)]


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engine_probabilities_equal_torch_fp32(
    engine: str, conditioned_settings: Settings, torch_classifier: Classifier, decoded_batches: list[np.ndarray]
) -> None:
    compiled = load_classifier(conditioned_settings.replace(engine=engine), progress=False)
    assert compiled.engine.name == engine and compiled.model_id == torch_classifier.model_id
    for batch in decoded_batches:
        expected = torch_classifier.engine.frame_probabilities(batch)
        found = compiled.engine.frame_probabilities(batch)
        assert found.dtype == np.float32 and found.shape == expected.shape == (16, 339)
        assert float(np.abs(found - expected).max()) <= TOLERANCE
        # Not near-uniform outputs (1/339 each), where any two engines would trivially agree.
        assert float(expected.max(axis=1).min()) > 0.1
        found_top, expected_top = compiled.classify_batch(batch), torch_classifier.classify_batch(batch)
        assert [name for name, _ in found_top] == [name for name, _ in expected_top]
        assert [p for _, p in found_top] == pytest.approx([p for _, p in expected_top], abs=TOLERANCE)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engines_agree_on_the_synthetic_trial_model(
    engine: str, base_settings: Settings, decoded_batches: list[np.ndarray]
) -> None:
    """The pathological trial checkpoint (see well_conditioned_checkpoint): the same top-1, and
    per-video probabilities within 1e-3."""
    reference = load_classifier(base_settings.replace(engine="torch"), progress=False)
    compiled = load_classifier(base_settings.replace(engine=engine), progress=False)
    for batch in decoded_batches:
        expected, found = reference.classify_batch(batch), compiled.classify_batch(batch)
        assert found[0][0] == expected[0][0]
        assert [probability for _, probability in found] == pytest.approx(
            [probability for _, probability in expected], abs=1e-3)


def test_the_default_engine_on_a_cpu_is_the_measured_one(classifier: Classifier) -> None:
    assert classifier.engine.name == engines.DEFAULT_CPU_ENGINE == "openvino"


def test_openvino_leaves_the_consumers_threads_unpinned() -> None:
    """Consumers started one per CPU must not all be pinned to the first core: the compiled model
    itself says pinning is off and the thread count is the consumer's."""
    import openvino as ov

    tiny = ov.convert_model(torch.nn.Linear(4, 2).eval(), example_input=torch.zeros(1, 4))
    compiled = ov.Core().compile_model(tiny, "CPU", engines.openvino_config("fp32", 1))
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_auto_picks_torch_where_only_torch_runs_the_request() -> None:
    assert engines.resolve_engine("auto", CPU_FP32) == "openvino"
    assert engines.resolve_engine("auto", InferenceOptions(device="cuda")) == "torch"
    assert engines.resolve_engine("auto", InferenceOptions(compile=True)) == "torch"
    assert engines.resolve_engine("auto", InferenceOptions(precision="bf16"), cpu_has_bf16=False) == "torch"
    assert engines.resolve_engine("auto", InferenceOptions(precision="bf16"), cpu_has_bf16=True) == "openvino"
    assert engines.resolve_engine("onnxruntime", CPU_FP32) == "onnxruntime"


@pytest.mark.parametrize(
    ("engine", "options", "message"),
    [
        ("openvino", InferenceOptions(device="cuda"), "runs on the CPU"),
        ("openvino", InferenceOptions(precision="fp16"), "fp32 or bf16"),
        ("onnxruntime", InferenceOptions(precision="bf16"), "fp32 only"),
        ("openvino", InferenceOptions(compile=True), "--compile is torch.compile"),
    ],
)
def test_requests_an_engine_cannot_run_are_refused(engine: str, options: InferenceOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        engines.check_engine_options(engine, options)
    assert refused.value.fix


def test_unknown_engine_is_a_settings_error() -> None:
    with pytest.raises(ConfigError, match="unknown inference engine 'tensorrt'"):
        Settings.from_env({"MOMENTS_ENGINE": "tensorrt"})


def test_a_conversion_is_made_once_and_keyed_by_weights_and_engine_version(
    base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "weights" / "model.pth.tar"
    weights.parent.mkdir()
    weights.write_bytes(Path(base_settings.weights or "").read_bytes())
    settings = base_settings.replace(weights=str(weights), cache_dir=tmp_path / "cache")
    first = load_classifier(settings, progress=False)
    converted = first.engine.converted
    import openvino

    sha = first.model_id.split("-")[2]
    assert converted.parent == weights.parent / "engines"  # beside the weights
    assert converted.name.startswith(sha) and openvino.__version__.split("-")[0] in converted.name
    made = converted.stat().st_mtime_ns

    calls: list[object] = []
    monkeypatch.setattr(openvino, "convert_model", lambda *args, **kwargs: calls.append(args))
    again = load_classifier(settings, progress=False)
    assert calls == [] and again.engine.converted == converted
    assert converted.stat().st_mtime_ns == made
    assert [path.name for path in converted.parent.iterdir()] == [converted.name]  # nothing half-written left


def test_a_read_only_weights_folder_converts_into_the_cache(tmp_path: Path) -> None:
    # Nothing can be created in /proc, not even by root: weights there are in a read-only folder.
    target = engines.cached_conversion(
        "openvino", "2026.4", Path("/proc/weights.pth.tar"), "ab" * 32, tmp_path / "cache",
        lambda directory: (directory / "model.xml").write_text("<net/>"), "model.xml",
    )
    assert target == tmp_path / "cache" / "engines" / f"{'ab' * 8}-openvino-2026.4"
    assert (target / "model.xml").read_text() == "<net/>"


def _classify_in_subprocess(settings: Settings, juggling: Path, path_entry: Path | None, engine: str):
    env = dict(os.environ, MOMENTS_WEIGHTS=str(settings.weights), MOMENTS_CATEGORIES=str(settings.categories),
               MOMENTS_CACHE_DIR=str(settings.cache_dir), MOMENTS_ENGINE=engine)
    if path_entry is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path_entry), str(REPO)])
    return subprocess.run([str(Path(sys.executable).parent / "consumer"), "classify", str(juggling)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_a_missing_or_broken_engine_package_names_the_fix(
    engine: str, base_settings: Settings, juggling: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing"
    missing.mkdir()
    # A module set to None in sys.modules cannot be imported: as if the package were not installed.
    (missing / "sitecustomize.py").write_text(f"import sys\nsys.modules[{engine!r}] = None\n")
    broken = tmp_path / "broken" / engine
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise OSError('libopenvino.so.2026: cannot open shared object file')\n")
    for entry in (missing, broken.parent):
        done = _classify_in_subprocess(base_settings, juggling, entry, engine)
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"the {engine} inference engine cannot be imported" in done.stderr
        assert "pip install" in done.stderr and "--engine" in done.stderr and "Traceback" not in done.stderr


def test_torch_engine_needs_no_engine_package(base_settings: Settings, juggling: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    done = _classify_in_subprocess(base_settings, juggling, tmp_path, "torch")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT ON" in done.stdout


def test_engine_probabilities_are_a_distribution(classifier: Classifier, decoded_batches: list[np.ndarray]) -> None:
    probabilities = classifier.engine.frame_probabilities(decoded_batches[0])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and (probabilities >= 0).all()
