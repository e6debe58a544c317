"""The classifier a worker holds: model, categories and options, loaded once.

Two ways to load it, and the ``model_loaded`` event says which (``baked``):
- from the baked model a runtime image carries (consumer/baked.py), when it is the model the
  settings ask for and holds a conversion for the engine's installed version: the engine opens
  that conversion, and the model id, synthetic flag and categories come from its manifest. No
  torch is imported and the weights are not hashed.
- with torch otherwise: the checkpoint (downloaded once, or the bake's own copy), the model built
  and, for a compiled engine, converted once (cached). A runtime image without torch then stops
  with a ConfigError that names the fix.

This module imports no torch; the torch path imports it when it runs.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from moments_stream.errors import AssetError, ConfigError
from moments_stream.logs import get_logger
from moments_stream.resources import available_cpus
from moments_stream.settings import (
    DEFAULT_MAX_DECODED_FRAMES,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_NUM_FRAMES,
    DEFAULT_PRECISION,
    DEFAULT_TOP_K,
    SYNTHETIC_MODEL_PREFIX,
    Settings,
)

from . import assets, baked
from .batching import InferenceBatcher
from .engines import (
    CONVERTED_MODEL_FILES,
    DEFAULT_CPU_ENGINE,
    Engine,
    InferenceOptions,
    check_engine_options,
    engine_version,
    open_converted,
    resolve_engine,
)
from .frames import SampledFrames, read_frames
from .preprocess import resize_frame, to_model_input
from .scores import top_k, video_probabilities

log = get_logger(__name__)

# How torch is installed with this project (an extra: a CPU runtime image runs without it).
TORCH_INSTALL = "pip install 'moments-stream[torch]'"
# Device files a GPU driver creates (NVIDIA, AMD ROCm, WSL2): without one of them, torch finds no GPU.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


@dataclass(frozen=True)
class Prediction:
    """One video's result: plain data only, so it is safe to pickle onto a queue."""

    video: str
    top5: list[tuple[str, float]]
    model_id: str
    frame_count: int
    decode_ms: float
    infer_ms: float
    synthetic_weights: bool = False
    # How the frames were reached ("seek" or "walk", see consumer.frames) and the stream's codec.
    sampling: str = ""
    codec: str = ""

    @property
    def top1(self) -> str:
        return self.top5[0][0]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top5"] = [[name, round(prob, 6)] for name, prob in self.top5]
        return data


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_driver_present() -> bool:
    return any(Path(path).exists() for path in GPU_DEVICE_FILES)


def optional_torch() -> ModuleType | None:
    """torch where it can be imported (a runtime image for CPUs has none)."""
    try:
        return importlib.import_module("torch")
    except Exception:  # a broken or deliberately blocked install raises more than ImportError
        return None


def resolve_device(requested: str) -> str:
    """``auto``: cuda when torch sees a GPU, else cpu. Asking torch costs its import (~2 s) and torch
    may be absent, so a machine without a GPU driver is not asked."""
    if requested != "auto":
        return requested
    if not gpu_driver_present():
        return "cpu"
    torch = optional_torch()
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def import_torch(needed_for: str, fix: str) -> ModuleType:
    """torch, or a ConfigError saying what needed it and how to do without."""
    try:
        return importlib.import_module("torch")
    except Exception as error:
        raise ConfigError(f"{needed_for} needs torch, which cannot be imported here "
                          f"({type(error).__name__}: {error})", fix=fix) from None


def model_id_for(
    release: str, weights: Path, categories: list[str], synthetic: bool = False, weights_sha256: str | None = None
) -> str:
    """Names the model by content: release, weights hash and category-list hash (random test
    weights marked ``synthetic-``, so no view passes them off as real)."""
    weights_hash = (weights_sha256 or assets.sha256_of(weights))[:12]
    categories_hash = hashlib.sha256("\n".join(categories).encode()).hexdigest()[:8]
    model_id = f"{release}-{weights_hash}-{categories_hash}"
    return SYNTHETIC_MODEL_PREFIX + model_id if synthetic else model_id


def prediction_variant(num_frames: int, precision: str) -> str:
    """The settings that change predictions, as a model id's suffix: the frames sampled and the
    precision (``-8f``, ``-bf16``; none for the release's 16 frames in fp32, so those ids are as
    before), so consumers with other settings never mix their results under one id. The engine is
    left out: every engine gets the same input array (fp32 engines agree), and ``auto`` picks one
    per machine, which a producer naming the model for ``--reclassify`` cannot know."""
    parts = ([] if num_frames == DEFAULT_NUM_FRAMES else [f"{num_frames}f"]) + (
        [] if precision == DEFAULT_PRECISION else [precision]
    )
    return "".join(f"-{part}" for part in parts)


def usable_bake(settings: Settings) -> baked.BakedModel | None:
    """The baked model under the cache directory when it is the model ``settings`` ask for."""
    bake = baked.read_baked(baked.baked_dir(settings.cache_dir))
    if bake is None:
        return None
    reason = baked.why_not_used(bake, settings)
    if reason is not None:
        log.info("baked_model_not_used", path=str(baked.baked_dir(settings.cache_dir)), reason=reason)
        return None
    return bake


def configured_model_id(settings: Settings) -> str:
    """The id of the model ``settings`` name, as a consumer loading them would report it: the baked
    model's own, else from the weights (downloaded into the cache if they are a URL not fetched yet)."""
    variant = prediction_variant(settings.num_frames, settings.precision)
    bake = usable_bake(settings)
    if bake is not None:
        return bake.model_id + variant
    import_torch(f"reading the checkpoint {settings.weights_source}",
                 fix="leave MOMENTS_WEIGHTS, MOMENTS_WEIGHTS_SHA256 and MOMENTS_CATEGORIES unset to use the baked "
                 f"model, or install torch ({TORCH_INSTALL})")
    from .model import load_checkpoint

    weights_path, categories_path = resolve_model_files(settings, progress=False)
    _, synthetic = load_checkpoint(weights_path)
    categories = assets.load_categories(categories_path)
    return model_id_for(settings.release.name, weights_path, categories, synthetic) + variant


@dataclass
class Classifier:
    # The torch module where torch runs or converted the model; None when a compiled engine runs
    # the baked conversion alone.
    model: Any
    categories: list[str]
    options: InferenceOptions
    # What runs the model (torch itself, or a compiled engine on CPUs).
    engine: Engine
    model_id: str
    num_frames: int
    synthetic_weights: bool
    top_k: int = DEFAULT_TOP_K
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    # Set when several decode threads share the model (accelerators): videos then go through the
    # model together, several per forward pass.
    batcher: InferenceBatcher | None = None

    def classify_frames(self, frames_rgb: np.ndarray) -> list[tuple[str, float]]:
        if self.batcher is not None:
            return top_k(self.batcher.probabilities(frames_rgb), self.categories, self.top_k)
        return self.classify_batch(to_model_input(frames_rgb))

    def classify_batch(self, batch: np.ndarray) -> list[tuple[str, float]]:
        """Top-k of one video's preprocessed frames, (N, 3, 224, 224) float32."""
        probabilities = video_probabilities(self.engine.frame_probabilities(batch))
        return top_k(probabilities, self.categories, self.top_k)

    def share_across_threads(self, max_videos: int) -> None:
        """Let several threads classify at once, their videos batched together on the device."""
        self.batcher = InferenceBatcher(self.engine, max_videos=max_videos)

    def classify_file(self, path: str, name: str | None = None) -> Prediction:
        return self.classify_decoded(
            decode_video(path, self.num_frames, self.max_decoded_frames, self.max_frame_pixels, name)
        )

    def classify_decoded(self, decoded: DecodedVideo) -> Prediction:
        started = time.perf_counter()
        top = self.classify_frames(decoded.sampled.frames)
        return Prediction(
            video=decoded.video,
            top5=top,
            model_id=self.model_id,
            frame_count=decoded.sampled.frame_count,
            decode_ms=decoded.decode_ms,
            infer_ms=round((time.perf_counter() - started) * 1000, 2),
            synthetic_weights=self.synthetic_weights,
            sampling=decoded.sampled.method,
            codec=decoded.sampled.codec,
        )


@dataclass(frozen=True)
class DecodedVideo:
    """A video's sampled frames, resized for the model: decoding needs no model, so a cold start
    decodes its first video while the model loads."""

    video: str
    sampled: SampledFrames
    decode_ms: float


def decode_video(
    path: str, num_frames: int, max_decoded_frames: int, max_frame_pixels: int, name: str | None = None
) -> DecodedVideo:
    started = time.perf_counter()
    sampled = read_frames(path, num_frames, max_decoded_frames, keep=resize_frame, name=name,
                          max_frame_pixels=max_frame_pixels)
    return DecodedVideo(name or path, sampled, round((time.perf_counter() - started) * 1000, 2))


def resolve_model_files(settings: Settings, progress: bool = True) -> tuple[Path, Path]:
    """Local weights and categories files, downloading (and size-checking) release URLs once."""
    weights = assets.resolve(
        settings.weights_source,
        settings.cache_dir,
        # The known size applies to the release download, not to a file the user names.
        expected_size=settings.release.weights_size if settings.weights is None else None,
        expected_sha256=settings.weights_sha256,
        progress=progress,
    )
    return weights, assets.resolve(settings.categories_source, settings.cache_dir, progress=progress)


@dataclass(frozen=True)
class _Loaded:
    """A model ready to run, however it was loaded."""

    engine: Engine
    model: Any
    categories: list[str]
    model_id: str
    synthetic: bool
    weights: str
    baked: bool


def _baked_categories(bake: baked.BakedModel, directory: Path) -> list[str]:
    categories = assets.load_categories(directory / baked.CATEGORIES_FILE)
    if len(categories) != bake.classes:
        raise ConfigError(f"the baked model in {directory} has {bake.classes} classes but "
                          f"{len(categories)} categories", fix="bake it again with `consumer fetch-model --bake`")
    return categories


def _open_baked(
    bake: baked.BakedModel, directory: Path, conversion: Path, engine: str, options: InferenceOptions, threads: int
) -> _Loaded:
    """The baked conversion in a compiled engine: model id, categories and synthetic flag from the
    manifest (no torch, no hashing of weights)."""
    return _Loaded(
        engine=open_converted(engine, conversion.parent, options, threads),
        model=None,
        categories=_baked_categories(bake, directory),
        model_id=bake.model_id,
        synthetic=bake.synthetic,
        weights=str(directory / bake.weights) if bake.weights else bake.weights_source,
        baked=True,
    )


def why_torch_is_needed(
    engine: str, settings: Settings, bake: baked.BakedModel | None, bake_on_disk: bool, version: str | None
) -> tuple[str, str]:
    """What needs torch when the baked model cannot run without it, and the fix: (message, fix)."""
    if engine == "torch":
        return ("the torch engine (--engine torch, or what --device, --precision or --compile ask for)",
                "run the baked model with a compiled engine: --engine auto or openvino, --precision fp32, no "
                "--compile, on the CPU (MOMENTS_ENGINE, MOMENTS_PRECISION, MOMENTS_COMPILE, MOMENTS_DEVICE), or "
                f"install torch ({TORCH_INSTALL}; the CUDA runtime image has it)")
    directory = baked.baked_dir(settings.cache_dir)
    if bake is None and not bake_on_disk:
        return (f"loading {settings.weights_source} (there is no baked model in {directory})",
                f"install torch ({TORCH_INSTALL}), or bake the model with `consumer fetch-model --bake` where "
                "torch is installed (runtime images do) and point MOMENTS_CACHE_DIR at that cache")
    if bake is None:
        return (f"loading {settings.weights_source}, which is not the model baked in {directory}",
                "leave MOMENTS_WEIGHTS, MOMENTS_WEIGHTS_SHA256 and MOMENTS_CATEGORIES unset to use the baked model, "
                f"bake these weights with `consumer fetch-model --bake` where torch is installed, or install torch "
                f"({TORCH_INSTALL})")
    baked_versions = ", ".join(f"{name} {entry.version}" for name, entry in sorted(bake.engines.items())) or "none"
    return (f"converting the model for {engine} {version} (the baked model in {directory} holds: {baked_versions})",
            f"bake it again with `consumer fetch-model --bake` under {engine} {version}, or install the "
            f"{engine} version it was baked for")


def _load_with_torch(
    settings: Settings,
    options: InferenceOptions,
    engine_name: str,
    threads: int,
    bake: baked.BakedModel | None,
    needed_for: tuple[str, str],
    progress: bool,
) -> _Loaded:
    """The checkpoint through torch: the bake's own copy (or its source) when the bake is the model
    asked for, else the settings' weights (downloaded once); converted for a compiled engine (cached)."""
    torch = import_torch(*needed_for)
    from .convert import load_engine
    from .model import build_model, load_checkpoint, prepare_for_inference, warm_up

    directory = baked.baked_dir(settings.cache_dir)
    known_sha256: str | None = None
    if bake is not None and bake.weights is not None:
        # The manifest records the baked file's hash: it is not hashed again.
        weights_path, categories_path = directory / bake.weights, directory / baked.CATEGORIES_FILE
        known_sha256 = bake.weights_sha256
    elif bake is not None:
        # Baked without its weights: the file it was baked from (downloaded once, checked against the
        # baked hash), with the baked category list (its source may be a path on the building machine).
        source = settings.replace(weights=bake.weights_source, weights_sha256=bake.weights_sha256)
        weights_path, _ = resolve_model_files(source, progress=progress)
        categories_path = directory / baked.CATEGORIES_FILE
    else:
        weights_path, categories_path = resolve_model_files(settings, progress=progress)
    categories = assets.load_categories(categories_path)
    state_dict, synthetic = load_checkpoint(weights_path)
    model = build_model(state_dict, expected_classes=len(categories))
    torch.set_num_threads(threads)
    weights_sha256 = known_sha256 or assets.sha256_of(weights_path)
    if engine_name == "torch":
        model = prepare_for_inference(model, options)
    engine = load_engine(engine_name, model, options, weights_path, weights_sha256, settings.cache_dir,
                         threads=torch.get_num_threads())
    if settings.compile:
        warm_up(model, options, settings.num_frames)
    return _Loaded(
        engine=engine,
        model=model,
        categories=categories,
        model_id=model_id_for(settings.release.name, weights_path, categories, synthetic, weights_sha256),
        synthetic=synthetic,
        weights=str(weights_path),
        baked=bake is not None,
    )


def load_classifier(settings: Settings, progress: bool = True) -> Classifier:
    """The model ``settings`` ask for, loaded once: from the baked model without torch where it can
    be, else with torch (downloading the weights if needed)."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    if settings.precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        log.warning("bf16_without_cpu_support", hint="this CPU emulates bf16 slowly; use --precision fp32")
    options = InferenceOptions(precision=settings.precision, device=device, compile=settings.compile)
    engine_name = resolve_engine(settings.engine, options, cpu_supports_bf16())
    check_engine_options(engine_name, options)
    threads = settings.threads or available_cpus()
    directory = baked.baked_dir(settings.cache_dir)
    bake = usable_bake(settings)
    version = None if engine_name == "torch" else engine_version(engine_name)
    conversion = None if bake is None or version is None else baked.baked_conversion(bake, directory, engine_name,
                                                                                       version)
    if bake is not None and conversion is not None:
        loaded = _open_baked(bake, directory, conversion, engine_name, options, threads)
    else:
        needed_for = why_torch_is_needed(engine_name, settings, bake, (directory / baked.MANIFEST_FILE).is_file(),
                                         version)
        loaded = _load_with_torch(settings, options, engine_name, threads, bake, needed_for, progress)
    if loaded.synthetic:
        log.warning(
            "synthetic_weights",
            weights=loaded.weights,
            meaning="random test weights: predictions are NOT real action recognitions",
        )
    model_id = loaded.model_id + prediction_variant(settings.num_frames, options.precision)
    log.info(
        "model_loaded",
        model_id=model_id,
        weights=loaded.weights,
        baked=loaded.baked,
        classes=len(loaded.categories),
        precision=options.precision,
        engine=loaded.engine.name,
        compiled=options.compile,
        device=device,
        threads=threads,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Classifier(
        model=loaded.model,
        categories=loaded.categories,
        options=options,
        engine=loaded.engine,
        model_id=model_id,
        num_frames=settings.num_frames,
        synthetic_weights=loaded.synthetic,
        max_decoded_frames=settings.max_decoded_frames,
        max_frame_pixels=settings.max_frame_pixels,
    )


def bake_model(
    settings: Settings, with_weights: bool, engines: Sequence[str] = (DEFAULT_CPU_ENGINE,), progress: bool = True
) -> tuple[Path, baked.BakedModel]:
    """``consumer fetch-model --bake``: the model ``settings`` name, converted for each of ``engines``
    (cached as usual), written with its manifest as the baked model under the cache directory."""
    import_torch("baking the model", fix=f"install torch ({TORCH_INSTALL}); runtime/build.sh bakes where it "
                 "is installed, or in a build stage that installs it")
    from .convert import converted_model
    from .model import build_model, load_checkpoint

    weights_path, categories_path = resolve_model_files(settings, progress=progress)
    categories = assets.load_categories(categories_path)
    state_dict, synthetic = load_checkpoint(weights_path)
    model = build_model(state_dict, expected_classes=len(categories))
    weights_sha256 = assets.sha256_of(weights_path)
    # A pin is checked on downloads only; a bake under a pin must hold the pinned file, or no
    # consumer with that pin would ever use it.
    if settings.weights_sha256 is not None and settings.weights_sha256.lower() != weights_sha256:
        raise AssetError(f"{weights_path} has SHA-256 {weights_sha256}, not the pinned {settings.weights_sha256}",
                         fix="bake the pinned file, or correct MOMENTS_WEIGHTS_SHA256")
    conversions = {engine: converted_model(engine, model, weights_path, weights_sha256, settings.cache_dir)
                   for engine in engines}
    manifest = baked.BakedModel(
        release=settings.release.name,
        weights_source=settings.weights_source,
        weights_sha256=weights_sha256,
        categories_source=settings.categories_source,
        synthetic=synthetic,
        model_id=model_id_for(settings.release.name, weights_path, categories, synthetic, weights_sha256),
        classes=len(categories),
        engines={engine: baked.BakedConversion(version=engine_version(engine),
                                               path=f"{engine}/{CONVERTED_MODEL_FILES[engine]}")
                 for engine in engines},
        weights=baked.WEIGHTS_FILE if with_weights else None,
    )
    directory = baked.write_baked(baked.baked_dir(settings.cache_dir), manifest, categories_path,
                                  conversions,
                                  weights_path if with_weights else None)
    log.info("model_baked", path=str(directory), model_id=manifest.model_id, engines=sorted(engines),
             weights=with_weights)
    return directory, manifest
