"""The segmenter: a small residual U-Net, and a `keras.Model` subclass with its own steps."""

import dataclasses
import math

import keras
import tensorflow as tf

from segment.imageio import VOID_LABEL
from segment.layers import InstanceNormalize, LayerScale, SweepContext, subtract_mean

__all__ = [
    "BASE_FILTERS", "DEFAULT_INFERENCE", "DEPTH", "FULL_RESOLUTION", "FULL_RESOLUTION_CHOICES",
    "InferenceSettings", "SegmentationModel", "build_model", "check_min_part", "check_scales",
    "without_void",
]

@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """What prediction needs to know about how a model was trained, saved with the model
    (`SegmentationModel.inference`) so that `predict.py --model M` alone does the right thing.

    Attributes:
        working_size: the longer side, in pixels, that images were scaled to in training;
            None when the model learnt at the images' own scale.
        threshold: the probability above which a pixel is foreground.
        tta: average the prediction over the four flips.
        scales: factors of the working size (or of the image's own size) to predict at and
            average over.
        min_part: foreground parts (8-connected) smaller than this share of the image's
            pixels are dropped from the mask.
        refine: refine the mask with GrabCut on the image's colours
            (`segment.inference.refine_mask`).
        min_hole: holes (4-connected background regions that do not reach the image's edge)
            smaller than this share of the image's pixels are filled.

    The defaults are what a model that recorded nothing gets, exported ones included.
    """

    working_size: int | None = None
    threshold: float = 0.5
    tta: bool = False
    scales: tuple[float, ...] = (1.0,)
    min_part: float = 0.0
    refine: bool = False
    min_hole: float = 0.0

    def __post_init__(self):
        unchecked = dict(
            working_size=int(self.working_size) if self.working_size else None,
            threshold=float(self.threshold), tta=bool(self.tta),
            scales=check_scales(self.scales), min_part=check_min_part(self.min_part),
            refine=bool(self.refine), min_hole=check_min_part(self.min_hole),
        )
        for name, value in unchecked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, model):
        """The settings a model carries (`model.inference`); the defaults for a model
        that carries none."""
        saved = getattr(model, "inference", {})
        return cls(**{field.name: saved[field.name] for field in dataclasses.fields(cls)
                      if field.name in saved})

    def replace(self, **changes):
        """A copy with the settings given replaced; those given as None are left as they are
        (a command line's "the model's own")."""
        return dataclasses.replace(
            self, **{name: value for name, value in changes.items() if value is not None}
        )

    def to_dict(self):
        """The settings as saved in a model's config (JSON: `scales` as a list)."""
        return {**dataclasses.asdict(self), "scales": list(self.scales)}


def check_min_part(min_part):
    """`min_part` as a float; ValueError unless it is a share in [0, 1)."""
    share = float(min_part)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"Expected a share of the image's pixels in [0, 1), got {min_part}")
    return share


def check_scales(scales):
    """`scales` as a tuple of floats; ValueError unless there is at least one and every one is
    finite and positive."""
    scales = tuple(float(scale) for scale in scales)
    if not scales or not all(math.isfinite(scale) and scale > 0 for scale in scales):
        raise ValueError(f"Expected one or more positive scales, got {list(scales)}")
    return scales


DEFAULT_INFERENCE = InferenceSettings().to_dict()

# What build_model's full-resolution level can be.
FULL_RESOLUTION_CHOICES = ("residual", "light")
# The network train.py builds unless told otherwise (`segment.training.TrainConfig` takes its
# defaults from here).
BASE_FILTERS = 16
DEPTH = 4
FULL_RESOLUTION = "light"


def _unscale_for_distribution(loss):
    # Keras divides each replica's loss by the number of replicas so that summed gradients
    # are right; the logged loss must be the per-replica mean again.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


def without_void(y, y_pred):
    """Truth and prediction with void pixels (truth `VOID_LABEL`, a border nobody labelled)
    set to 0 in both: they add nothing to the loss or the metrics and pass no gradient. A mask
    without void is unchanged (multiplied by 1)."""
    valid = tf.cast(tf.not_equal(y, tf.cast(VOID_LABEL, y.dtype)), y.dtype)
    return y * valid, y_pred * tf.cast(valid, y_pred.dtype)


def spans_workers(strategy):
    """Whether a `tf.distribute` strategy runs across several worker processes (a
    `MultiWorkerMirroredStrategy` with a cluster of more than one task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    return sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values()) > 1


@keras.saving.register_keras_serializable(package="segment")
class SegmentationModel(keras.Model):
    """A `keras.Model` with its own `train_step` and `test_step`, in the Keras 3 style.

    The steps do what `fit`/`evaluate` do for a stock model, written out so they can be read
    and changed: forward pass under `tf.GradientTape`, `compute_loss` (which applies the
    compiled loss, `sample_weight` and regularisation losses), `optimizer.scale_loss` before
    the gradients (mixed-precision loss scaling), `optimizer.apply`, then the metric
    trackers. The loss is logged like stock Keras logs it: a batch-size-weighted mean over
    the epoch, per replica.

    Build one with `build_model()`; compile it with any loss and optimizer.

    Args:
        *args, **kwargs: what `keras.Model` takes for a functional model (`inputs`,
            `outputs`, `name`).
        inference: the settings prediction uses, saved with the model: a dict of
            `InferenceSettings` fields, those left out at their defaults. Defaults to None
            (every setting at its default).
    """

    def __init__(self, *args, inference=None, **kwargs):
        super().__init__(*args, **kwargs)
        unknown = sorted(set(inference or {}) - set(DEFAULT_INFERENCE))
        if unknown:
            raise ValueError(f"Unknown inference settings {unknown}; known: {sorted(DEFAULT_INFERENCE)}")
        # Kept as a dict, as saved, so that training can change a setting and save it again.
        self.inference = {**DEFAULT_INFERENCE, **(inference or {})}

    def get_config(self):
        return {**super().get_config(), "inference": dict(self.inference)}

    @property
    def size_multiple(self):
        """Input height and width must be multiples of this: the product of the poolings."""
        multiple = 1
        for layer in self.layers:
            if isinstance(layer, keras.layers.MaxPooling2D):
                multiple *= layer.pool_size[0]
        return multiple

    def _track_loss(self, x, loss):
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(_unscale_for_distribution(loss), sample_weight=batch_size)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y, y_pred = without_void(y, self(x, training=True))
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self._track_loss(x, loss)
        return self._logs(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, y_pred = without_void(y, self(x, training=False))
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        self._track_loss(x, loss)
        return self._logs(self.compute_metrics(x, y, y_pred, sample_weight=sample_weight))

    # Two places where Keras 3's TensorFlow trainer fails across worker processes
    # (keras-team/keras#20585); both only matter under a multi-worker strategy.

    def _logs(self, logs):
        # Across workers Keras averages each step's logs with `strategy.reduce("MEAN", value,
        # axis=0)`, which needs an axis: give each scalar one; the reduction then returns
        # the workers' mean as a scalar.
        if not spans_workers(self.distribute_strategy):
            return logs
        return {name: tf.reshape(value, (1,)) for name, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the model from a first batch averaged over all replicas, a reduction
        # that fails across workers; the local replica's batch has the same shapes.
        if iterator is not None and data_batch is None and spans_workers(self.distribute_strategy):
            for _, _, batches in iterator:
                data_batch = next(batches)
                break
            local = self.distribute_strategy.experimental_local_results
            data_batch = keras.tree.map_structure(lambda value: local(value)[0], data_batch)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def _conv(filters, kernel_size, name):
    # No bias: every convolution here is followed by a normalisation that removes it.
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", use_bias=False, kernel_initializer="he_normal",
        name=name,
    )


def _residual_block(x, filters, name, layer_scale_init):
    """conv-norm-relu-conv-norm, scaled by LayerScale, added to the (projected) input."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = InstanceNormalize(name=f"{name}_proj_norm")(_conv(filters, 1, f"{name}_proj")(x))
    y = _conv(filters, 3, f"{name}_conv1")(x)
    y = InstanceNormalize(name=f"{name}_norm1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, f"{name}_conv2")(y)
    y = InstanceNormalize(name=f"{name}_norm2")(y)
    y = LayerScale(layer_scale_init, name=f"{name}_scale")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_model(
    input_shape=(None, None, 3),
    *,
    base_filters=BASE_FILTERS,
    depth=DEPTH,
    blocks_per_level=1,
    full_resolution=FULL_RESOLUTION,
    layer_scale_init=1.0,
    context="none",
    context_units=32,
    foreground_prior=None,
    guidance=0,
    inference=None,
    name="segmenter",
):
    """Build the segmenter: a fully convolutional residual U-Net.

    ```
    image -> Lambda(subtract_mean) -> 3x3 stem
          -> [residual block -> 2x2 max-pool] x depth  (filters double each level)
          -> residual block (bottleneck) [+ LayerScale(SweepContext) if context="sweep"]
          -> [2x nearest upsample -> concat skip -> 1x1 conv -> residual block] x depth
          -> 1x1 conv -> sigmoid (float32, also under mixed precision)
    ```

    With `full_resolution="light"` the full-resolution level has no residual blocks: the
    stem's features go straight to the first pooling and to the skip, and the decoder
    follows its last merge with one conv3x3-InstanceNormalize-ReLU. The two residual blocks
    this leaves out took a quarter of a training step, and the network learnt as well without
    them (docs/experiments.md, "The light full-resolution level").

    Each residual block is conv3x3-InstanceNormalize-ReLU-conv3x3-InstanceNormalize,
    scaled by a LayerScale and added to its input. Instance normalisation (not batch norm)
    makes each image's features independent of the others in its batch, so predictions do
    not depend on the batch size or on tiling.

    Args:
        input_shape: `(height, width, 3)`; `None` dimensions accept any size that is a
            multiple of `2 ** depth`. Defaults to `(None, None, 3)`.
        base_filters: filters at full resolution. Defaults to `16`.
        depth: number of 2x down-samplings; inputs must be multiples of `2 ** depth`
            (16 by default). Defaults to `4`.
        blocks_per_level: residual blocks at each level (none at full resolution with
            `full_resolution="light"`). Defaults to `1`.
        full_resolution: `"residual"` (residual blocks at full resolution, as at every other
            level) or `"light"` (none: the stem, then one convolution after the decoder's
            last merge). Defaults to `"light"`.
        layer_scale_init: initial LayerScale factor of every residual branch. Defaults to
            `1.0`: with momentum SGD, branches started at 0.1 (as CaiT does for deep
            transformers trained with Adam) learnt too slowly in a short run
            (docs/experiments.md).
        context: `"none"`, or `"sweep"` to add a `SweepContext` residual branch at the
            bottleneck, giving every pixel context from the whole image. Defaults to `"none"`.
        context_units: GRU units of each sweep direction. Defaults to `32`.
        foreground_prior: the share of foreground pixels expected; the output bias starts at
            its logit, so the first steps need not push every pixel towards the majority
            class. Defaults to None (bias 0, probability 0.5).
        guidance: channels of a second input, `"guidance"`, joined to the centred image
            before the stem: a click network's mask to correct and its clicks
            (`segment.training.clicks`). Defaults to 0 (the image alone).
        inference: settings saved with the model for prediction, a dict of
            `InferenceSettings` fields. Defaults to None (every setting at its default).
        name: model name. Defaults to `"segmenter"`.

    Returns:
        An uncompiled `SegmentationModel` mapping `(batch, H, W, 3)` images in [0, 1] (and,
        with `guidance`, `(batch, H, W, guidance)` maps) to `(batch, H, W, 1)` foreground
        probabilities.
    """
    if context not in ("none", "sweep"):
        raise ValueError(f"context must be 'none' or 'sweep', got {context!r}")
    if full_resolution not in FULL_RESOLUTION_CHOICES:
        raise ValueError(
            f"full_resolution must be one of {FULL_RESOLUTION_CHOICES}, got {full_resolution!r}"
        )
    light = full_resolution == "light"
    multiple = 2**depth
    for size in input_shape[:2]:
        if size is not None and size % multiple:
            raise ValueError(
                f"Input height and width must be multiples of {multiple} (2 ** depth) for "
                f"depth={depth}, got input_shape={input_shape}"
            )
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Lambda(subtract_mean, name="subtract_mean")(inputs)
    if guidance:
        guides = keras.Input(shape=(*input_shape[:2], guidance), name="guidance")
        x = keras.layers.Concatenate(name="guidance_concat")([x, guides])
        inputs = [inputs, guides]
    x = _conv(base_filters, 3, "stem_conv")(x)
    x = InstanceNormalize(name="stem_norm")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)

    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        for block in range(0 if light and level == 0 else blocks_per_level):
            x = _residual_block(x, filters, f"down{level}_block{block}", layer_scale_init)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)

    for block in range(blocks_per_level):
        x = _residual_block(x, base_filters * 2**depth, f"bottleneck_block{block}", layer_scale_init)
    if context == "sweep":
        sweep = SweepContext(context_units, name="bottleneck_sweep")(x)
        sweep = LayerScale(layer_scale_init, name="bottleneck_sweep_scale")(sweep)
        x = keras.layers.Add(name="bottleneck_sweep_add")([x, sweep])

    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = keras.layers.UpSampling2D(2, name=f"up{level}_upsample")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv(filters, 1, f"up{level}_merge")(x)
        if light and level == 0:
            x = _conv(filters, 3, "up0_conv")(x)
            x = InstanceNormalize(name="up0_norm")(x)
            x = keras.layers.ReLU(name="up0_relu")(x)
            continue
        for block in range(blocks_per_level):
            x = _residual_block(x, filters, f"up{level}_block{block}", layer_scale_init)

    bias = 0.0
    if foreground_prior is not None:
        if not 0.0 < foreground_prior < 1.0:
            raise ValueError(f"foreground_prior must be in (0, 1), got {foreground_prior}")
        bias = math.log(foreground_prior / (1.0 - foreground_prior))
    outputs = keras.layers.Conv2D(
        1, 1, activation="sigmoid", dtype="float32", name="probability",
        bias_initializer=keras.initializers.Constant(bias),
    )(x)
    return SegmentationModel(inputs=inputs, outputs=outputs, name=name, inference=inference)
