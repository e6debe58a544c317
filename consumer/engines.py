"""Inference engines: what runs the torch model's forward pass on a consumer.

The torch model stays the source of truth (the release checkpoint, loading, the GPU path). On a
CPU, an engine compiles it for the hardware: OpenVINO converts the module itself, ONNX Runtime
runs its ONNX export. Both match torch fp32 to ~1e-7 in probability and run ~40 % faster than
torch eager here (bench/README.md, "Inference engines"); ``auto`` picks :data:`DEFAULT_CPU_ENGINE`
on CPUs and torch on accelerators.

A converted model is cached, keyed by the weights' SHA-256 and the engine's version, beside the
weights when that folder is writable (runtime images bake it there with ``consumer fetch-model``),
else in the cache directory: a cold function loads it (~0.1 s) instead of converting (~5-10 s).
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
import torch

from moments_stream.errors import ConfigError
from moments_stream.logs import get_logger
from moments_stream.settings import ENGINES

from .model import InferenceOptions, frame_probabilities

log = get_logger(__name__)

# The fastest engine on CPUs that matches torch fp32 to 1e-5 (bench/engines.py, bench/README.md).
DEFAULT_CPU_ENGINE = "openvino"
# The pip package that provides each compiled engine, for the error that names the fix.
ENGINE_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime onnx"}
INPUT_SHAPE = (3, 224, 224)
ONNX_OPSET = 17


class Engine(Protocol):
    name: str

    def frame_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax per frame: (N, 3, 224, 224) -> (N, classes) float32 probabilities."""
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


@dataclass
class TorchEngine:
    model: torch.nn.Module
    options: InferenceOptions
    name: str = "torch"

    def frame_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return frame_probabilities(self.model, batch, self.options)


@dataclass
class CompiledEngine:
    """A model compiled by OpenVINO or ONNX Runtime: logits from a float32 numpy batch."""

    name: str
    run_logits: Callable[[np.ndarray], np.ndarray]
    # The folder of the converted model it runs.
    converted: Path

    def frame_probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.run_logits(np.ascontiguousarray(batch.numpy(), dtype=np.float32))
        return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1)


def converted_name(engine: str, version: str, weights_sha256: str) -> str:
    safe_version = "".join(char if char.isalnum() or char in ".-" else "_" for char in version)
    return f"{weights_sha256[:16]}-{engine}-{safe_version}"


def conversion_dirs(weights: Path, cache_dir: Path) -> list[Path]:
    """Where converted models are looked for, in order: beside the weights, then the cache."""
    beside = weights.parent / "engines"
    fallback = cache_dir / "engines"
    return [beside] if beside == fallback else [beside, fallback]


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


def _example_input() -> torch.Tensor:
    return torch.zeros(1, *INPUT_SHAPE)


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


def load_openvino(
    model: torch.nn.Module, weights: Path, weights_sha256: str, cache_dir: Path, precision: str, threads: int
) -> CompiledEngine:
    ov = import_engine("openvino")

    def convert(directory: Path) -> None:
        converted = ov.convert_model(model.eval(), example_input=_example_input(), input=[[-1, *INPUT_SHAPE]])
        # compress_to_fp16 would round the weights to fp16: the fp32 path must match torch.
        ov.save_model(converted, str(directory / "model.xml"), compress_to_fp16=False)

    folder = cached_conversion("openvino", ov.__version__, weights, weights_sha256, cache_dir, convert, "model.xml")
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", openvino_config(precision, threads))
    output = compiled.output(0)
    return CompiledEngine("openvino", lambda batch: compiled(batch)[output], folder)


def load_onnxruntime(
    model: torch.nn.Module, weights: Path, weights_sha256: str, cache_dir: Path, threads: int
) -> CompiledEngine:
    ort = import_engine("onnxruntime")

    def convert(directory: Path) -> None:
        import_engine("onnx")  # the exporter needs it
        torch.onnx.export(
            model.eval(), (_example_input(),), str(directory / "model.onnx"), input_names=["frames"],
            output_names=["logits"], dynamic_axes={"frames": {0: "frames"}, "logits": {0: "frames"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )

    folder = cached_conversion("onnxruntime", ort.__version__, weights, weights_sha256, cache_dir, convert,
                               "model.onnx")
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), session_options, providers=["CPUExecutionProvider"])
    return CompiledEngine("onnxruntime", lambda batch: session.run(None, {"frames": batch})[0], folder)


def load_engine(
    engine: str,
    model: torch.nn.Module,
    options: InferenceOptions,
    weights: Path,
    weights_sha256: str,
    cache_dir: Path,
    threads: int,
) -> Engine:
    """The engine that will run ``model`` (already prepared for ``options`` when it is torch)."""
    check_engine_options(engine, options)
    if engine == "openvino":
        return load_openvino(model, weights, weights_sha256, cache_dir, options.precision, threads)
    if engine == "onnxruntime":
        return load_onnxruntime(model, weights, weights_sha256, cache_dir, threads)
    return TorchEngine(model, options)
