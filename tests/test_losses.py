"""The losses against stock Keras, hand-computed values and the speckle property."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from segment import losses
from segment.losses import LOSSES, CompositeLoss, focal_loss, fourth_power_error


def _square_target(size=32):
    target = np.zeros((1, size, size, 1), dtype="float32")
    target[0, 8:24, 8:24, 0] = 1.0
    return target


def test_fourth_power_error_by_hand():
    y_true = np.array([0.0, 1.0, 0.0, 1.0], dtype="float32").reshape(1, 2, 2, 1)
    y_pred = np.array([0.5, 0.5, 0.0, 1.0], dtype="float32").reshape(1, 2, 2, 1)
    # (0.5^4 + 0.5^4 + 0 + 0) / 4 = 0.125 / 4
    np.testing.assert_allclose(fourth_power_error(y_true, y_pred), [0.03125])


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.6, 1.0), (0.5, 0.0)])
def test_focal_matches_keras_binary_focal_crossentropy(alpha, gamma):
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 6, 5, 1)) > 0.5).astype("float32")
    y_pred = rng.uniform(0.01, 0.99, size=(2, 6, 5, 1)).astype("float32")
    stock = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=alpha, gamma=gamma
    )
    np.testing.assert_allclose(
        focal_loss(alpha, gamma)(y_true, y_pred), stock(y_true, y_pred), rtol=1e-5
    )


def test_mse_and_bce_match_keras():
    rng = np.random.default_rng(1)
    y_true = (rng.random((3, 4, 4, 1)) > 0.5).astype("float32")
    y_pred = rng.uniform(0.01, 0.99, size=(3, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(
        np.mean(LOSSES["mse"]()(y_true, y_pred)), keras.losses.MeanSquaredError()(y_true, y_pred), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.mean(LOSSES["bce"]()(y_true, y_pred)), keras.losses.BinaryCrossentropy()(y_true, y_pred), rtol=1e-5
    )


def test_dice_by_hand():
    y_true = np.array([1, 1, 0, 0], dtype="float32").reshape(1, 2, 2, 1)
    y_pred = np.array([1, 0, 1, 0], dtype="float32").reshape(1, 2, 2, 1)
    # 1 - (2*1 + 1) / (2 + 2 + 1)
    np.testing.assert_allclose(losses.dice_loss(y_true, y_pred), [1 - 3 / 5], rtol=1e-6)


def test_total_variation_matches_tf_image():
    images = np.random.default_rng(2).random((2, 5, 6, 1)).astype("float32")
    np.testing.assert_allclose(
        losses.total_variation(images), tf.image.total_variation(tf.constant(images)), rtol=1e-5
    )


def test_composite_penalises_specks_far_more_than_a_shifted_edge():
    target = _square_target()
    specks = target.copy()
    for index in range(16):  # 16 isolated pixels in the background, 2 apart
        specks[0, 1 + 2 * (index // 8) * 13, 1 + 2 * (index % 8), 0] = 1.0
    shifted = target.copy()
    shifted[0, 8:24, 24, 0] = 1.0  # the right edge moved out by one pixel: 16 pixels
    mse = losses.mean_squared_error
    np.testing.assert_allclose(mse(target, specks), mse(target, shifted))  # equal MSE
    # ... and equal Dice: 16 false pixels either way. So MSE + Dice cannot tell them apart,
    # and the whole difference is the smoothness penalty: 16 one-pixel specks add their
    # perimeter, 16 * 4 / 1024 pixels, times 2; the wider square only its 2 longer sides.
    without_penalty = CompositeLoss(smooth_weight=0.0)
    np.testing.assert_allclose(without_penalty.call(target, specks),
                               without_penalty.call(target, shifted), rtol=1e-6)
    loss = CompositeLoss()  # default weights
    extra_specks = float(loss.call(target, specks)[0] - without_penalty.call(target, specks)[0])
    extra_shift = float(loss.call(target, shifted)[0] - without_penalty.call(target, shifted)[0])
    np.testing.assert_allclose(extra_specks, 2.0 * 16 * 4 / (32 * 32), rtol=1e-5)
    np.testing.assert_allclose(extra_shift, 2.0 * 2 / (32 * 32), rtol=1e-5)


def test_connectivity_penalty_sees_a_broken_bar():
    target = np.zeros((1, 24, 24, 1), dtype="float32")
    target[0, 11:13, 2:22, 0] = 1.0  # a thin bar
    broken = target.copy()
    broken[0, 11:13, 11:13, 0] = 0.0  # cut in two: 4 wrong pixels
    widened = target.copy()
    widened[0, 13, 8:12, 0] = 1.0  # 4 wrong pixels along the edge
    assert float(losses.connectivity_penalty(target, broken)[0]) > 2 * float(
        losses.connectivity_penalty(target, widened)[0]
    )


def test_a_perfect_prediction_costs_nothing():
    target = _square_target()
    np.testing.assert_allclose(CompositeLoss().call(target, target), [0.0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_per_sample_with_finite_gradients(name):
    rng = np.random.default_rng(3)
    y_true = tf.constant((rng.random((3, 16, 16, 1)) > 0.5).astype("float32"))
    # Exact 0s and 1s included: a thresholded prediction must not produce NaN gradients.
    values = rng.random((3, 16, 16, 1)).astype("float32")
    values[0] = np.round(values[0])
    y_pred = tf.Variable(values)
    loss = LOSSES[name]()
    with tf.GradientTape() as tape:
        per_sample = loss.call(y_true, y_pred) if isinstance(loss, keras.losses.Loss) else loss(y_true, y_pred)
    assert per_sample.shape == (3,)
    gradient = tape.gradient(per_sample, y_pred)
    assert np.all(np.isfinite(gradient))
    assert np.any(gradient != 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_round_trips_through_its_config(name):
    loss = LOSSES[name]()
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    y_true = _square_target(16)
    y_pred = np.clip(y_true + 0.3 * np.random.default_rng(4).random(y_true.shape), 0, 1).astype("float32")
    if isinstance(loss, keras.losses.Loss):
        assert restored.get_config() == loss.get_config()
        np.testing.assert_allclose(restored(y_true, y_pred), loss(y_true, y_pred), rtol=1e-6)
    else:
        assert restored is loss


def test_sample_weight_weights_samples():
    y_true = np.concatenate([_square_target(16), np.zeros((1, 16, 16, 1), "float32")])
    y_pred = np.full_like(y_true, 0.5)
    loss = CompositeLoss()
    per_sample = loss.call(y_true, y_pred).numpy()
    # Keras' default reduction: sum(weight * value) / batch size.
    np.testing.assert_allclose(
        loss(y_true, y_pred, sample_weight=np.array([1.0, 0.0])), per_sample[0] / 2, rtol=1e-6
    )
