"""The baked model: what a runtime image carries, so that a consumer starts with no download, no
conversion and no torch.

``consumer fetch-model --bake`` writes it under the cache directory (MOMENTS_CACHE_DIR), where a
consumer finds it with no other setting::

    <cache_dir>/baked/
        model.json          the manifest (:class:`BakedModel`)
        categories.txt      the category list, in model-output order
        openvino/model.xml  the OpenVINO conversion, fp32 (and model.bin beside it)
        onnxruntime/model.onnx   when baked for --engine onnxruntime too
        weights.pth.tar     the release checkpoint (absent with --without-weights)

A consumer uses it when it is the model its settings ask for (:func:`why_not_used`), and runs the
conversion baked for its engine's installed version without torch (:func:`baked_conversion`).
This module is pure bookkeeping: it reads and writes those files and imports no model code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moments_stream.errors import ConfigError
from moments_stream.settings import Settings

from .engines import BAKED_DIR_NAME

MANIFEST_FILE = "model.json"
CATEGORIES_FILE = "categories.txt"
WEIGHTS_FILE = "weights.pth.tar"
# Raised when the manifest's meaning changes; a consumer refuses a manifest newer than it knows.
FORMAT = 1


@dataclass(frozen=True)
class BakedConversion:
    """One engine's conversion in the bake: the engine version that made it (a conversion belongs to
    one version) and its main file, relative to the bake directory."""

    version: str
    path: str


@dataclass(frozen=True)
class BakedModel:
    """The manifest, ``model.json``."""

    # The release (settings.MODEL_RELEASES key: "v1", "v2") the weights belong to.
    release: str
    # Where the weights came from (the release URL, another URL or a path: Settings.weights_source)
    # and the SHA-256 of the file baked from it.
    weights_source: str
    weights_sha256: str
    # Where the category list came from (Settings.categories_source).
    categories_source: str
    # Random test weights (`consumer make-test-checkpoint`): every output says so.
    synthetic: bool
    # Exactly what consumer.classify.model_id_for gives for these weights and categories.
    model_id: str
    classes: int
    engines: dict[str, BakedConversion] = field(default_factory=dict)
    # WEIGHTS_FILE, or None when baked --without-weights.
    weights: str | None = None
    format: int = FORMAT


def baked_dir(cache_dir: Path) -> Path:
    return cache_dir / BAKED_DIR_NAME


def manifest_to_json(model: BakedModel) -> str:
    return json.dumps(asdict(model), indent=2, sort_keys=True) + "\n"


def manifest_from_json(text: str) -> BakedModel:
    """The manifest in ``text``; ValueError (KeyError, TypeError) when it is not one."""
    data: dict[str, Any] = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the manifest is not a JSON object")
    if int(data.get("format", 0)) > FORMAT:
        raise ValueError(f"manifest format {data['format']} is newer than this release reads ({FORMAT})")
    engines = {name: BakedConversion(version=str(entry["version"]), path=str(entry["path"]))
               for name, entry in dict(data.get("engines") or {}).items()}
    return BakedModel(
        release=str(data["release"]),
        weights_source=str(data["weights_source"]),
        weights_sha256=str(data["weights_sha256"]).lower(),
        categories_source=str(data["categories_source"]),
        synthetic=bool(data["synthetic"]),
        model_id=str(data["model_id"]),
        classes=int(data["classes"]),
        engines=engines,
        weights=None if data.get("weights") is None else str(data["weights"]),
        format=int(data.get("format", FORMAT)),
    )


def read_baked(directory: Path) -> BakedModel | None:
    """The manifest of the bake in ``directory``; None where there is none. A manifest that cannot
    be read is an error: a consumer must not silently fall back to downloading and converting."""
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"cannot read the baked model's manifest {path}: {error}",
                          fix="make it readable, or bake again with `consumer fetch-model --bake`") from None
    try:
        return manifest_from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"the baked model's manifest {path} is not valid: {type(error).__name__}: {error}",
                          fix="bake it again with `consumer fetch-model --bake` (or remove the folder)") from None


def why_not_used(model: BakedModel, settings: Settings) -> str | None:
    """Why ``settings`` do not ask for the baked ``model`` (None: they do). Settings that name
    nothing (no weights, hash or categories) ask for the image's own model, whatever its source."""
    if model.release != settings.release.name:
        return f"it is the {model.release} release, not {settings.release.name}"
    if settings.weights is not None and settings.weights != model.weights_source:
        return f"its weights come from {model.weights_source}, not {settings.weights}"
    if settings.weights_sha256 is not None and settings.weights_sha256.lower() != model.weights_sha256:
        return f"its weights' SHA-256 is {model.weights_sha256}, not {settings.weights_sha256}"
    if settings.categories is not None and settings.categories != model.categories_source:
        return f"its categories come from {model.categories_source}, not {settings.categories}"
    return None


def baked_conversion(model: BakedModel, directory: Path, engine: str, version: str) -> Path | None:
    """The main file of the conversion baked for ``engine`` at ``version``, or None."""
    conversion = model.engines.get(engine)
    if conversion is None or conversion.version != version:
        return None
    return directory / conversion.path


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (the image holds the bytes once), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_baked(
    directory: Path,
    model: BakedModel,
    categories: Path,
    conversions: dict[str, Path],
    weights: Path | None,
) -> Path:
    """Write the bake into ``directory`` atomically: assembled in a staging folder beside it, then
    renamed into place, so a consumer never sees half a bake. ``conversions`` maps each engine of
    ``model.engines`` to the folder holding its conversion; ``weights`` is copied when
    ``model.weights`` names it."""
    if set(conversions) != set(model.engines):
        raise ValueError(f"conversions for {sorted(conversions)}, manifest engines {sorted(model.engines)}")
    if (weights is None) != (model.weights is None):
        raise ValueError("weights must be given exactly when the manifest names them")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        shutil.copyfile(categories, staging / CATEGORIES_FILE)
        for engine, folder in conversions.items():
            (staging / engine).mkdir()
            for source in folder.iterdir():
                _link_or_copy(source, staging / engine / source.name)
            if not (staging / model.engines[engine].path).is_file():
                raise ValueError(f"{folder} holds no {Path(model.engines[engine].path).name}")
        if weights is not None and model.weights is not None:
            _link_or_copy(weights, staging / model.weights)
        (staging / MANIFEST_FILE).write_text(manifest_to_json(model), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; a bake is read by every user of the image
        _replace_dir(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """``new`` renamed to ``target``; a previous bake there is moved aside first, then removed."""
    previous = None
    if target.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        target.rename(previous / target.name)
    new.rename(target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
