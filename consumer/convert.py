"""Converting the torch model for a compiled CPU engine: this needs torch, so only the paths that
hold the torch model import it (a consumer loading weights that are not baked, `fetch-model`).

The conversions are cached by consumer.engines.cached_conversion (keyed by the weights' SHA-256 and
the engine's version), and ``fetch-model --bake`` copies one into the baked model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .engines import (
    CONVERTED_MODEL_FILES,
    INPUT_SHAPE,
    Engine,
    InferenceOptions,
    TorchEngine,
    cached_conversion,
    check_engine_options,
    engine_version,
    import_engine,
    open_converted,
)

ONNX_OPSET = 17


def _example_input() -> torch.Tensor:
    return torch.zeros(1, *INPUT_SHAPE)


def write_openvino(model: torch.nn.Module, directory: Path) -> None:
    """OpenVINO's IR of ``model`` (model.xml, model.bin), fp32, any number of frames."""
    ov = import_engine("openvino")
    converted = ov.convert_model(model.eval(), example_input=_example_input(), input=[[-1, *INPUT_SHAPE]])
    # compress_to_fp16 would round the weights to fp16: the fp32 path must match torch.
    ov.save_model(converted, str(directory / CONVERTED_MODEL_FILES["openvino"]), compress_to_fp16=False)


def write_onnx(model: torch.nn.Module, directory: Path) -> None:
    """The ONNX export of ``model`` (model.onnx), input ``frames`` of any length."""
    import_engine("onnx")  # the exporter needs it
    torch.onnx.export(
        model.eval(), (_example_input(),), str(directory / CONVERTED_MODEL_FILES["onnxruntime"]),
        input_names=["frames"], output_names=["logits"],
        dynamic_axes={"frames": {0: "frames"}, "logits": {0: "frames"}}, opset_version=ONNX_OPSET, dynamo=False,
    )


WRITERS = {"openvino": write_openvino, "onnxruntime": write_onnx}


def converted_model(engine: str, model: torch.nn.Module, weights: Path, weights_sha256: str, cache_dir: Path) -> Path:
    """The folder of ``model`` converted for ``engine``, converting it once (cached)."""
    return cached_conversion(engine, engine_version(engine), weights, weights_sha256, cache_dir,
                             lambda directory: WRITERS[engine](model, directory), CONVERTED_MODEL_FILES[engine])


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
    if engine == "torch":
        return TorchEngine(model, options)
    folder = converted_model(engine, model, weights, weights_sha256, cache_dir)
    return open_converted(engine, folder, options, threads)
