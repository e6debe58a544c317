"""Inference engines: what runs the model's forward pass on a consumer, on numpy batches.

The torch model stays the source of truth (the release checkpoint, loading, the GPU path). On a
CPU, an engine runs a conversion of it compiled for the hardware: OpenVINO's IR or ONNX Runtime's
ONNX export. Both match torch fp32 to ~1e-7 in probability and run ~40 % faster than torch eager
here (bench/README.md, "Inference engines"); ``auto`` picks :data:`DEFAULT_CPU_ENGINE` on CPUs and
torch on accelerators.

This module imports no torch: loading and running a converted model needs none, so a runtime image
without torch runs its baked conversion (consumer/baked.py). Converting needs the torch module and
lives in consumer/convert.py; :class:`TorchEngine` imports torch when it first runs.

A converted model is cached, keyed by the weights' SHA-256 and the engine's version, beside the
weights when that folder is writable, else in the cache directory: a function loads it (~0.1 s)
instead of converting (~5-10 s).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from moments_stream.errors import ConfigError
from moments_stream.logs import get_logger
from moments_stream.settings import ENGINES

from .scores import softmax

log = get_logger(__name__)

# The fastest engine on CPUs that matches torch fp32 to 1e-5 (bench/engines.py, bench/README.md).
DEFAULT_CPU_ENGINE = "openvino"
# The pip package that provides each compiled engine, for the error that names the fix.
ENGINE_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime onnx"}
# The file of each compiled engine's conversion that the engine opens (OpenVINO's .bin sits beside it).
CONVERTED_MODEL_FILES = {"openvino": "model.xml", "onnxruntime": "model.onnx"}
INPUT_SHAPE = (3, 224, 224)
# The folder under the cache directory that holds the baked model (consumer/baked.py): written
# once by `consumer fetch-model --bake`, never converted into afterwards.
BAKED_DIR_NAME = "baked"


@dataclass(frozen=True)
class InferenceOptions:
    precision: str = "fp32"
    device: str = "cpu"
    channels_last: bool = True
    compile: bool = False


class Engine(Protocol):
    name: str

    def frame_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax per frame: (N, 3, 224, 224) float32 -> (N, classes) float32 probabilities."""
        ...


def resolve_engine(requested: str, options: InferenceOptions, cpu_has_bf16: bool = False) -> str:
    """The engine ``requested`` names. ``auto`` is :data:`DEFAULT_CPU_ENGINE` for fp32 on a CPU (and
    bf16 where the CPU has it), torch elsewhere: on accelerators, with ``--compile``, or where torch
    is the only one that runs the precision asked for."""
    if requested not in ENGINES:
        raise ConfigError(f"unknown inference engine {requested!r}", fix=f"use one of: {', '.join(ENGINES)}")
    if requested != "auto":
        return requested
    precision_runs = options.precision == "fp32" or (options.precision == "bf16" and cpu_has_bf16)
    on_cpu = options.device == "cpu" and not options.compile
    return DEFAULT_CPU_ENGINE if on_cpu and precision_runs else "torch"


def check_engine_options(engine: str, options: InferenceOptions) -> None:
    """Compiled engines run on the CPU, in fp32 or bf16, without torch.compile."""
    if engine == "torch":
        return
    if options.device != "cpu":
        raise ConfigError(f"the {engine} engine runs on the CPU, not {options.device}",
                          fix="use --engine torch (MOMENTS_ENGINE=torch) on accelerators")
    if options.precision not in ("fp32", "bf16"):
        raise ConfigError(f"the {engine} engine runs fp32 or bf16, not {options.precision}",
                          fix="use --precision fp32 or bf16, or --engine torch")
    if engine == "onnxruntime" and options.precision != "fp32":
        raise ConfigError("the onnxruntime engine runs fp32 only", fix="use --engine openvino for bf16")
    if options.compile:
        raise ConfigError(f"--compile is torch.compile; the {engine} engine compiles the model itself",
                          fix="drop --compile (MOMENTS_COMPILE), or use --engine torch")


def import_engine(engine: str) -> ModuleType:
    """The engine's Python package, or a :class:`ConfigError` naming what to install."""
    try:
        return importlib.import_module(engine)
    except Exception as error:  # a broken install raises more than ImportError
        raise ConfigError(
            f"the {engine} inference engine cannot be imported: {type(error).__name__}: {error}",
            fix=f"pip install {ENGINE_PACKAGES[engine]} (they install with moments-stream), "
            "or choose another engine with --engine / MOMENTS_ENGINE (torch needs nothing more)",
        ) from None


def engine_version(engine: str) -> str:
    """The installed version of a compiled engine's package (a conversion belongs to one version)."""
    return str(import_engine(engine).__version__)


@dataclass
class TorchEngine:
    """The torch module itself (eager or torch.compile'd, on any device); torch is imported by
    whoever built ``model``, never by a consumer that runs a compiled engine."""

    model: Any  # torch.nn.Module, prepared for ``options``
    options: InferenceOptions
    name: str = "torch"

    def frame_probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from .model import frame_probabilities

        probabilities = frame_probabilities(self.model, torch.from_numpy(np.ascontiguousarray(batch)), self.options)
        return probabilities.cpu().numpy()


@dataclass
class CompiledEngine:
    """A model compiled by OpenVINO or ONNX Runtime: logits from a float32 numpy batch."""

    name: str
    run_logits: Callable[[np.ndarray], np.ndarray]
    # The folder of the converted model it runs.
    converted: Path

    def frame_probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.run_logits(np.ascontiguousarray(batch, dtype=np.float32)))


def converted_name(engine: str, version: str, weights_sha256: str) -> str:
    safe_version = "".join(char if char.isalnum() or char in ".-" else "_" for char in version)
    return f"{weights_sha256[:16]}-{engine}-{safe_version}"


def conversion_dirs(weights: Path, cache_dir: Path) -> list[Path]:
    """Where converted models are looked for, in order: beside the weights, then the cache. Weights
    in the baked model convert into the cache only: a bake is what `fetch-model --bake` wrote."""
    beside = weights.parent / "engines"
    fallback = cache_dir / "engines"
    if beside == fallback or weights.parent == cache_dir / BAKED_DIR_NAME:
        return [fallback]
    return [beside, fallback]


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def cached_conversion(
    engine: str,
    version: str,
    weights: Path,
    weights_sha256: str,
    cache_dir: Path,
    convert: Callable[[Path], None],
    main_file: str,
) -> Path:
    """The converted model's folder, converting once (written aside, then renamed into place)."""
    name = converted_name(engine, version, weights_sha256)
    candidates = conversion_dirs(weights, cache_dir)
    for directory in candidates:
        if (directory / name / main_file).is_file():
            return directory / name
    target = next((directory for directory in candidates if _writable(directory)), None)
    if target is None:
        raise ConfigError(f"nowhere to keep the {engine} conversion of {weights}",
                          fix=f"make {candidates[-1]} writable (MOMENTS_CACHE_DIR), or use --engine torch")
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target))
    try:
        convert(staging)
        try:
            staging.rename(target / name)
        except OSError:  # another process converted it meanwhile: theirs is as good
            if not (target / name / main_file).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model_converted", engine=engine, version=version, path=str(target / name),
             duration_ms=round((time.perf_counter() - started) * 1000, 1))
    return target / name


def openvino_config(precision: str, threads: int) -> dict[str, Any]:
    """OpenVINO's CPU plugin settings for one consumer using ``threads`` threads."""
    return {
        # OpenVINO infers in bf16 by default on CPUs that support it; fp32 must be asked for.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # Pinning ties each process's threads to the first cores of its affinity mask, so the
        # one-thread consumers `moments-stream run` starts per CPU all ran on CPU 0 (two on this
        # 2-vCPU VM: 2.47 s per video each, 1.29 s unpinned). The kernel spreads them.
        "ENABLE_CPU_PINNING": False,
    }


def open_openvino(model_xml: Path, precision: str, threads: int) -> CompiledEngine:
    """An OpenVINO conversion (model.xml and its .bin) compiled for this CPU."""
    ov = import_engine("openvino")
    compiled = ov.Core().compile_model(str(model_xml), "CPU", openvino_config(precision, threads))
    output = compiled.output(0)
    return CompiledEngine("openvino", lambda batch: compiled(batch)[output], model_xml.parent)


def open_onnxruntime(model_onnx: Path, threads: int) -> CompiledEngine:
    """An ONNX export in an ONNX Runtime CPU session of ``threads`` threads."""
    ort = import_engine("onnxruntime")
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_onnx), session_options, providers=["CPUExecutionProvider"])
    return CompiledEngine("onnxruntime", lambda batch: session.run(None, {"frames": batch})[0], model_onnx.parent)


def open_converted(engine: str, folder: Path, options: InferenceOptions, threads: int) -> CompiledEngine:
    """A compiled engine over the conversion in ``folder`` (no torch needed)."""
    check_engine_options(engine, options)
    model_file = folder / CONVERTED_MODEL_FILES[engine]
    if engine == "openvino":
        return open_openvino(model_file, options.precision, threads)
    return open_onnxruntime(model_file, threads)
