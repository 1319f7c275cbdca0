"""Exported segmenters: writing ONNX, LiteRT, OpenVINO and SavedModel files, and running the
first three.

`export_model` converts a trained `model.keras` with Keras 3's own `model.export`, in float32
whatever precision it was trained in, after two changes for the converters, each the same
arithmetic: nearest-neighbour `UpSampling2D` becomes `NearestUpsample2D`, a broadcast and a
reshape (LiteRT's converter cannot give a resized tensor of unknown height and width a
channel count, and falls back to TensorFlow ops that its interpreter lacks), and
`InstanceNormalize` becomes `ExportInstanceNormalize`, moments over height and width (which
spares the ONNX graph a layout transpose around every normalisation). Every ONNX conversion is
checked against Keras before it is kept. Height and width stay dynamic in every format, so
exported models take any image size that the network takes, tiled or whole, exactly as
`predict.py` feeds the `.keras` model.

What prediction needs besides the network (`model.inference`: working size, threshold, flip
and scale averaging, smallest part kept, smallest hole left, GrabCut refinement; the size
multiple) travels with the file: in ONNX's `metadata_props` under the key `segment`, as a JSON
sidecar `<file>.json` beside a `.tflite`, in the OpenVINO model's `rt_info` under `segment`,
and as `segment.json` inside a SavedModel folder.

`load_exported(path)` opens an `.onnx` (onnxruntime), `.tflite` (LiteRT) or `.xml` (OpenVINO,
with its `.bin` beside it) file as an object
with the part of the `keras.Model` interface that `segment.inference` uses (`predict_on_batch`,
`inference`, `size_multiple`), so `predict.py` and `evaluate.py` run it unchanged. The runtimes
are an optional extra: `pip install -e ".[export]"`.
"""

import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

from segment.imageio import DataError
from segment.inference import size_multiple
from segment.layers import InstanceNormalize

__all__ = [
    "FORMATS",
    "METADATA_KEY",
    "ExportInstanceNormalize",
    "NearestUpsample2D",
    "export_model",
    "load_exported",
]

# format -> file suffix ("" for a folder)
FORMATS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml", "saved_model": ""}
METADATA_KEY = "segment"
_SIDECAR = "segment.json"  # inside a SavedModel folder
_EXTRA = 'pip install -e ".[export]"'


class NearestUpsample2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by integer factors, as a broadcast and a reshape.

    Equal to `keras.layers.UpSampling2D(size, interpolation="nearest")` (channels last), in
    operators that every exporter maps to builtins with dynamic height and width.
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)

    def call(self, inputs):
        rows, cols = self.size
        shape = ops.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], inputs.shape[-1]
        expanded = ops.expand_dims(ops.expand_dims(inputs, 2), 4)  # (b, h, 1, w, 1, c)
        tiled = ops.broadcast_to(expanded, (batch, height, rows, width, cols, channels))
        return ops.reshape(tiled, (batch, height * rows, width * cols, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scaled = [None if n is None else n * s for n, s in zip((height, width), self.size)]
        return (batch, *scaled, channels)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


class ExportInstanceNormalize(InstanceNormalize):
    """`InstanceNormalize` as moments over height and width, for the converters.

    The same arithmetic and weights; the training layer's batch-into-channels reshape and
    fused batch-norm kernel become reductions and element-wise ops, which keep the converted
    graph in one layout (tf2onnx otherwise wraps every normalisation in transposes).
    """

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2), keepdims=True)
        centred = inputs - mean
        variance = ops.mean(ops.square(centred), axis=(1, 2), keepdims=True)
        y = centred * ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y


def export_friendly(model):
    """A copy of `model`, same weights, in float32, with nearest `UpSampling2D` as
    `NearestUpsample2D`.

    Float32 because a model trained under mixed precision (every model trained on a CPU with
    bfloat16 instructions, or on a GPU) would otherwise carry bfloat16 or float16 casts into
    the exported graph, which onnxruntime refuses to load and LiteRT runs slowly.
    """

    def clone(layer):
        if (
            isinstance(layer, keras.layers.UpSampling2D)
            and layer.interpolation == "nearest"
            and layer.data_format == "channels_last"
        ):
            return NearestUpsample2D(layer.size, name=layer.name, dtype="float32")
        if type(layer) is InstanceNormalize:
            return ExportInstanceNormalize.from_config({**layer.get_config(), "dtype": "float32"})
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    side = size_multiple(model)
    copy(np.zeros((1, side, side, 3), dtype=np.float32))  # exporters want a model once called
    return copy


def metadata(model):
    """What inference needs besides the network, as stored with an exported file."""
    return {
        "inference": dict(getattr(model, "inference", {})),
        "size_multiple": size_multiple(model),
        "name": model.name,
    }


def default_path(model_path, format):
    """`RUN/model.keras` -> `RUN/model.onnx`, `RUN/model.tflite`, `RUN/model.xml`,
    `RUN/model_saved_model/`."""
    model_path = Path(model_path)
    if format == "saved_model":
        return model_path.with_name(model_path.stem + "_saved_model")
    return model_path.with_suffix(FORMATS[format])


def export_model(model, out, format, *, overwrite=False):
    """Write `model` (a loaded segmenter) to `out` in `format`, atomically.

    Everything is written under a temporary name in `out`'s folder and moved into place at the
    end, so an interrupted export never leaves a half-written file under the final name (an
    OpenVINO model's `.bin` is moved before its `.xml`, after any old `.xml` is removed).

    Args:
        model: a `keras.Model` (`segment.inference.load_segmenter`).
        out: the file (`.onnx`, `.tflite`, `.xml`) or folder (SavedModel) to write.
        format: one of `FORMATS`.
        overwrite: replace an existing `out`. Defaults to False.

    Returns:
        The `Path` written.

    Raises:
        ValueError: an unknown format, or a suffix that does not match it.
        DataError: `out` exists (without `overwrite`), or the converter is not installed.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    suffix = FORMATS[format]
    # OpenVINO finds the weights of `NAME.xml` in `NAME.bin`, in lower case.
    if suffix and out.suffix.lower() != suffix or format == "openvino" and out.suffix != suffix:
        raise ValueError(f"{out}: a {format} file must end in {suffix}")
    companion = {"litert": _sidecar(out), "openvino": out.with_suffix(".bin")}.get(format)
    targets = [out, companion] if companion else [out]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    if out.is_dir() and not (format == "saved_model" and (out / _SIDECAR).is_file()):
        # --overwrite replaces an exported SavedModel, never some other folder.
        raise DataError(f"{out}: is a folder that export did not write; choose another --out")
    if companion and companion.is_dir():
        raise DataError(f"{companion}: is a folder; choose another --out")
    _require(format)
    friendly = export_friendly(model)
    info = json.dumps(metadata(model), indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        staged = Path(scratch) / (out.name if suffix else "model")
        if format == "onnx":
            _convert_onnx(friendly, staged, out, info)
        elif format == "litert":
            friendly.export(str(staged), format="litert", verbose=False)
            (Path(scratch) / "sidecar.json").write_text(info + "\n")
        elif format == "openvino":
            _convert_openvino(friendly, staged, out, info)
        else:
            friendly.export(str(staged), format="tf_saved_model", verbose=False)
            (staged / _SIDECAR).write_text(info + "\n")
        # The companion file first: the main file's name appears last, once everything is in.
        if format == "litert":
            os.replace(Path(scratch) / "sidecar.json", companion)
        if format == "openvino":
            # Two files cannot be swapped at once: the old model goes first, so that in
            # between there is no model rather than a new weights file under an old graph.
            out.unlink(missing_ok=True)
            os.replace(staged.with_suffix(".bin"), companion)
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out


# tf2onnx 1.17's graph optimiser now and then (about one conversion in six of this network)
# drops the final Squeeze of the output, giving a `(1, batch, h, w, 1)` result: every
# conversion is checked against Keras and, if it disagrees, converted again.
_ONNX_ATTEMPTS = 4


def _convert_onnx(friendly, staged, out, info):
    for _ in range(_ONNX_ATTEMPTS):
        staged.unlink(missing_ok=True)
        with warnings.catch_warnings():  # tf2onnx's numpy-2 shim probes np.object
            warnings.simplefilter("ignore", FutureWarning)
            friendly.export(str(staged), format="onnx", verbose=False)
        _set_onnx_metadata(staged, info)
        if _onnx_agrees(staged, friendly):
            return
    raise DataError(
        f"{out}: the ONNX converter produced a model that disagrees with Keras "
        f"{_ONNX_ATTEMPTS} times; export to litert or saved_model instead"
    )


def _convert_openvino(friendly, staged, out, info):
    import openvino

    converted = staged.with_name("converted.xml")
    friendly.export(str(converted), format="openvino", verbose=False)
    network = openvino.Core().read_model(str(converted))
    network.set_rt_info(info, [METADATA_KEY])
    openvino.save_model(network, str(staged), compress_to_fp16=False)
    if not _agrees(_load_openvino(staged, precision="float32"), friendly):
        raise DataError(f"{out}: the OpenVINO converter produced a model that disagrees with Keras")


def _onnx_agrees(path, friendly):
    return _agrees(_load_onnx(path), friendly)


def _agrees(exported, friendly):
    """Whether an exported model, run as `load_exported` runs it, gives `friendly`'s
    probabilities (within 1e-4) on a probe batch."""
    side = size_multiple(friendly)
    probe = np.random.default_rng(0).random((2, 2 * side, 3 * side, 3), dtype=np.float32)
    got = exported.predict_on_batch(probe)
    expected = np.asarray(friendly(probe, training=False))
    return got.shape == expected.shape and bool(np.allclose(got, expected, atol=1e-4))


def _require(format):
    modules = {
        "onnx": ("tf2onnx", "onnx", "onnxruntime"),
        "litert": ("ai_edge_litert",),
        "openvino": ("openvino",),
        "saved_model": (),
    }
    for module in modules[format]:
        try:
            __import__(module)
        except ImportError:
            raise DataError(
                f"exporting to {format} needs the '{module}' package: {_EXTRA}"
            ) from None


def _set_onnx_metadata(path, info):
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info
    onnx.save(model, str(path))


def _sidecar(path):
    path = Path(path)
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------------------------
# Running exported files
# --------------------------------------------------------------------------------------------


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
        raise DataError(f"{path}: running ONNX models needs onnxruntime: {_EXTRA}") from None
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
        raise DataError(f"{path}: running LiteRT models needs ai-edge-litert: {_EXTRA}") from None
    sidecar = _sidecar(path)
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
        raise DataError(f"{path}: running OpenVINO models needs openvino: {_EXTRA}") from None
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
