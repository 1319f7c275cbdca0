"""Losses for binary segmentation, written as the article writes custom losses.

Every loss maps `(y_true, y_pred)` of shape `(batch, height, width, 1)` (targets in {0, 1},
predictions are probabilities in [0, 1]) to one value per sample, shape `(batch,)`. Keras
then applies `sample_weight` and the reduction, which keeps them correct under distribution
strategies. Plain functions hold the maths; thin `keras.losses.Loss` classes hold the options.
"""

import keras
from keras import ops

__all__ = [
    "LOSSES", "CompositeLoss", "DiceLoss", "FocalLoss", "binary_crossentropy",
    "connectivity_penalty", "dice_loss", "focal_loss", "fourth_power_error", "mean_squared_error",
    "soft_skeleton", "total_variation", "total_variation_excess",
]

_SPATIAL = (1, 2, 3)
_EPSILON = 1e-7


def _prepare(y_true, y_pred):
    y_pred = ops.cast(y_pred, "float32")
    return ops.cast(y_true, y_pred.dtype), y_pred


@keras.saving.register_keras_serializable(package="segment")
def mean_squared_error(y_true, y_pred):
    """Per-sample mean of `(y_pred - y_true) ** 2` over height, width and channels."""
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.square(y_pred - y_true), axis=_SPATIAL)


@keras.saving.register_keras_serializable(package="segment")
def fourth_power_error(y_true, y_pred):
    """The article's example loss: per-sample mean of `(y_pred - y_true) ** 4`.

    Compared with MSE it forgives small errors (0.1 costs 1e-4 instead of 1e-2) and punishes
    confidently wrong pixels hard.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(ops.square(ops.square(y_pred - y_true)), axis=_SPATIAL)


@keras.saving.register_keras_serializable(package="segment")
def binary_crossentropy(y_true, y_pred):
    """Per-sample mean binary cross-entropy of probabilities (Keras clips at 1e-7)."""
    y_true, y_pred = _prepare(y_true, y_pred)
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))


def _focal(y_true, y_pred, alpha, gamma):
    # FL = -alpha (z - p)^gamma log(p) - (1 - alpha) p^gamma log(1 - p), as in the article,
    # for z in {0, 1}. The article applies a sigmoid to logits first; the segmenter's output
    # is already a probability. Summed in the article, averaged here so the loss does not
    # grow with the image size.
    y_true, y_pred = _prepare(y_true, y_pred)
    p = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
    positive = -alpha * ops.power(1.0 - p, gamma) * ops.log(p)
    negative = -(1.0 - alpha) * ops.power(p, gamma) * ops.log(1.0 - p)
    return ops.mean(y_true * positive + (1.0 - y_true) * negative, axis=_SPATIAL)


def dice_loss(y_true, y_pred, smooth=1.0):
    """Per-sample soft Dice loss, `1 - (2 |p y| + s) / (|p| + |y| + s)`."""
    y_true, y_pred = _prepare(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred, axis=_SPATIAL)
    total = ops.sum(y_true, axis=_SPATIAL) + ops.sum(y_pred, axis=_SPATIAL)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def total_variation(images):
    """Per-sample anisotropic total variation: sum of |horizontal| + |vertical| differences.

    Args:
        images: tensor of shape `(batch, height, width, channels)`.

    Returns:
        Tensor of shape `(batch,)`.
    """
    down = ops.abs(images[:, 1:, :, :] - images[:, :-1, :, :])
    right = ops.abs(images[:, :, 1:, :] - images[:, :, :-1, :])
    return ops.sum(down, axis=_SPATIAL) + ops.sum(right, axis=_SPATIAL)


def total_variation_excess(y_true, y_pred):
    """Per-sample `max(0, TV(y_pred) - TV(y_true))`, divided by the number of pixels.

    Total variation measured relative to the target: the true outlines cost nothing, a
    blurred or one-pixel-shifted edge costs nothing (a ramp has the same TV as a step), but
    every isolated speck or pinhole adds its whole perimeter (4 for one pixel). This is the
    penalty against the "snowflake" output the article wants to avoid, in both directions:
    1s scattered in the background and 0s punched into objects.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    pixels = ops.cast(ops.prod(ops.shape(y_pred)[1:]), "float32")
    return ops.relu(total_variation(y_pred) - total_variation(y_true)) / pixels


def _soft_erode(images):
    # Min-pooling with a plus-shaped (4-connected) element, as in Shit et al.'s reference code.
    vertical = -ops.max_pool(-images, pool_size=(3, 1), strides=1, padding="same")
    horizontal = -ops.max_pool(-images, pool_size=(1, 3), strides=1, padding="same")
    return ops.minimum(vertical, horizontal)


def _soft_dilate(images):
    return ops.max_pool(images, pool_size=(3, 3), strides=1, padding="same")


def soft_skeleton(images, iterations=5):
    """Differentiable morphological skeleton (Shit et al. 2021, Algorithm 1).

    Args:
        images: probabilities of shape `(batch, height, width, channels)`.
        iterations: erosion steps; structures up to about `2 * iterations` pixels thick get a
            complete skeleton. Defaults to `5`.
    """
    batch, height, width, channels = (ops.shape(images)[axis] for axis in range(4))
    # Pooling vectorises over channels, and a mask has one: laid out as a single image with
    # `batch * channels` channels, (1, height, width, batch * channels), the same pooling runs
    # several times faster. Every pixel keeps its own window, so the values are unchanged.
    images = ops.reshape(ops.transpose(images, (1, 2, 0, 3)), (1, height, width, -1))
    eroded = _soft_erode(images)
    skeleton = ops.relu(images - _soft_dilate(eroded))
    for _ in range(iterations):
        # Each erosion is reused: it is the next step's image.
        images, eroded = eroded, _soft_erode(eroded)
        delta = ops.relu(images - _soft_dilate(eroded))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    skeleton = ops.reshape(skeleton, (height, width, batch, channels))
    return ops.transpose(skeleton, (2, 0, 1, 3))


def connectivity_penalty(y_true, y_pred, iterations=5, smooth=1.0):
    """Per-sample soft clDice loss (Shit et al., CVPR 2021, https://arxiv.org/abs/2003.07311).

    `1 - 2 Tprec Tsens / (Tprec + Tsens)` with `Tprec = |S(p) y| / |S(p)|` (how much of the
    predicted skeleton lies inside the truth) and `Tsens = |S(y) p| / |S(y)|` (how much of the
    true skeleton the prediction covers). A speck is its own skeleton and lies outside the
    truth, so it lowers Tprec; a thin part broken in two leaves part of the true skeleton
    uncovered, so it lowers Tsens. Shifting an edge by a pixel moves neither skeleton out of
    the other mask, so it costs almost nothing: exactly the errors MSE cannot tell apart.
    """
    y_true, y_pred = _prepare(y_true, y_pred)
    skeleton_pred = soft_skeleton(y_pred, iterations)
    skeleton_true = soft_skeleton(y_true, iterations)
    precision = (ops.sum(skeleton_pred * y_true, axis=_SPATIAL) + smooth) / (
        ops.sum(skeleton_pred, axis=_SPATIAL) + smooth
    )
    sensitivity = (ops.sum(skeleton_true * y_pred, axis=_SPATIAL) + smooth) / (
        ops.sum(skeleton_true, axis=_SPATIAL) + smooth
    )
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)


@keras.saving.register_keras_serializable(package="segment")
class FocalLoss(keras.losses.Loss):
    """The article's focal loss for probabilities, one value per sample.

    For binary targets it equals `keras.losses.BinaryFocalCrossentropy(
    apply_class_balancing=True, alpha=alpha, gamma=gamma)`.

    Args:
        alpha: weight of the foreground term (background gets `1 - alpha`). Defaults to `0.25`.
        gamma: focusing exponent. Defaults to `2.0`.
    """

    def __init__(self, alpha=0.25, gamma=2.0, name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return _focal(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


def focal_loss(alpha=0.25, gamma=2.0):
    """The article's factory: `focal_loss(alpha, gamma)` returns the loss to compile with."""
    return FocalLoss(alpha=alpha, gamma=gamma)


@keras.saving.register_keras_serializable(package="segment")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss, one value per sample (Milletari et al. 2016, V-Net).

    Args:
        smooth: added to numerator and denominator so empty masks give 0 loss. Defaults to 1.
    """

    def __init__(self, smooth=1.0, name="dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return dice_loss(y_true, y_pred, self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="segment")
class CompositeLoss(keras.losses.Loss):
    """MSE plus a penalty against speckled, "snowflake-like" output (the article's idea).

    ```
    loss = mse_weight * MSE(y, p)
         + overlap_weight * (1 - soft Dice(y, p))                # dice_loss
         + smooth_weight * max(0, TV(p) - TV(y)) / pixels        # total_variation_excess
         + connect_weight * clDice(y, p)                         # connectivity_penalty
    ```

    Why these terms:

    - Total variation measured relative to the target (not TV of the prediction alone, which
      would also fight the true outlines and shrink small objects): a pixel-wide speck or
      pinhole adds its full perimeter of 4, a blurred or slightly shifted true edge adds
      nothing. So at equal MSE it separates exactly the errors MSE cannot: 16 isolated wrong
      pixels cost 64 / pixels, 16 pixels shifting an edge cost 0. This is the article's
      penalty: 0s and 1s each stay together.
    - Soft Dice keeps MSE from settling on "everything is background". MSE through a sigmoid
      gives a confidently wrong pixel almost no gradient (`2 (p - y) p (1 - p)`), and on
      photographs where the object is 15% of the pixels, momentum SGD at a useful rate drove
      every pixel to background within the first epoch and never recovered. Dice is
      normalised by the object's own size, so the missed object keeps pulling. Measured on
      real photographs (docs/experiments.md, "Losses"): adding it raised IoU by 0.05 at equal
      steps and stopped the collapse.
    - Soft clDice (Shit et al. 2021) scores topology through soft skeletons and keeps thin
      parts connected. It is off by default: on photographs of compact objects it cost IoU,
      it made high-rate SGD collapse, and its soft skeleton makes a training step about 35%
      slower; `connect_weight=0.2` (`--loss composite_cldice`) brings it back for thin,
      tubular structures.

    Boundary-distance weighting (Kervadec et al. 2019) was considered and not used: it weights
    errors by their distance to the true boundary, which punishes far-away specks but needs a
    distance map per target and still scores a cluster of specks like one blob of equal area.

    Args:
        mse_weight: weight of the pixel-wise MSE. Defaults to `1.0`.
        smooth_weight: weight of the total-variation excess. Defaults to `2.0`: at 0.2 the
            term put about a twentieth of Dice's cost on a small speck and barely acted;
            at 2.0, on real photographs (docs/experiments.md), it cut spurious parts
            from 0.75 to 0.28 per image and holes from 0.61 to 0.23 at equal IoU (3 seeds);
            at 6.0 it held the prediction flat and nothing was learnt.
        connect_weight: weight of the soft clDice term. Defaults to `0.0`.
        skeleton_iterations: erosion steps of the soft skeleton. Defaults to `5`.
        overlap_weight: weight of the soft Dice loss. Defaults to `1.0`.
    """

    def __init__(
        self,
        mse_weight=1.0,
        smooth_weight=2.0,
        connect_weight=0.0,
        skeleton_iterations=5,
        overlap_weight=1.0,
        name="composite_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.mse_weight = float(mse_weight)
        self.overlap_weight = float(overlap_weight)
        self.smooth_weight = float(smooth_weight)
        self.connect_weight = float(connect_weight)
        self.skeleton_iterations = int(skeleton_iterations)

    def call(self, y_true, y_pred):
        loss = self.mse_weight * mean_squared_error(y_true, y_pred)
        if self.overlap_weight:
            loss = loss + self.overlap_weight * dice_loss(y_true, y_pred)
        if self.smooth_weight:
            loss = loss + self.smooth_weight * total_variation_excess(y_true, y_pred)
        if self.connect_weight:
            loss = loss + self.connect_weight * connectivity_penalty(
                y_true, y_pred, self.skeleton_iterations
            )
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "mse_weight": self.mse_weight,
            "overlap_weight": self.overlap_weight,
            "smooth_weight": self.smooth_weight,
            "connect_weight": self.connect_weight,
            "skeleton_iterations": self.skeleton_iterations,
        }


# name -> factory returning a fresh loss; the names are what `--loss` accepts.
LOSSES = {
    "mse": lambda: mean_squared_error,
    "bce": lambda: binary_crossentropy,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "fourth_power": lambda: fourth_power_error,
    "mse_tv": lambda: CompositeLoss(overlap_weight=0.0, name="mse_tv"),
    "mse_dice": lambda: CompositeLoss(smooth_weight=0.0, name="mse_dice"),
    "composite": CompositeLoss,
    "composite_cldice": lambda: CompositeLoss(connect_weight=0.2, name="composite_cldice"),
}
