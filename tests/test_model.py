"""SegmentationModel's own steps against stock Keras' steps, and the saved-model contract."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from segment.losses import CompositeLoss
from segment.model import SegmentationModel, build_model
from segment.optimizers import StepHalvingSGD

TINY = {"base_filters": 4, "depth": 2}


def _data(count=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((count, size, size, 3)).astype("float32")
    masks = (images.mean(axis=-1, keepdims=True) > 0.5).astype("float32")
    return images, masks


def _twins():
    """A SegmentationModel and a plain keras.Model of the same graph with the same weights."""
    keras.utils.set_random_seed(0)
    ours = build_model(**TINY)
    fresh = build_model(**TINY)
    stock = keras.Model(fresh.inputs, fresh.outputs)  # same graph, stock train_step
    assert not isinstance(stock, SegmentationModel)
    stock.set_weights(ours.get_weights())
    for model in (ours, stock):
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), loss=CompositeLoss()
        )
    return ours, stock


def _assert_same_weights(first, second):
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fit_matches_stock_fit():
    images, masks = _data()
    ours, stock = _twins()
    history = [
        m.fit(images, masks, batch_size=4, epochs=2, shuffle=False, verbose=0).history
        for m in (ours, stock)
    ]
    _assert_same_weights(ours, stock)
    np.testing.assert_allclose(history[0]["loss"], history[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        ours.evaluate(images, masks, verbose=0), stock.evaluate(images, masks, verbose=0), rtol=1e-5
    )


@pytest.mark.slow
def test_sample_weight_changes_the_update_like_stock():
    images, masks = _data()
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 0.0, 1.0, 3.0], dtype="float32")
    ours, stock = _twins()
    unweighted, _ = _twins()
    for model in (ours, stock):
        model.fit(images, masks, sample_weight=weights, batch_size=4, shuffle=False, verbose=0)
    unweighted.fit(images, masks, batch_size=4, shuffle=False, verbose=0)
    _assert_same_weights(ours, stock)
    differences = [
        np.abs(a - b).max() for a, b in zip(ours.get_weights(), unweighted.get_weights())
    ]
    assert max(differences) > 1e-4


@pytest.mark.slow
def test_mirrored_step_matches_single_device_step():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.fail("conftest.py should have made two logical CPU devices")
    images, masks = _data(count=4)

    def one_step(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = build_model(**TINY)
            model.compile(optimizer=StepHalvingSGD(0.05, halve_every=1), loss=CompositeLoss())
        dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
        history = model.fit(dataset, epochs=1, verbose=0).history
        return model, history["loss"][0]

    single, single_loss = one_step(tf.distribute.get_strategy())
    mirrored_strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    mirrored, mirrored_loss = one_step(mirrored_strategy)
    assert mirrored_strategy.num_replicas_in_sync == 2
    _assert_same_weights(single, mirrored)
    np.testing.assert_allclose(single_loss, mirrored_loss, rtol=1e-5)


def test_build_model_output_and_size_rule():
    model = build_model(**TINY)
    assert isinstance(model, SegmentationModel)
    output = model(np.zeros((2, 12, 20, 3), dtype="float32"))
    assert output.shape == (2, 12, 20, 1)
    assert np.all((output >= 0) & (output <= 1))
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model((30, 32, 3), **TINY)


def _full_resolution_convs(level, size=16):
    """Names of the 3x3 convolutions whose output has the input's height and width."""
    built = build_model((size, size, 3), **TINY, full_resolution=level)
    return sorted(
        layer.name for layer in built.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)
        and layer.output.shape[1:3] == (size, size)
    )


def test_a_light_full_resolution_level_keeps_the_stem_and_one_decoder_convolution():
    assert _full_resolution_convs("residual") == [
        "down0_block0_conv1", "down0_block0_conv2", "stem_conv", "up0_block0_conv1",
        "up0_block0_conv2",
    ]
    assert _full_resolution_convs("light") == ["stem_conv", "up0_conv"]
    light = build_model(**TINY, full_resolution="light")
    residual = build_model(**TINY, full_resolution="residual")
    # Every coarser level is the same as in the residual network.
    coarse = {layer.name for layer in residual.layers if not layer.name.startswith(("down0", "up0"))}
    assert coarse <= {layer.name for layer in light.layers}
    output = light(np.zeros((2, 12, 20, 3), dtype="float32"))
    assert output.shape == (2, 12, 20, 1)
    with pytest.raises(ValueError, match="full_resolution"):
        build_model(**TINY, full_resolution="none")


def test_output_bias_starts_at_the_foreground_prior():
    model = build_model(**TINY, foreground_prior=0.2)
    np.testing.assert_allclose(model.get_layer("probability").bias.numpy(), [-1.3862944], rtol=1e-6)
    assert build_model(**TINY).get_layer("probability").bias.numpy()[0] == 0.0
    with pytest.raises(ValueError, match="foreground_prior"):
        build_model(**TINY, foreground_prior=1.0)


@pytest.mark.slow
def test_saved_model_loads_in_safe_mode_in_a_new_process(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model(**TINY)
    model.compile(optimizer=StepHalvingSGD(0.05, halve_every=10), loss=CompositeLoss(smooth_weight=0.3))
    images, masks = _data(count=4)
    model.fit(images, masks, batch_size=4, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    inputs = {"a": np.random.default_rng(2).random((1, 16, 24, 3)).astype("float32"),
              "b": np.random.default_rng(3).random((2, 36, 20, 3)).astype("float32")}
    for key, x in inputs.items():
        np.save(tmp_path / f"{key}.npy", x)
        np.save(tmp_path / f"{key}_expected.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import segment
        from segment.losses import CompositeLoss
        from segment.optimizers import StepHalvingSGD
        model = keras.saving.load_model(r"{path}", safe_mode=True)
        assert type(model).__name__ == "SegmentationModel", type(model)
        assert isinstance(model.optimizer, StepHalvingSGD), model.optimizer
        assert isinstance(model.loss, CompositeLoss) and model.loss.smooth_weight == 0.3
        for key in ("a", "b"):
            x = np.load(r"{tmp_path}/" + key + ".npy")
            expected = np.load(r"{tmp_path}/" + key + "_expected.npy")
            np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
