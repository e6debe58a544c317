"""The baked model a runtime image carries: `fetch-model --bake` writes it, a consumer finds it with
no setting and runs it without torch, with the predictions of the normal path; settings that ask
for another model do not get it; what cannot run without torch says so and names the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from consumer import assets, baked
from consumer.classify import Classifier, load_classifier, why_torch_is_needed
from moments_stream.errors import ConfigError
from moments_stream.settings import MODEL_RELEASES, Settings

REPO = Path(__file__).resolve().parents[1]
CONSUMER = str(Path(sys.executable).parent / "consumer")
TOLERANCE = 1e-5
# What a consumer reads from the environment; cleared so the developer's own settings cannot leak in.
MODEL_VARIABLES = ("MOMENTS_WEIGHTS", "MOMENTS_CATEGORIES", "MOMENTS_WEIGHTS_SHA256", "MOMENTS_MODEL",
                   "MOMENTS_ENGINE", "MOMENTS_DEVICE", "MOMENTS_PRECISION", "MOMENTS_COMPILE", "MOMENTS_CACHE_DIR")


def clean_env(**variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in MODEL_VARIABLES}
    return {**env, **variables}


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH on which torch and torchvision cannot be imported, as in a CPU runtime image."""
    blocker = tmp_path_factory.mktemp("no-torch")
    for package in ("torch", "torchvision"):
        (blocker / package).mkdir()
        (blocker / package / "__init__.py").write_text('raise ImportError("no torch in this image")\n')
    return os.pathsep.join([str(blocker), str(REPO)])


@pytest.fixture(scope="module")
def weights(checkpoint_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic checkpoint in a folder of its own (the bake tests delete it)."""
    path = tmp_path_factory.mktemp("own-weights") / "moments_RGB_resnet50_imagenetpretrained.pth.tar"
    shutil.copyfile(checkpoint_v1, path)
    return path


@pytest.fixture(scope="module")
def bake_cache(weights: Path, categories_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache baked by the command a runtime image build runs, weights included."""
    cache = tmp_path_factory.mktemp("image-cache")
    env = clean_env(MOMENTS_WEIGHTS=str(weights), MOMENTS_CATEGORIES=str(categories_v1))
    done = subprocess.run([CONSUMER, "fetch-model", "--bake", "--cache-dir", str(cache)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "baked synthetic-v1-" in done.stderr
    return cache


@pytest.fixture(scope="module")
def settings(base_settings: Settings, weights: Path) -> Settings:
    """The model the bake was made from, named explicitly (a developer's settings)."""
    return base_settings.replace(weights=str(weights))


@pytest.fixture(scope="module")
def normal(settings: Settings, bake_cache: Path) -> Classifier:
    """The same model loaded the normal way: torch, the checkpoint, its cached conversion."""
    return load_classifier(settings, progress=False)


def test_the_bake_holds_the_manifest_categories_conversion_and_weights(
    bake_cache: Path, weights: Path, categories_v1: Path, normal: Classifier
) -> None:
    directory = bake_cache / "baked"
    manifest = json.loads((directory / "model.json").read_text())
    assert manifest == {
        "format": 1,
        "release": "v1",
        "weights_source": str(weights),
        "weights_sha256": assets.sha256_of(weights),
        "categories_source": str(categories_v1),
        "synthetic": True,
        "model_id": normal.model_id,
        "classes": 339,
        "engines": {"openvino": {"version": manifest["engines"]["openvino"]["version"],
                                 "path": "openvino/model.xml"}},
        "weights": "weights.pth.tar",
    }
    import openvino

    assert manifest["engines"]["openvino"]["version"] == openvino.__version__
    assert sorted(path.name for path in directory.iterdir()) == ["categories.txt", "model.json", "openvino",
                                                                  "weights.pth.tar"]
    assert sorted(path.name for path in (directory / "openvino").iterdir()) == ["model.bin", "model.xml"]
    assert (directory / "categories.txt").read_bytes() == categories_v1.read_bytes()
    assert (directory / "weights.pth.tar").read_bytes() == weights.read_bytes()
    # Written aside and renamed into place: nothing half-written is left beside it.
    assert not [path.name for path in bake_cache.iterdir() if path.name.startswith(".")]


def test_a_consumer_runs_the_bake_with_the_normal_paths_predictions(
    settings: Settings, bake_cache: Path, normal: Classifier, juggling: Path
) -> None:
    for asked in (settings.replace(cache_dir=bake_cache),  # the bake's own weights named
                  Settings.from_env({"MOMENTS_CACHE_DIR": str(bake_cache)})):  # nothing named: the image's model
        from_bake = load_classifier(asked, progress=False)
        assert from_bake.model is None and from_bake.engine.name == "openvino"
        assert getattr(from_bake.engine, "converted", None) == bake_cache / "baked" / "openvino"
        assert from_bake.model_id == normal.model_id and from_bake.synthetic_weights
        assert from_bake.categories == normal.categories
        expected, found = normal.classify_file(str(juggling)), from_bake.classify_file(str(juggling))
        assert [name for name, _ in found.top5] == [name for name, _ in expected.top5]
        assert [p for _, p in found.top5] == pytest.approx([p for _, p in expected.top5], abs=TOLERANCE)
        assert found.model_id == expected.model_id and found.synthetic_weights


def test_the_torch_engine_loads_the_baked_weights(
    settings: Settings, bake_cache: Path, normal: Classifier, weights: Path, tmp_path: Path
) -> None:
    """A GPU image: torch, from the bake's own checkpoint (here the source is gone)."""
    moved = tmp_path / "elsewhere.pth.tar"
    weights.rename(moved)
    try:
        loaded = load_classifier(Settings.from_env({"MOMENTS_CACHE_DIR": str(bake_cache), "MOMENTS_ENGINE": "torch"}),
                                 progress=False)
    finally:
        moved.rename(weights)
    assert loaded.engine.name == "torch" and loaded.model is not None
    assert loaded.model_id == normal.model_id


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"weights": "/elsewhere/w.pth.tar"}, "its weights come from"),
        ({"weights_sha256": "0" * 64}, "SHA-256"),
        ({"categories": "/elsewhere/categories.txt"}, "its categories come from"),
        ({"model": "v2"}, "v1 release, not v2"),
    ],
)
def test_settings_that_name_another_model_do_not_get_the_bake(changes: dict[str, str], reason: str) -> None:
    bake = baked.BakedModel(release="v1", weights_source="https://example.org/w.pth.tar", weights_sha256="ab" * 32,
                            categories_source="/opt/categories.txt", synthetic=False,
                            model_id="v1-abababababab-12345678", classes=339)
    nothing_named = Settings.from_env({})
    assert baked.why_not_used(bake, nothing_named) is None
    assert baked.why_not_used(bake, nothing_named.replace(weights=bake.weights_source, weights_sha256="AB" * 32,
                                                          categories=bake.categories_source)) is None
    assert reason in (baked.why_not_used(bake, nothing_named.replace(**changes)) or "")


def test_other_weights_load_the_normal_way(settings: Settings, bake_cache: Path, weights: Path) -> None:
    """The same bytes under another name, or under a hash pin the bake does not have: not the bake."""
    copy = weights.parent / "copy.pth.tar"  # beside the weights: their cached conversion serves it
    shutil.copyfile(weights, copy)
    try:
        for asked in (settings.replace(cache_dir=bake_cache, weights=str(copy)),
                      settings.replace(cache_dir=bake_cache, weights_sha256="0" * 64)):
            loaded = load_classifier(asked, progress=False)
            assert loaded.model is not None  # built with torch
            assert getattr(loaded.engine, "converted", None) != bake_cache / "baked" / "openvino"
    finally:
        copy.unlink()


def run_without_torch(no_torch: str, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONSUMER, *args], env=clean_env(PYTHONPATH=no_torch, **variables), capture_output=True,
                          text=True, timeout=300)


def test_classify_without_torch_gives_the_predictions_with_torch(
    no_torch: str, bake_cache: Path, weights: Path, categories_v1: Path, juggling: Path, tmp_path: Path
) -> None:
    without = run_without_torch(no_torch, "classify", "--json", str(juggling), MOMENTS_CACHE_DIR=str(bake_cache))
    assert without.returncode == 0, without.stderr[-3000:]
    assert '"baked": true' in without.stderr
    with_torch = subprocess.run(
        [CONSUMER, "classify", "--json", str(juggling)], capture_output=True, text=True, timeout=300,
        env=clean_env(MOMENTS_WEIGHTS=str(weights), MOMENTS_CATEGORIES=str(categories_v1),
                      MOMENTS_CACHE_DIR=str(tmp_path / "no-bake")))
    assert with_torch.returncode == 0, with_torch.stderr[-3000:]
    assert '"baked": false' in with_torch.stderr
    found, expected = json.loads(without.stdout), json.loads(with_torch.stdout)
    assert found["model_id"] == expected["model_id"] and found["synthetic_weights"] is True
    assert [name for name, _ in found["top5"]] == [name for name, _ in expected["top5"]]
    assert [p for _, p in found["top5"]] == pytest.approx([p for _, p in expected["top5"]], abs=TOLERANCE)


def test_the_cpu_consumer_modules_import_without_torch(no_torch: str) -> None:
    code = ("import sys\nimport consumer.classify, consumer.engines, consumer.batching, consumer.cli\n"
            "print(sorted({name.split('.')[0] for name in sys.modules} & "
            "{'torch', 'torchvision', 'lithops', 'rq', 'redis', 'boto3', 'botocore'}))\n")
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(PYTHONPATH=no_torch), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_torch_engine_without_torch_names_the_fix(no_torch: str, bake_cache: Path, juggling: Path) -> None:
    done = run_without_torch(no_torch, "classify", "--engine", "torch", str(juggling),
                             MOMENTS_CACHE_DIR=str(bake_cache))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: the torch engine" in done.stderr and "needs torch" in done.stderr
    assert "fix: run the baked model with a compiled engine" in done.stderr and "Traceback" not in done.stderr


def test_a_bake_for_another_openvino_without_torch_names_the_fix(
    no_torch: str, bake_cache: Path, juggling: Path, tmp_path: Path
) -> None:
    other = tmp_path / "cache"
    shutil.copytree(bake_cache / "baked", other / "baked")
    manifest = json.loads((other / "baked" / "model.json").read_text())
    manifest["engines"]["openvino"]["version"] = "2024.0.0"
    (other / "baked" / "model.json").write_text(json.dumps(manifest))
    done = run_without_torch(no_torch, "classify", str(juggling), MOMENTS_CACHE_DIR=str(other))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "converting the model for openvino" in done.stderr and "openvino 2024.0.0" in done.stderr
    assert "needs torch" in done.stderr and "fix: bake it again" in done.stderr and "Traceback" not in done.stderr


def test_weights_not_baked_without_torch_name_the_fix(no_torch: str, bake_cache: Path, juggling: Path) -> None:
    done = run_without_torch(no_torch, "classify", str(juggling), MOMENTS_CACHE_DIR=str(bake_cache),
                             MOMENTS_WEIGHTS="/elsewhere/w.pth.tar")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "not the model baked in" in done.stderr and "needs torch" in done.stderr
    assert "leave MOMENTS_WEIGHTS" in done.stderr and "Traceback" not in done.stderr


def test_every_torch_need_has_a_message_and_a_fix(tmp_path: Path) -> None:
    settings = Settings.from_env({"MOMENTS_CACHE_DIR": str(tmp_path)})
    bake = baked.BakedModel(release="v1", weights_source=MODEL_RELEASES["v1"].weights_url, weights_sha256="ab" * 32,
                            categories_source="c.txt", synthetic=False, model_id="v1-x-y", classes=339,
                            engines={"openvino": baked.BakedConversion("2025.1", "openvino/model.xml")})
    cases = {
        "torch engine": why_torch_is_needed("torch", settings, bake, True, None),
        "no bake": why_torch_is_needed("openvino", settings, None, False, "2026.4"),
        "another model": why_torch_is_needed("openvino", settings, None, True, "2026.4"),
        "another version": why_torch_is_needed("openvino", settings, bake, True, "2026.4"),
    }
    assert "torch engine" in cases["torch engine"][0]
    assert "there is no baked model" in cases["no bake"][0]
    assert "not the model baked" in cases["another model"][0]
    assert "openvino 2025.1" in cases["another version"][0]
    assert all(fix for _, fix in cases.values())


def test_an_unreadable_manifest_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    (tmp_path / "baked").mkdir()
    (tmp_path / "baked" / "model.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid") as refused:
        load_classifier(Settings.from_env({"MOMENTS_CACHE_DIR": str(tmp_path)}), progress=False)
    assert "fetch-model --bake" in refused.value.fix


def test_the_manifest_round_trips_and_a_newer_format_is_refused() -> None:
    bake = baked.BakedModel(release="v2", weights_source="/w", weights_sha256="cd" * 32, categories_source="/c",
                            synthetic=True, model_id="synthetic-v2-x-y", classes=305,
                            engines={"openvino": baked.BakedConversion("2026.4", "openvino/model.xml")})
    assert baked.manifest_from_json(baked.manifest_to_json(bake)) == bake
    newer = json.loads(baked.manifest_to_json(bake)) | {"format": baked.FORMAT + 1}
    with pytest.raises(ValueError, match="newer"):
        baked.manifest_from_json(json.dumps(newer))


def test_baking_again_replaces_the_bake_atomically(
    weights: Path, categories_v1: Path, bake_cache: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(bake_cache / "baked", cache / "baked")
    env = clean_env(MOMENTS_WEIGHTS=str(weights), MOMENTS_CATEGORIES=str(categories_v1))
    done = subprocess.run([CONSUMER, "fetch-model", "--bake", "--without-weights", "--cache-dir", str(cache)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((cache / "baked" / "model.json").read_text())
    assert manifest["weights"] is None and not (cache / "baked" / "weights.pth.tar").exists()
    assert sorted(path.name for path in cache.iterdir() if path.name.startswith(".")) == []
    # Where torch runs it without baked weights, it loads the file the bake was made from.
    with_torch = load_classifier(Settings.from_env({"MOMENTS_CACHE_DIR": str(cache), "MOMENTS_ENGINE": "torch"}),
                                 progress=False)
    assert with_torch.model is not None and with_torch.model_id == manifest["model_id"]


def test_without_weights_goes_with_bake(tmp_path: Path) -> None:
    done = subprocess.run([CONSUMER, "fetch-model", "--without-weights", "--cache-dir", str(tmp_path)],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--bake" in done.stderr
