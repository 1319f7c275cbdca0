"""scripts/export.py and exported models: parity with Keras, metadata, errors, no TensorFlow."""

import importlib
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_inference import random_image

from segment import data
from segment.deploy.export import ExportInstanceNormalize
from segment.imageio import DataError, read_image, write_png
from segment.inference import load_exported, load_segmenter, predict_probability
from segment.losses import CompositeLoss
from segment.model import build_model
from segment.optimizers import StepHalvingSGD

pytest.importorskip("onnxruntime", reason="the export extra is part of [dev]")

export_script = importlib.import_module("segment.cli.export")
predict_script = importlib.import_module("segment.cli.predict")
INFERENCE = {
    "working_size": None, "threshold": 0.4, "tta": True, "scales": [1.0], "min_part": 0.01,
    "refine": False, "min_hole": 0.005,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small segmenter of the network train.py trains (light full-resolution level),
    trained for a few steps (the real loss and optimiser), saved."""
    keras.utils.set_random_seed(0)
    images, masks = data.synthetic_arrays(16, size=32, seed=3)
    model = build_model(base_filters=4, depth=2, full_resolution="light", inference=INFERENCE)
    model.compile(optimizer=StepHalvingSGD(0.1, halve_every=100), loss=CompositeLoss())
    model.fit(images, masks, batch_size=4, epochs=2, verbose=0)
    path = tmp_path_factory.mktemp("run") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def exported(trained):
    """`{format: path}` written by scripts/export.py with only --model and --format."""
    paths = {}
    for format in ("onnx", "litert", "openvino", "saved_model"):
        assert export_script.main(["--model", str(trained), "--format", format]) == 0
        paths[format] = {
            "onnx": trained.with_suffix(".onnx"),
            "litert": trained.with_suffix(".tflite"),
            "openvino": trained.with_suffix(".xml"),
            "saved_model": trained.with_name("model_saved_model"),
        }[format]
        assert paths[format].exists()
    assert trained.with_suffix(".bin").is_file()  # OpenVINO's weights, beside its .xml
    return paths


def float32_model(path):
    """An exported model computing in float32 (OpenVINO would choose bfloat16 on a CPU with
    native bfloat16; the other runtimes compute in float32 anyway)."""
    return load_exported(path, precision="float32") if path.suffix == ".xml" else load_segmenter(path)


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "litert", "openvino"])
def test_exported_probabilities_equal_keras_at_any_size_and_tiled(trained, exported, format):
    keras_model = load_segmenter(trained)
    model = float32_model(exported[format])
    assert model.inference == INFERENCE and model.size_multiple == 4
    # Whole images of several sizes (multiples or not: padding), and one tiled image.
    for (height, width), options in [
        ((32, 32), {}),
        ((45, 61), {}),
        ((130, 70), {}),
        ((300, 410), {"tile": 128, "overlap": 32}),
    ]:
        image = random_image(height, width, seed=height)
        expected = predict_probability(keras_model, image, **options)
        got = predict_probability(model, image, **options)
        assert got.shape == (height, width)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert np.mean((got > 0.4) == (expected > 0.4)) >= 0.999


@pytest.mark.slow
def test_an_onnx_conversion_that_disagrees_with_keras_is_done_again(tmp_path, trained, monkeypatch, capsys):
    from segment.deploy import export

    checks = []
    real_check = export._onnx_agrees

    def first_fails(path, friendly):
        checks.append(real_check(path, friendly))
        return len(checks) > 1 and checks[-1]

    monkeypatch.setattr(export, "_onnx_agrees", first_fails)
    out = tmp_path / "again.onnx"
    assert export_script.main(["--model", str(trained), "--format", "onnx", "--out", str(out)]) == 0
    assert len(checks) >= 2 and checks[-1]  # refused once, converted again until it agreed
    image = random_image(40, 36, seed=2)
    np.testing.assert_allclose(
        predict_probability(load_segmenter(out), image),
        predict_probability(load_segmenter(trained), image),
        atol=1e-4,
    )

    monkeypatch.setattr(export, "_onnx_agrees", lambda path, friendly: False)
    never = tmp_path / "never.onnx"
    assert export_script.main(["--model", str(trained), "--format", "onnx", "--out", str(never)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "disagrees with Keras 4 times" in error
    assert not never.exists() and list(tmp_path.glob(".never.onnx*")) == []


@pytest.mark.slow
def test_an_openvino_export_is_checked_and_replaced_whole(tmp_path, trained, monkeypatch, capsys):
    from segment.deploy import export

    out = tmp_path / "seg.xml"
    assert export_script.main(["--model", str(trained), "--format", "openvino", "--out", str(out)]) == 0
    before = out.read_bytes(), out.with_suffix(".bin").read_bytes()
    # A conversion that disagrees with Keras is refused and the pair already there is kept.
    monkeypatch.setattr(export, "_agrees", lambda exported, friendly: False)
    assert export_script.main(["--model", str(trained), "--format", "openvino", "--out", str(out),
                               "--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "disagrees with Keras" in error
    assert (out.read_bytes(), out.with_suffix(".bin").read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["seg.bin", "seg.xml"]
    # A lone weights file blocks a new export unless --overwrite replaces it.
    monkeypatch.undo()
    out.unlink()
    assert export_script.main(["--model", str(trained), "--format", "openvino", "--out", str(out)]) == 2
    assert "seg.bin: already exists" in capsys.readouterr().err
    assert export_script.main(["--model", str(trained), "--format", "openvino", "--out", str(out),
                               "--overwrite"]) == 0
    assert load_segmenter(out).inference == INFERENCE


def test_the_export_form_of_instance_normalisation_equals_group_normalisation():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 9, 7, 5)).astype(np.float32)
    gamma, beta = np.linspace(0.5, 2.0, 5), np.linspace(-1.0, 1.0, 5)
    stock = keras.layers.GroupNormalization(groups=-1, epsilon=1e-3)
    layer = ExportInstanceNormalize(epsilon=1e-3)
    for norm in (stock, layer):
        norm.build(x.shape)
        norm.set_weights([gamma, beta])
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(stock(x)), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "litert", "openvino"])
def test_a_mixed_precision_model_exports_in_float32(tmp_path, format):
    # Training on a CPU with bfloat16 instructions (or a GPU) saves a mixed-precision model;
    # its export must run in the runtime and give the float32 network's probabilities.
    keras.utils.set_random_seed(1)
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        mixed = build_model(base_filters=4, depth=2, inference=INFERENCE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("stem_conv").compute_dtype == "bfloat16"
    mixed.save(tmp_path / "model.keras")
    assert export_script.main(["--model", str(tmp_path / "model.keras"), "--format", format]) == 0
    suffix = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}[format]
    exported = float32_model(tmp_path / f"model{suffix}")
    twin = build_model(base_filters=4, depth=2, inference=INFERENCE)  # float32, same weights
    twin.set_weights(mixed.get_weights())
    image = random_image(48, 40, seed=5)
    np.testing.assert_allclose(
        predict_probability(exported, image), predict_probability(twin, image), atol=1e-4
    )


def test_predict_script_runs_an_exported_model_like_the_keras_one(tmp_path, trained, exported):
    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "photo.png", random_image(40, 52, seed=5))
    masks = {}
    names = ("onnx", "litert", "openvino")
    for name, model in [("keras", trained), *((name, exported[name]) for name in names)]:
        out = tmp_path / name
        assert predict_script.main([str(tmp_path / "in"), "--model", str(model), "--out", str(out)]) == 0
        masks[name] = read_image(out / "photo_mask.png")
    assert np.mean(masks["onnx"] == masks["keras"]) >= 0.999
    assert np.mean(masks["litert"] == masks["keras"]) >= 0.999
    # OpenVINO computes in bfloat16 where the CPU does natively (8 bits of mantissa): with
    # every part kept (a part near the threshold could fall either side of the smallest part
    # kept), the masks agree wherever Keras's probability is not within rounding of it.
    for name, model in (("keras", trained), ("openvino", exported["openvino"])):
        out = tmp_path / f"{name}-all-parts"
        assert predict_script.main([str(tmp_path / "in"), "--model", str(model), "--out", str(out),
                                    "--min-part", "0"]) == 0
        masks[name] = read_image(out / "photo_mask.png")[..., 0] > 0
    keras_probability = predict_probability(load_segmenter(trained), random_image(40, 52, seed=5))
    clear = np.abs(keras_probability - INFERENCE["threshold"]) > 0.03
    assert clear.mean() > 0.25  # a briefly trained model: many pixels sit near its threshold
    assert np.array_equal(masks["openvino"][clear], masks["keras"][clear])


def test_openvino_in_its_own_precision_is_within_bfloat16_rounding_of_keras(trained, exported):
    import openvino

    keras_model, model = load_segmenter(trained), load_segmenter(exported["openvino"])
    native = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    assert model.precision == {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}[native.get_type_name()]
    assert load_exported(exported["openvino"], precision="float32").precision == "float32"
    for height, width in ((32, 32), (45, 61)):
        image = random_image(height, width, seed=width)
        np.testing.assert_allclose(
            predict_probability(model, image), predict_probability(keras_model, image), atol=0.03
        )
    with pytest.raises(ValueError, match="precision"):
        load_exported(exported["onnx"], precision="bfloat16")


def test_openvino_compiles_each_shape_once_and_keeps_the_latest(trained, exported, monkeypatch):
    import openvino

    from segment.inference import exported as runtime

    monkeypatch.setattr(runtime, "_OPENVINO_SHAPES_KEPT", 2)
    model = load_exported(exported["openvino"], precision="float32")
    keras_model = load_segmenter(trained)
    compiled = []
    real_compile = openvino.Core.compile_model

    def counting(core, network, *args, **kwargs):
        compiled.append(tuple(network.inputs[0].get_partial_shape().to_shape()))
        return real_compile(core, network, *args, **kwargs)

    monkeypatch.setattr(openvino.Core, "compile_model", counting)
    batches = [random_image(h, w, seed=h)[None] for h, w in ((16, 16), (24, 16), (16, 16), (32, 8), (24, 16))]
    for batch in batches:
        np.testing.assert_allclose(model.predict_on_batch(batch), keras_model.predict_on_batch(batch), atol=1e-4)
    # 16x16 again: kept; 32x8 pushes out the oldest (24x16), which is then compiled again.
    assert compiled == [(1, 16, 16, 3), (1, 24, 16, 3), (1, 32, 8, 3), (1, 24, 16, 3)]


def test_saved_model_folder_serves_the_same_probabilities(trained, exported):
    import tensorflow as tf

    folder = exported["saved_model"]
    info = json.loads((folder / "segment.json").read_text())
    assert info["inference"] == INFERENCE and info["size_multiple"] == 4
    served = tf.saved_model.load(str(folder))
    image = random_image(36, 44, seed=9)[None]
    expected = load_segmenter(trained).predict_on_batch(image)
    np.testing.assert_allclose(np.asarray(served.serve(image)), expected, atol=1e-5)


def test_onnx_model_segments_with_onnxruntime_alone(tmp_path, trained, exported):
    # A process where TensorFlow and Keras cannot be imported segments an image with the
    # .onnx file and numpy, following its metadata, and matches Keras's probabilities.
    image = random_image(37, 50, seed=11)
    np.save(tmp_path / "image.npy", image)
    expected = predict_probability(load_segmenter(trained), image, tta=False)
    code = f"""
import sys
sys.modules["tensorflow"] = sys.modules["keras"] = None  # importing either now fails
import json
import numpy as np
import onnxruntime

session = onnxruntime.InferenceSession({str(exported["onnx"])!r}, providers=["CPUExecutionProvider"])
info = json.loads(session.get_modelmeta().custom_metadata_map["segment"])
image = np.load({str(tmp_path / "image.npy")!r})
m = info["size_multiple"]
height, width = image.shape[:2]
padded = np.pad(image, ((0, -height % m), (0, -width % m), (0, 0)), mode="reflect")
probability = session.run(None, {{session.get_inputs()[0].name: padded[None]}})[0][0, :height, :width, 0]
np.save({str(tmp_path / "out.npy")!r}, probability)
print("tensorflow" in sys.modules and sys.modules["tensorflow"] is not None)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-4)


def _foreign_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


def _foreign_openvino(path):
    import openvino
    import openvino.opset13 as ops

    x = ops.parameter([1, 4, 4, 3], np.float32)
    openvino.save_model(openvino.Model([ops.relu(x)], [x]), str(path))


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("corrupt.onnx", lambda p: p.write_bytes(b"\x08\x07garbage" * 20), "not a readable ONNX model"),
        ("foreign.onnx", _foreign_onnx, "without segment metadata"),
        ("alone.tflite", lambda p: p.write_bytes(b"TFL3" * 10), "alone.tflite.json beside it"),
        ("corrupt.tflite", lambda p: (p.write_bytes(b"TFL3" * 10),
                                      p.with_name(p.name + ".json").write_text(
                                          '{"inference": {}, "size_multiple": 4}')),
         "not a readable LiteRT model"),
        ("alone.xml", lambda p: p.write_text("<net/>"), "alone.bin beside it"),
        ("corrupt.xml", lambda p: (p.write_text("<net><layers>"), p.with_suffix(".bin").write_bytes(b"0")),
         "not a readable OpenVINO model"),
        ("foreign.xml", _foreign_openvino, "without segment metadata"),
    ],
)
def test_a_bad_exported_file_is_refused_with_one_line(tmp_path, name, write, message, capsys):
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError, match=message) as error:
        load_segmenter(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "photo.png", random_image(16, 16))
    out = tmp_path / "out"
    assert predict_script.main([str(tmp_path / "in"), "--model", str(path), "--out", str(out)]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_export_refuses_to_overwrite_and_takes_only_keras_models(tmp_path, trained, exported, capsys):
    before = exported["onnx"].read_bytes()
    assert export_script.main(["--model", str(trained), "--format", "onnx"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert exported["onnx"].read_bytes() == before
    assert export_script.main(["--model", str(exported["onnx"]), "--format", "litert",
                               "--out", str(tmp_path / "m.tflite")]) == 2
    assert "takes the trained .keras model" in capsys.readouterr().err
    assert export_script.main(["--model", str(trained), "--format", "onnx",
                               "--out", str(tmp_path / "m.tflite")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert export_script.main(["--model", str(trained), "--format", "openvino",
                               "--out", str(tmp_path / "m.XML")]) == 2
    assert "must end in .xml" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    # --overwrite replaces an exported SavedModel, never another folder.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    assert export_script.main(["--model", str(trained), "--format", "saved_model",
                               "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "export did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"
