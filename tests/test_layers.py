"""The custom layers against stock Keras and hand-computed values."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import testing

from segment import layers
from segment.layers import InstanceNormalize, LayerScale, subtract_mean


def _feature_maps(seed=0, shape=(3, 7, 9, 4)):
    rng = np.random.default_rng(seed)
    # Per-channel offsets and scales, so a wrong reduction axis cannot go unnoticed.
    return (rng.normal(size=shape) * [0.5, 1.0, 2.0, 3.0] + [4.0, -1.0, 0.0, 2.5]).astype("float32")


# InstanceNormalize takes one of two paths: a batch size known when the graph is built runs
# a kernel per sample, an unknown one (or one above SPLIT_BATCH) is folded into the channels.
# Each test runs the layer both ways: as given (known), and through a graph traced for any batch.
_BATCH_PATHS = ["known batch", "unknown batch"]


def _called(layer, x, path):
    if path == "known batch":
        return layer(x)
    traced = tf.function(layer.call, input_signature=[tf.TensorSpec((None, *x.shape[1:]))])
    assert traced.get_concrete_function().structured_input_signature[0][0].shape[0] is None
    return traced(x)


@pytest.mark.parametrize("path", _BATCH_PATHS)
@pytest.mark.parametrize("affine", [False, True])
def test_instance_normalize_equals_group_normalization(affine, path):
    x = _feature_maps()
    ours = InstanceNormalize(center=affine, scale=affine)
    stock = keras.layers.GroupNormalization(groups=-1, center=affine, scale=affine, epsilon=1e-3)
    ours.build(x.shape)
    stock.build(x.shape)
    if affine:
        rng = np.random.default_rng(1)
        gamma, beta = rng.normal(size=4), rng.normal(size=4)
        ours.set_weights([gamma, beta])
        stock.set_weights([gamma, beta])
    np.testing.assert_allclose(_called(ours, x, path), stock(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", _BATCH_PATHS)
def test_instance_normalize_gradients_equal_group_normalization(path):
    x = tf.constant(_feature_maps(seed=2))
    ours, stock = InstanceNormalize(), keras.layers.GroupNormalization(groups=-1, epsilon=1e-3)
    upstream = tf.constant(np.random.default_rng(3).normal(size=x.shape).astype("float32"))
    gradients = []
    for layer in (ours, stock):
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 2.0, 4), np.linspace(-1.0, 1.0, 4)])
        with tf.GradientTape() as tape:
            tape.watch(x)
            output = _called(layer, x, path if layer is ours else "known batch")
            output = tf.reduce_sum(output * upstream)
        gradients.append(tape.gradient(output, [x, *layer.trainable_variables]))
    for a, b in zip(*gradients):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_instance_normalize_folds_a_batch_larger_than_it_splits():
    x = np.concatenate([_feature_maps(seed)[:, :4, :4] for seed in range(12)])  # 36 samples
    assert len(x) > layers.SPLIT_BATCH
    stock = keras.layers.GroupNormalization(groups=-1, epsilon=1e-3)
    np.testing.assert_allclose(InstanceNormalize()(x), stock(x), rtol=1e-5, atol=1e-5)


def test_instance_normalize_statistics_by_hand():
    # One sample, one channel, values 1..4: mean 2.5, var 1.25.
    x = np.arange(1, 5, dtype="float32").reshape(1, 2, 2, 1)
    expected = (x - 2.5) / np.sqrt(1.25 + 1e-3)
    np.testing.assert_allclose(InstanceNormalize()(x), expected, rtol=1e-6)


def test_instance_normalize_is_independent_of_the_batch():
    x = _feature_maps()
    layer = InstanceNormalize()
    np.testing.assert_allclose(layer(x)[1:2], layer(x[1:2]), rtol=1e-6, atol=1e-6)


def test_instance_normalize_keeps_float32_statistics_under_mixed_precision():
    x = _feature_maps() * 100.0
    stock = keras.layers.GroupNormalization(groups=-1, epsilon=1e-3)
    ours = InstanceNormalize(dtype="mixed_bfloat16")
    output = ours(x)
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    # bfloat16 keeps 8 bits of mantissa: agreement to ~1% of the unit-variance output.
    np.testing.assert_allclose(np.asarray(output, dtype="float32"), stock(x), atol=0.05)


class LayerHarnessTest(testing.TestCase):
    """Keras' own layer harness: serialization, build, a training step, mixed precision."""

    def test_instance_normalize(self):
        self.run_layer_test(
            InstanceNormalize,
            init_kwargs={"epsilon": 1e-3, "center": True, "scale": True},
            input_shape=(2, 5, 6, 3),
            expected_output_shape=(2, 5, 6, 3),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            supports_masking=True,
        )

    def test_instance_normalize_without_affine(self):
        self.run_layer_test(
            InstanceNormalize,
            init_kwargs={"center": False, "scale": False},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_trainable_weights=0,
            supports_masking=True,
            run_training_check=False,  # nothing to train
        )

    def test_layer_scale(self):
        self.run_layer_test(
            LayerScale,
            init_kwargs={"init_value": 0.5},
            input_shape=(2, 4, 4, 3),
            expected_output_shape=(2, 4, 4, 3),
            expected_num_trainable_weights=1,
            supports_masking=True,
        )


def test_layer_scale_multiplies_each_channel_and_learns():
    layer = LayerScale(init_value=1000.0)  # the article's initial value
    x = np.ones((2, 3), dtype="float32") * [1.0, 2.0, 3.0]
    np.testing.assert_allclose(layer(x), [[1000.0, 2000.0, 3000.0]] * 2)
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, np.zeros_like(x), epochs=1, verbose=0)
    assert np.all(np.asarray(layer.scale) < 1000.0)


def test_subtract_mean_through_lambda():
    images = np.array([[[[1.0, 10.0], [3.0, 30.0]]]], dtype="float32")  # (1, 1, 2, 2)
    layer = keras.layers.Lambda(subtract_mean)
    np.testing.assert_allclose(layer(images), [[[[-1.0, -10.0], [1.0, 10.0]]]])
    # Registered by name, the function survives safe-mode deserialization...
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
    np.testing.assert_allclose(restored(images), layer(images))
    # ...where the same maths as a Python lambda is refused.
    unsafe = keras.saving.serialize_keras_object(
        keras.layers.Lambda(lambda x: x - keras.ops.mean(x, axis=(1, 2), keepdims=True))
    )
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.deserialize_keras_object(unsafe, safe_mode=True)
