"""The stock Keras approach the project's recipe is measured against, written as a user would.

A plain U-Net: per level two (Conv 3x3 - BatchNormalization - ReLU), max-pooling on the way
down and transposed convolutions on the way up, 16 filters at full resolution doubling per
level, 4 levels; trained with Adam (1e-3) and binary cross-entropy through the stock
`keras.Model.fit`, on whole images squashed to 128x128 with random flips; predicted at
128x128 and resized back to the image's size. Nothing here uses the project's custom pieces,
so it is the fair "what you would write with stock Keras" anchor of `scripts/benchmark_real.py`.
"""

import time

import cv2
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from segment.data import batched_dataset, read_pair, sample_rng
from segment.imageio import scale_image

__all__ = ["PLAIN_SIZE", "build_plain_unet", "plain_segmenter", "train_plain_unet"]

PLAIN_SIZE = 128  # the plain recipe's one input size: every image is squashed to it


def build_plain_unet(*, depth=4, base_filters=16):
    """The plain U-Net: `(batch, H, W, 3)` in [0, 1] -> sigmoid `(batch, H, W, 1)`.

    Args:
        depth: number of 2x down-samplings. Defaults to `4`.
        base_filters: filters at full resolution, doubling per level. Defaults to `16`.
    """

    def block(x, filters):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        return x

    inputs = keras.Input((None, None, 3))
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, base_filters * 2**level)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        x = keras.layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = block(keras.layers.Concatenate()([x, skips[level]]), base_filters * 2**level)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="plain_unet")


class _Deadline(keras.callbacks.Callback):
    """Stops `fit` once the wall clock passes `deadline` (a `time.perf_counter()` value)."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() >= self.deadline:
            self.model.stop_training = True


def _squash(image):
    return scale_image(image, (PLAIN_SIZE, PLAIN_SIZE))


def train_plain_unet(pairs, *, minutes, batch_size=16, seed=0, threshold=None, verbose=0):
    """Train the plain U-Net on image/mask files for a wall-clock budget.

    The budget counts everything from reading the files on, as `segment.training.train`
    counts its own.

    Args:
        pairs: `(image_path, mask_path)` tuples.
        minutes: wall-clock budget.
        batch_size: images per step. Defaults to 16.
        seed: seed of the weights, the shuffling and the flips. Defaults to 0.
        threshold: passed to `read_mask` for multi-valued masks. Defaults to None.
        verbose: Keras progress setting. Defaults to 0.

    Returns:
        `(model, info)`: the trained `keras.Model` and `{"steps": ..., "seconds": ...}`.
    """
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    images, masks = [], []
    for image_path, mask_path in tqdm(pairs, desc="reading", disable=None):
        image, mask = read_pair(image_path, mask_path, threshold=threshold)
        images.append(np.round(_squash(image) * 255).astype(np.uint8))
        masks.append(scale_image(mask.astype(np.uint8), (PLAIN_SIZE, PLAIN_SIZE), mask=True))
    images, masks = np.stack(images), np.stack(masks)[..., None]

    def sample(position):
        rng = sample_rng(seed, position)
        epoch, offset = divmod(position, len(images))
        index = np.random.default_rng([seed, epoch, 1]).permutation(len(images))[offset]
        image, mask = images[index], masks[index]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        return image.astype(np.float32) / 255, mask.astype(np.float32)

    def batch(positions):
        samples = [sample(int(position)) for position in positions]
        return tuple(np.stack(part) for part in zip(*samples))

    # The same parallel stream as our recipe's, so both runs end their `fit` alike.
    dataset = batched_dataset(
        batch, tf.data.Dataset.counter(), shape=(PLAIN_SIZE, PLAIN_SIZE),
        batch_size=batch_size, drop_remainder=True,
    )
    model = build_plain_unet()
    model.compile(keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    deadline = started + minutes * 60
    steps_per_epoch = max(1, len(images) // batch_size)
    model.fit(
        dataset,
        epochs=1_000_000,  # until the deadline
        steps_per_epoch=steps_per_epoch,
        callbacks=[_Deadline(deadline)],
        shuffle=False,  # the dataset shuffles itself
        verbose=verbose,
    )
    steps = int(model.optimizer.iterations.numpy())
    return model, {"steps": steps, "seconds": round(time.perf_counter() - started, 1)}


def plain_segmenter(model, *, threshold=0.5):
    """The plain U-Net as a segmenter, `image -> bool mask`: squashed to 128x128, predicted,
    and the probability resized back to the image's size."""

    def segment(image):
        height, width = image.shape[:2]
        probability = np.asarray(model.predict_on_batch(_squash(image)[None]))[0, :, :, 0]
        probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
        return probability > threshold

    return segment
