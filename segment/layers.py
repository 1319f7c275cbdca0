"""Custom Keras layers: the building blocks the segmenter is made of.

- `subtract_mean`: the article's Lambda example, per-image input centring.
- `InstanceNormalize`: per-sample, per-channel normalisation over the spatial axes.
- `LayerScale`: the article's "multiply by a learnable positive diagonal matrix" layer.
- `ContextGRUCell`, `SweepContext`: a custom recurrent cell, swept along rows and columns.
"""

import keras
import tensorflow as tf  # InstanceNormalize uses TensorFlow's fused kernel directly
from keras import ops

__all__ = ["ContextGRUCell", "InstanceNormalize", "LayerScale", "SweepContext", "subtract_mean"]

# InstanceNormalize normalises each sample with its own kernel call up to this many samples
# (a batch size known when the graph is built); larger or unknown batches are folded into the
# channels instead.
SPLIT_BATCH = 32


def _feature_map_channels(layer_name, input_shape):
    """The channel count of a `(batch, height, width, channels)` input, checked."""
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer_name} expects a 4D input (batch, height, width, channels), "
            f"got shape {input_shape}"
        )
    if input_shape[-1] is None:
        raise ValueError(f"The channel axis must be known, got shape {input_shape}")
    return input_shape[-1]


@keras.saving.register_keras_serializable(package="segment")
def subtract_mean(images):
    """Subtract each image's per-channel mean over its spatial axes.

    The article's Lambda-layer example (`x -= K.mean(x, axis=1, keepdims=True)`), applied to
    images: it removes a global brightness/colour cast before the first convolution. It has no
    weights, so `keras.layers.Lambda(subtract_mean)` is the right tool; because the function
    is registered by name, a model that uses it still loads with `safe_mode=True` (a Python
    `lambda` would be refused).

    Args:
        images: tensor of shape `(batch, height, width, channels)`.

    Returns:
        Tensor of the same shape and dtype, each image's channels centred on zero.
    """
    return images - ops.mean(images, axis=(1, 2), keepdims=True)


@keras.saving.register_keras_serializable(package="segment")
class InstanceNormalize(keras.layers.Layer):
    """Instance normalisation: each sample's each channel normalised over height and width.

    ```
    mean, var = moments(x[b, :, :, c])
    y[b, :, :, c] = gamma[c] * (x[b, :, :, c] - mean) / sqrt(var + epsilon) + beta[c]
    ```

    The same computation as `keras.layers.GroupNormalization(groups=-1)` (one group per
    channel); with the same `epsilon` and weights the two agree to float32 round-off. It is
    written to be faster: instance statistics are the batch statistics of a batch of one, so
    the layer runs TensorFlow's fused batch-normalisation kernel (training mode, so it always
    uses the statistics of the input itself) on each sample, when the batch size is known
    when the graph is built (as in `fit`, up to `SPLIT_BATCH` samples); otherwise it lays the
    input out as one image with `batch * channels` channels, whose batch statistics are the
    instance statistics, at the cost of two transposes:

    - one kernel forward and one backward, instead of a dozen element-wise ops and their
      gradients, each a pass over memory;
    - the input is read in its compute dtype (no float32 copy under `mixed_bfloat16`) while
      the statistics and the multiply-add are computed in float32, so mixed precision
      neither overflows nor cancels;
    - measured in the segmenter's training step: on a par with
      `GroupNormalization(groups=-1)` in float32 and about 1.3x faster in mixed_bfloat16
      (see `scripts/benchmark_speed.py`); per sample rather than folded, the whole step is
      about 9% faster, since slicing a batch along its outer axis and joining it again moves
      contiguous memory where the transposes gather strided elements.

    Reference: Ulyanov et al., "Instance Normalization: The Missing Ingredient for Fast
    Stylization", 2016, https://arxiv.org/abs/1607.08022

    Args:
        epsilon: small float added to the variance. Defaults to `1e-3`.
        center: whether to add a learnable per-channel offset `beta`. Defaults to `True`.
        scale: whether to multiply by a learnable per-channel `gamma`. Defaults to `True`.
        beta_initializer: initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: initializer for `gamma`. Defaults to `"ones"`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Input shape:
        `(batch, height, width, channels)`; `height` and `width` may be `None`.

    Output shape:
        Same as input.
    """

    def __init__(
        self,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        channels = _feature_map_channels("InstanceNormalize", input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        # autocast=False: the weights stay float32 and are used in float32 for the statistics.
        self.gamma = (
            self.add_weight(
                shape=(channels,), name="gamma", initializer=self.gamma_initializer, autocast=False
            )
            if self.scale
            else None
        )
        self.beta = (
            self.add_weight(
                shape=(channels,), name="beta", initializer=self.beta_initializer, autocast=False
            )
            if self.center
            else None
        )

    def call(self, inputs):
        channels = inputs.shape[-1]
        gamma = self.gamma if self.gamma is not None else tf.ones((channels,), "float32")
        beta = self.beta if self.beta is not None else tf.zeros((channels,), "float32")
        gamma, beta = tf.convert_to_tensor(gamma), tf.convert_to_tensor(beta)
        samples = inputs.shape[0]
        if samples is not None and samples <= SPLIT_BATCH:
            y = tf.concat(
                [self._batch_norm(x, gamma, beta) for x in tf.split(inputs, samples, axis=0)],
                axis=0,
            )
        else:
            batch, height, width = (tf.shape(inputs)[axis] for axis in range(3))
            # (batch, height, width, channels) -> (1, height, width, batch * channels): each
            # (sample, channel) pair becomes a channel of one image, whose batch statistics
            # are exactly the instance statistics.
            x = tf.reshape(tf.transpose(inputs, (1, 2, 0, 3)), (1, height, width, -1))
            y = self._batch_norm(x, tf.tile(gamma, (batch,)), tf.tile(beta, (batch,)))
            y = tf.transpose(tf.reshape(y, (height, width, batch, channels)), (2, 0, 1, 3))
        return ops.cast(y, self.compute_dtype)

    def _batch_norm(self, x, gamma, beta):
        # FusedBatchNormV3 reads `x` in its own dtype and computes the statistics and the
        # multiply-add in float32: in bfloat16, `x * a + b` would cancel catastrophically when
        # a channel's mean is large against its spread. Its gradient is one fused kernel too.
        empty = tf.zeros((0,), "float32")
        return tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
            data_format="NHWC", is_training=True,
        ).y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="segment")
class LayerScale(keras.layers.Layer):
    """Multiply each channel by a learnable factor: `y = x * diag(scale)`.

    The article's custom-layer example ("multiply the tensor by a positive diagonal matrix",
    i.e. an element-wise product with a learned vector). In the segmenter it scales each
    residual branch before it is added back, initialised small so every block starts close to
    the identity and deep stacks train stably, as in CaiT (Touvron et al. 2021,
    https://arxiv.org/abs/2103.17239) and ConvNeXt.

    Args:
        init_value: initial value of every factor. Defaults to `0.1`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Input shape:
        Any shape `(..., channels)` with a known last axis.

    Output shape:
        Same as input.
    """

    def __init__(self, init_value=0.1, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"The channel axis must be known, got shape {input_shape}")
        self.scale = self.add_weight(
            shape=(channels,),
            name="scale",
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="segment")
class ContextGRUCell(keras.layers.Layer):
    """A gated recurrent unit cell, written out: one time step of a GRU.

    The article's custom recurrent layer copies and edits Keras' LSTM; in Keras 3 a recurrent
    layer is a cell (one step: `(inputs, states) -> (output, new_states)`, plus `state_size`)
    wrapped by `keras.layers.RNN`, which runs the loop over time. This cell computes exactly
    what `keras.layers.GRUCell(units, reset_after=True)` (the Keras 3 default) computes, with
    the same weight layout, so `set_weights` copies weights between the two:

    ```
    x_z, x_r, x_h = split(x_t @ kernel + bias[0], 3)                 # input projection
    h_z, h_r, h_h = split(h_{t-1} @ recurrent_kernel + bias[1], 3)    # recurrent projection
    z_t = recurrent_activation(x_z + h_z)           # update gate
    r_t = recurrent_activation(x_r + h_r)           # reset gate
    c_t = activation(x_h + r_t * h_h)               # candidate ("reset after" the matmul)
    h_t = z_t * h_{t-1} + (1 - z_t) * c_t           # output and new state
    ```

    Each step is two matrix products (all three gates at once, for the input and for the
    state); applying the reset gate after the recurrent product is what lets the state be
    projected in one go.

    Reference: Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation", 2014, https://arxiv.org/abs/1406.1078

    Args:
        units: size of the state and of the output.
        activation: activation of the candidate state. Defaults to `"tanh"`.
        recurrent_activation: activation of the update and reset gates.
            Defaults to `"sigmoid"`.
        kernel_initializer: initializer for `kernel`. Defaults to `"glorot_uniform"`.
        recurrent_initializer: initializer for `recurrent_kernel`. Defaults to `"orthogonal"`.
        bias_initializer: initializer for `bias`. Defaults to `"zeros"`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Weights:
        `kernel` `(input_dim, 3 * units)`, `recurrent_kernel` `(units, 3 * units)` and
        `bias` `(2, 3 * units)` (input bias, recurrent bias); columns in gate order z, r, h.

    Call arguments:
        inputs: `(batch, input_dim)`, the sequence at one time step.
        states: `[h_{t-1}]`, a list holding one `(batch, units)` tensor.
        training: unused (the cell has no dropout); accepted so `RNN` can pass it.

    Returns:
        `(h_t, [h_t])`, with `h_t` of shape `(batch, units)`.

    Example:
        `keras.layers.RNN(ContextGRUCell(32), return_sequences=True)` maps
        `(batch, time, features)` to `(batch, time, 32)`.
    """

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        if units <= 0:
            raise ValueError(f"units must be a positive integer, got units={units}")
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # What keras.layers.RNN reads to create the initial state and size its outputs.
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(f"The feature axis must be known, got input shape {input_shape}")
        self.kernel = self.add_weight(
            shape=(input_dim, 3 * self.units), name="kernel", initializer=self.kernel_initializer
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 3 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
        )
        # Row 0 is added to the input projection, row 1 to the recurrent projection: with the
        # reset gate applied after the product, the candidate needs its own recurrent bias.
        self.bias = self.add_weight(
            shape=(2, 3 * self.units), name="bias", initializer=self.bias_initializer
        )

    def call(self, inputs, states, training=False):
        previous = states[0]
        input_bias, recurrent_bias = self.bias[0], self.bias[1]
        x_z, x_r, x_h = ops.split(ops.matmul(inputs, self.kernel) + input_bias, 3, axis=-1)
        h_z, h_r, h_h = ops.split(
            ops.matmul(previous, self.recurrent_kernel) + recurrent_bias, 3, axis=-1
        )
        update = self.recurrent_activation(x_z + h_z)
        reset = self.recurrent_activation(x_r + h_r)
        candidate = self.activation(x_h + reset * h_h)
        state = update * previous + (1.0 - update) * candidate
        return state, [state]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="segment")
class SweepContext(keras.layers.Layer):
    """Whole-image context from recurrent sweeps along every row, then every column.

    A ReNet block (Visin et al. 2015; used in ReSeg): a bidirectional GRU (`ContextGRUCell`)
    reads each row left-to-right and right-to-left, a second one reads each column of the
    result top-to-bottom and bottom-to-top, and a learned 1x1 projection maps the
    `2 * units` column features back to the input's channels:

    ```
    rows[b, i, :]    = BiGRU_row(x[b, i, :, :])          # (width, 2 * units) per row
    cols[b, :, j]    = BiGRU_col(rows[b, :, j, :])       # (height, 2 * units) per column
    y[b, i, j]       = cols[b, i, j] @ projection + projection_bias
    ```

    After the row sweep each pixel has seen its whole row; the column sweep then mixes those
    row summaries down each column, so every output pixel depends on every input pixel. A
    stack of 3x3 convolutions sees only a `(2 * depth + 1)`-wide window. The rows (and then
    the columns) of all images are folded into the batch, so the recurrence runs
    `height + width` steps per direction with no Python loop over positions; place the block
    where the map is small (the U-Net bottleneck), typically as a residual branch:
    `x + LayerScale()(SweepContext(units)(x))`.

    Reference: Visin et al., "ReNet: A Recurrent Neural Network Based Alternative to
    Convolutional Networks", 2015, https://arxiv.org/abs/1505.00393; Visin et al., "ReSeg:
    A Recurrent Neural Network-based Model for Semantic Segmentation", 2016,
    https://arxiv.org/abs/1511.07053

    Args:
        units: state size of each of the four GRU directions. Defaults to `32`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Input shape:
        `(batch, height, width, channels)`; `height` and `width` may be `None` and any size
        from 1 up.

    Output shape:
        `(batch, height, width, channels)`: C_out equals the input's channels, so the block
        can be added back to its input.
    """

    def __init__(self, units=32, **kwargs):
        if units <= 0:
            raise ValueError(f"units must be a positive integer, got units={units}")
        super().__init__(**kwargs)
        self.units = units

    def _bidirectional_sweep(self, axis_name):
        cell = ContextGRUCell(self.units, dtype=self.dtype_policy, name=f"{axis_name}_gru_cell")
        recurrent = keras.layers.RNN(
            cell, return_sequences=True, dtype=self.dtype_policy, name=f"{axis_name}_gru"
        )
        # The backward direction is a copy of `recurrent` with its own weights.
        return keras.layers.Bidirectional(
            recurrent, merge_mode="concat", dtype=self.dtype_policy, name=f"{axis_name}_sweep"
        )

    def build(self, input_shape):
        channels = _feature_map_channels("SweepContext", input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        self.row_sweep = self._bidirectional_sweep("row")
        # Sequence lengths stay unknown: one built layer serves every image size.
        self.row_sweep.build((None, None, channels))
        self.column_sweep = self._bidirectional_sweep("column")
        self.column_sweep.build((None, None, 2 * self.units))
        self.projection = keras.layers.Dense(channels, dtype=self.dtype_policy, name="projection")
        self.projection.build((None, 2 * self.units))

    def call(self, inputs):
        # Sizes as tensors where they are unknown while the graph is built.
        batch, height, width, channels = ops.shape(inputs)
        rows = ops.reshape(inputs, (batch * height, width, channels))
        rows = ops.reshape(self.row_sweep(rows), (batch, height, width, 2 * self.units))
        columns = ops.reshape(
            ops.transpose(rows, (0, 2, 1, 3)), (batch * width, height, 2 * self.units)
        )
        columns = ops.reshape(self.column_sweep(columns), (batch, width, height, 2 * self.units))
        return self.projection(ops.transpose(columns, (0, 2, 1, 3)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
