"""The classifier a worker holds: model, categories and options, loaded once."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from moments_stream.logs import get_logger
from moments_stream.resources import available_cpus
from moments_stream.settings import DEFAULT_MAX_DECODED_FRAMES, DEFAULT_TOP_K, SYNTHETIC_MODEL_PREFIX, Settings

from . import assets
from .batching import InferenceBatcher
from .engines import Engine, check_engine_options, load_engine, resolve_engine
from .frames import read_frames
from .model import (
    InferenceOptions,
    build_model,
    load_checkpoint,
    prepare_for_inference,
    top_k,
    video_probabilities,
    warm_up,
)
from .preprocess import resize_frame, to_model_input

log = get_logger(__name__)


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


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def model_id_for(
    release: str, weights: Path, categories: list[str], synthetic: bool = False, weights_sha256: str | None = None
) -> str:
    """Names the model by content: release, weights hash and category-list hash (random test
    weights marked ``synthetic-``, so no view passes them off as real)."""
    weights_hash = (weights_sha256 or assets.sha256_of(weights))[:12]
    categories_hash = hashlib.sha256("\n".join(categories).encode()).hexdigest()[:8]
    model_id = f"{release}-{weights_hash}-{categories_hash}"
    return SYNTHETIC_MODEL_PREFIX + model_id if synthetic else model_id


def configured_model_id(settings: Settings) -> str:
    """The id of the model ``settings`` name, as a consumer loading them would report it
    (downloads the weights into the cache if they are a URL not fetched yet)."""
    weights_path, categories_path = resolve_model_files(settings, progress=False)
    _, synthetic = load_checkpoint(weights_path)
    return model_id_for(settings.release.name, weights_path, assets.load_categories(categories_path), synthetic)


@dataclass
class Classifier:
    model: torch.nn.Module
    categories: list[str]
    options: InferenceOptions
    # What runs the model (torch itself, or a compiled engine on CPUs).
    engine: Engine
    model_id: str
    num_frames: int
    synthetic_weights: bool
    top_k: int = DEFAULT_TOP_K
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES
    # Set when several decode threads share the model (accelerators): videos then go through the
    # model together, several per forward pass.
    batcher: InferenceBatcher | None = None

    def classify_frames(self, frames_rgb: Any) -> list[tuple[str, float]]:
        if self.batcher is not None:
            return top_k(self.batcher.probabilities(frames_rgb).cpu(), self.categories, self.top_k)
        return self.classify_batch(to_model_input(frames_rgb))

    def classify_batch(self, batch: torch.Tensor) -> list[tuple[str, float]]:
        """Top-k of one video's preprocessed frames, (N, 3, 224, 224)."""
        probabilities = video_probabilities(self.engine.frame_probabilities(batch))
        return top_k(probabilities.cpu(), self.categories, self.top_k)

    def share_across_threads(self, max_videos: int) -> None:
        """Let several threads classify at once, their videos batched together on the device."""
        self.batcher = InferenceBatcher(self.engine, max_videos=max_videos)

    def classify_file(self, path: str, name: str | None = None) -> Prediction:
        started = time.perf_counter()
        sampled = read_frames(path, self.num_frames, self.max_decoded_frames, keep=resize_frame, name=name)
        decoded = time.perf_counter()
        top = self.classify_frames(sampled.frames)
        inferred = time.perf_counter()
        return Prediction(
            video=name or path,
            top5=top,
            model_id=self.model_id,
            frame_count=sampled.frame_count,
            decode_ms=round((decoded - started) * 1000, 2),
            infer_ms=round((inferred - decoded) * 1000, 2),
            synthetic_weights=self.synthetic_weights,
            sampling=sampled.method,
            codec=sampled.codec,
        )


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


def load_classifier(settings: Settings, progress: bool = True) -> Classifier:
    """Resolve weights and categories (downloading if needed) and build the model once."""
    started = time.perf_counter()
    release = settings.release
    weights_path, categories_path = resolve_model_files(settings, progress=progress)
    categories = assets.load_categories(categories_path)
    state_dict, synthetic = load_checkpoint(weights_path)
    model = build_model(state_dict, expected_classes=len(categories))
    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads or available_cpus())
    if settings.precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        log.warning("bf16_without_cpu_support", hint="this CPU emulates bf16 slowly; use --precision fp32")
    options = InferenceOptions(precision=settings.precision, device=device, compile=settings.compile)
    engine_name = resolve_engine(settings.engine, options, cpu_supports_bf16())
    check_engine_options(engine_name, options)
    weights_sha256 = assets.sha256_of(weights_path)
    if engine_name == "torch":
        model = prepare_for_inference(model, options)
    engine = load_engine(engine_name, model, options, weights_path, weights_sha256, settings.cache_dir,
                         threads=torch.get_num_threads())
    if settings.compile:
        warm_up(model, options, settings.num_frames)
    model_id = model_id_for(release.name, weights_path, categories, synthetic, weights_sha256)
    if synthetic:
        log.warning(
            "synthetic_weights",
            weights=str(weights_path),
            meaning="random test weights: predictions are NOT real action recognitions",
        )
    log.info(
        "model_loaded",
        model_id=model_id,
        weights=str(weights_path),
        classes=len(categories),
        precision=options.precision,
        engine=engine.name,
        compiled=options.compile,
        device=device,
        threads=torch.get_num_threads(),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Classifier(
        model=model,
        categories=categories,
        options=options,
        engine=engine,
        model_id=model_id,
        num_frames=settings.num_frames,
        synthetic_weights=synthetic,
        max_decoded_frames=settings.max_decoded_frames,
    )
