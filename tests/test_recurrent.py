"""The custom recurrent cell against stock Keras' GRU, and the row/column sweep block."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src import testing

from segment.layers import ContextGRUCell, SweepContext


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _random_cell_weights(input_dim, units, seed=0):
    """kernel, recurrent_kernel, bias, with non-zero biases so both bias rows are exercised."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(scale=0.5, size=(input_dim, 3 * units)).astype("float32"),
        rng.normal(scale=0.5, size=(units, 3 * units)).astype("float32"),
        rng.normal(scale=0.5, size=(2, 3 * units)).astype("float32"),
    ]


def test_cell_through_rnn_equals_stock_gru():
    batch, time, input_dim, units = 4, 11, 5, 6
    sequences = np.random.default_rng(1).normal(size=(batch, time, input_dim)).astype("float32")
    weights = _random_cell_weights(input_dim, units)
    ours = keras.layers.RNN(ContextGRUCell(units), return_sequences=True)
    stock_layer = keras.layers.GRU(units, return_sequences=True)  # reset_after=True by default
    stock_cell = keras.layers.RNN(keras.layers.GRUCell(units), return_sequences=True)
    for layer in (ours, stock_layer, stock_cell):
        layer.build(sequences.shape)
        layer.set_weights(weights)  # same layout: copying is enough
    expected = np.asarray(stock_layer(sequences))
    np.testing.assert_allclose(ours(sequences), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stock_cell(sequences), expected, rtol=1e-5, atol=1e-6)


def test_cell_one_step_by_hand():
    input_dim, units = 3, 2
    kernel, recurrent_kernel, bias = _random_cell_weights(input_dim, units, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, input_dim)).astype("float32")
    previous = rng.normal(size=(2, units)).astype("float32")

    # The gate equations of the docstring, one gate at a time, in float64.
    def gate(index):
        columns = slice(index * units, (index + 1) * units)
        from_input = x @ kernel[:, columns] + bias[0, columns]
        from_state = previous @ recurrent_kernel[:, columns] + bias[1, columns]
        return from_input, from_state

    update = _sigmoid(sum(gate(0)))
    reset = _sigmoid(sum(gate(1)))
    candidate_input, candidate_state = gate(2)
    candidate = np.tanh(candidate_input + reset * candidate_state)
    expected = update * previous + (1.0 - update) * candidate

    cell = ContextGRUCell(units)
    cell.build((None, input_dim))
    cell.set_weights([kernel, recurrent_kernel, bias])
    output, [state] = cell(x, [previous])
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state, expected, rtol=1e-5, atol=1e-6)
    assert cell.state_size == units and cell.output_size == units


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (7, 2)])
def test_sweep_context_keeps_the_shape_for_odd_sizes(height, width):
    x = np.random.default_rng(0).normal(size=(2, height, width, 5)).astype("float32")
    layer = SweepContext(units=3)
    assert tuple(layer(x).shape) == (2, height, width, 5)
    assert layer.compute_output_shape((2, height, width, 5)) == (2, height, width, 5)


def test_sweep_context_with_dynamic_height_and_width():
    inputs = keras.Input((None, None, 4))
    outputs = SweepContext(units=3)(inputs)
    assert tuple(outputs.shape) == (None, None, None, 4)
    model = keras.Model(inputs, outputs)
    for height, width in [(1, 1), (3, 5), (7, 2)]:
        x = np.zeros((2, height, width, 4), dtype="float32")
        assert model.predict(x, verbose=0).shape == (2, height, width, 4)


def _input_gradient(layer, x, row, column):
    """d sum(out[0, row, column, :]) / d x, per input pixel (summed over channels)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = layer(x)[0, row, column, :]
    return np.abs(tape.gradient(output, x).numpy()[0]).sum(axis=-1)


def test_every_output_pixel_sees_the_whole_image_unlike_a_conv_stack():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(1, 7, 9, 3)).astype("float32")
    row, column = 1, 1
    far_row, far_column = 6, 8  # 5 rows and 7 columns away

    sweep = _input_gradient(SweepContext(units=4), x, row, column)
    assert sweep[row, far_column] > 0, "same row, far column"
    assert sweep[far_row, column] > 0, "same column, far row"
    assert sweep[far_row, far_column] > 0, "another row and another column"
    assert np.all(sweep > 0), "the row sweep then the column sweep reach every pixel"

    # Two 3x3 convolutions (the same depth: two sweeps) see a 5x5 window and nothing else.
    convolutions = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(3, 3, padding="same"),
        ]
    )
    conv = _input_gradient(convolutions, x, row, column)
    assert conv[row, column] > 0
    assert conv[row, far_column] == 0.0
    assert conv[far_row, column] == 0.0
    assert conv[far_row, far_column] == 0.0
    window = np.zeros_like(conv, dtype=bool)
    window[max(row - 2, 0) : row + 3, max(column - 2, 0) : column + 3] = True
    assert np.all(conv[~window] == 0.0)


def test_config_round_trip():
    cell = ContextGRUCell(7, activation="relu", recurrent_initializer="glorot_uniform")
    restored_cell = ContextGRUCell.from_config(cell.get_config())
    assert restored_cell.get_config() == cell.get_config()
    assert restored_cell.units == 7 and restored_cell.activation is keras.activations.relu

    layer = SweepContext(units=5, name="context")
    restored = SweepContext.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    assert restored.units == 5 and restored.name == "context"

    # The cell inside a stock RNN survives safe-mode deserialization by its registered name.
    rnn = keras.layers.RNN(cell, return_sequences=True)
    config = keras.saving.serialize_keras_object(rnn)
    restored_rnn = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(restored_rnn.cell, ContextGRUCell)


def test_save_and_load_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Add()([x, SweepContext(units=3, name="context")(x)])
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(x))
    images = np.random.default_rng(0).random((2, 5, 7, 3)).astype("float32")
    expected = model.predict(images, verbose=0)

    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)  # no custom_objects
    assert isinstance(restored.get_layer("context"), SweepContext)
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, rtol=1e-6, atol=1e-6)


class LayerHarnessTest(testing.TestCase):
    """Keras' own layer harness: serialization, build, a training step, mixed precision."""

    def test_sweep_context(self):
        self.run_layer_test(
            SweepContext,
            init_kwargs={"units": 3},
            input_shape=(2, 3, 5, 4),
            expected_output_shape=(2, 3, 5, 4),
            # 4 directions x (kernel, recurrent_kernel, bias) + the projection's kernel and bias.
            expected_num_trainable_weights=14,
            expected_num_non_trainable_weights=0,
        )
