"""Running exported segmenters (`.onnx`, `.tflite`, `.xml`) behind the interface inference uses."""

import json
import os
import threading
from pathlib import Path

import numpy as np

from segment.imageio import DataError

__all__ = ["ExportedSegmenter", "load_exported", "METADATA_KEY"]


METADATA_KEY = "segment"

EXPORT_EXTRA = 'pip install -e ".[export]"'


def sidecar_path(path):
    path = Path(path)
    return path.with_name(path.name + ".json")


class ExportedSegmenter:
    """An exported model behind the part of the `keras.Model` interface inference uses.

    Attributes:
        name: the model's name. inference: its saved inference settings. size_multiple: what
        input height and width must be multiples of. backend: "onnxruntime", "litert" or
        "openvino". precision: what it computes in, "float32" or "bfloat16".
    """

    def __init__(self, path, info, run, backend, precision="float32"):
        self.path, self.backend, self._run = Path(path), backend, run
        self.precision = precision
        self.name = str(info.get("name", self.path.stem))
        self.inference = dict(info["inference"])
        self.size_multiple = int(info["size_multiple"])

    def predict_on_batch(self, batch):
        """Probabilities `(batch, h, w, 1)` for float32 images `(batch, h, w, 3)`."""
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))


def load_exported(path, *, precision=None):
    """Open an exported `.onnx`, `.tflite` or `.xml` (OpenVINO) segmenter for inference.

    Args:
        path: the exported file.
        precision: OpenVINO only: `"float32"` computes in float32; None (the default) lets
            OpenVINO choose: bfloat16 on a CPU that computes it natively (AVX512-BF16 or
            AMX), as Keras's mixed precision does, float32 on other x86 CPUs (the loaded
            model's `precision` says which). onnxruntime and LiteRT compute in float32.

    Raises:
        DataError: the file is missing, corrupt, not one `export_model` wrote (no metadata),
            or its runtime is not installed; the one-line message names the file.
        ValueError: `precision` is neither None nor "float32".
    """
    if precision not in (None, "float32"):
        raise ValueError(f"precision: None or 'float32', got {precision!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix == ".tflite":
        return _load_litert(path)
    if suffix == ".xml":
        return _load_openvino(path, precision=precision)
    raise DataError(f"{path}: not an exported model (.onnx, .tflite or .xml)")


def _reason(error):
    """The first telling line of a runtime's error, for a one-line message (OpenVINO's first
    lines name only its own source file and check)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return ((telling or lines or [type(error).__name__])[0])[:200]


def _parse_info(path, text):
    try:
        info = json.loads(text)
        info["inference"], info["size_multiple"] = dict(info["inference"]), int(info["size_multiple"])
    except (TypeError, ValueError, KeyError):
        raise DataError(f"{path}: its segment metadata is unreadable") from None
    return info


def _load_onnx(path):
    try:
        import onnxruntime
    except ImportError:
        raise DataError(f"{path}: running ONNX models needs onnxruntime: {EXPORT_EXTRA}") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise DataError(f"{path}: not a readable ONNX model ({_reason(error)})") from None
    stored = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if stored is None:
        raise DataError(f"{path}: an ONNX model without segment metadata (export it with scripts/export.py)")
    info = _parse_info(path, stored)
    name = session.get_inputs()[0].name

    def run(batch):
        return session.run(None, {name: batch})[0]

    return ExportedSegmenter(path, info, run, "onnxruntime")


def _load_litert(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DataError(f"{path}: running LiteRT models needs ai-edge-litert: {EXPORT_EXTRA}") from None
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise DataError(f"{path}: no {sidecar.name} beside it (export writes both)")
    try:
        text = sidecar.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{sidecar}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    info = _parse_info(sidecar, text)
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    except Exception as error:  # LiteRT raises ValueError/RuntimeError for foreign bytes
        raise DataError(f"{path}: not a readable LiteRT model ({_reason(error)})") from None
    source = interpreter.get_input_details()[0]["index"]
    shape = [None]

    def run(batch):
        if shape[0] != batch.shape:  # height and width are dynamic: size the graph to them
            interpreter.resize_tensor_input(source, batch.shape, strict=False)
            interpreter.allocate_tensors()
            shape[0] = batch.shape
        interpreter.set_tensor(source, batch)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return ExportedSegmenter(path, info, run, "litert")


# Compiled for one input shape, OpenVINO runs this network about twice as fast as with dynamic
# height and width; compiling takes a fifth of a second, so each new shape is compiled once and
# kept (tiles and working-size images repeat a few shapes).
_OPENVINO_SHAPES_KEPT = 16


def _load_openvino(path, *, precision=None):
    try:
        import openvino
    except ImportError:
        raise DataError(f"{path}: running OpenVINO models needs openvino: {EXPORT_EXTRA}") from None
    path = Path(path)
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise DataError(f"{path}: no {weights.name} beside it (export writes both)")
    core = openvino.Core()
    try:
        network = core.read_model(str(path), str(weights))
    except Exception as error:  # OpenVINO raises its own exception types
        raise DataError(f"{path}: not a readable OpenVINO model ({_reason(error)})") from None
    if not network.has_rt_info([METADATA_KEY]):
        raise DataError(
            f"{path}: an OpenVINO model without segment metadata (export it with scripts/export.py)"
        )
    info = _parse_info(path, network.get_rt_info([METADATA_KEY]).astype(str))
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "float32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    chosen = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    chosen = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}.get(chosen, chosen)
    requests = {}  # input shape -> infer request, the most recently used last
    lock = threading.Lock()  # one request per shape, and the cache, shared by every caller

    def run(batch):
        with lock:
            request = requests.pop(batch.shape, None)
            if request is None:
                shaped = network.clone()
                shaped.reshape(list(batch.shape))
                request = core.compile_model(shaped, "CPU", config).create_infer_request()
                if len(requests) >= _OPENVINO_SHAPES_KEPT:
                    requests.pop(next(iter(requests)))
            requests[batch.shape] = request
            # Shared: no copy in; the request's own output buffer, copied once, out.
            result = request.infer({0: batch}, share_inputs=True, share_outputs=True)
            return np.array(result[0], dtype=np.float32)

    return ExportedSegmenter(path, info, run, "openvino", precision or chosen)

