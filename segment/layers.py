"""Custom Keras layers: the building blocks the segmenter is made of.

- `subtract_mean`: the article's Lambda example, per-image input centring.
- `InstanceNormalize`: per-sample, per-channel normalisation over the spatial axes.
- `LayerScale`: the article's "multiply by a learnable positive diagonal matrix" layer.
"""

import keras
from keras import ops

__all__ = ["InstanceNormalize", "LayerScale", "subtract_mean"]


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
    written to be at least as fast:

    - one pass over the data for the statistics: `E[x]` and `E[x^2]`, `var = E[x^2] - E[x]^2`
      (clamped at zero), instead of a second pass for the centred variance;
    - statistics and the normalisation in float32 (so `mixed_bfloat16`/`mixed_float16` do
      not overflow or cancel), as one multiply-add `x * a + b` with per-(sample, channel)
      coefficients `a`, `b`, and a single cast of the result to the compute dtype;
    - no reshape into groups.

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
        if len(input_shape) != 4:
            raise ValueError(
                f"InstanceNormalize expects a 4D input (batch, height, width, channels), "
                f"got shape {input_shape}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"The channel axis must be known, got shape {input_shape}")
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
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        mean_of_squares = ops.mean(ops.square(x), axis=(1, 2), keepdims=True)
        variance = ops.relu(mean_of_squares - ops.square(mean))
        multiplier = ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            multiplier = multiplier * self.gamma
        offset = -mean * multiplier
        if self.beta is not None:
            offset = offset + self.beta
        # The multiply-add stays in float32 too: in bfloat16, `x * a + b` cancels
        # catastrophically when a channel's mean is large against its spread.
        return ops.cast(x * multiplier + offset, self.compute_dtype)

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
