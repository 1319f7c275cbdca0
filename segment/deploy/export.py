"""Exporting segmenters: ONNX, LiteRT, OpenVINO and SavedModel files.

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

`segment.inference.load_exported` runs what this writes, so `predict.py` and `evaluate.py` run
an exported file as they run the `.keras` model. The converters and runtimes are an optional
extra: `pip install -e ".[export]"`.
"""

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import ops

from segment.imageio import DataError
from segment.inference import size_multiple
from segment.inference.exported import (
    EXPORT_EXTRA,
    METADATA_KEY,
    load_exported,
    sidecar_path,
)
from segment.layers import InstanceNormalize

__all__ = [
    "default_path", "export_friendly", "export_model", "ExportInstanceNormalize", "FORMATS",
    "metadata", "NearestUpsample2D",
]


# format -> file suffix ("" for a folder)
FORMATS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml", "saved_model": ""}

_SIDECAR = "segment.json"  # inside a SavedModel folder


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
    companion = {"litert": sidecar_path(out), "openvino": out.with_suffix(".bin")}.get(format)
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
    if not _agrees(load_exported(staged, precision="float32"), friendly):
        raise DataError(f"{out}: the OpenVINO converter produced a model that disagrees with Keras")


def _onnx_agrees(path, friendly):
    return _agrees(load_exported(path), friendly)


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
                f"exporting to {format} needs the '{module}' package: {EXPORT_EXTRA}"
            ) from None


def _set_onnx_metadata(path, info):
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info
    onnx.save(model, str(path))

