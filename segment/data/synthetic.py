"""Synthetic samples: one scene and its exact mask per seeded generator, then camera-like
degradations."""

import functools

import cv2
import numpy as np

from segment.data.drawing import distinct_colour, draw_appearance, object_pixels
from segment.data.presets import Mixture, generator_config
from segment.imageio import size_hw

__all__ = [
    "add_gaussian_noise", "add_salt_and_pepper", "DATASET_STREAM", "make_sample", "sample_rng",
    "scale_contrast", "synthetic_arrays", "synthetic_sequence",
]


# Datasets written to disk draw from their own stream, so a folder generated with seed `s`
# never repeats the images a training run with seed `s` sees on the fly.
DATASET_STREAM = 1


def sample_rng(seed, index, stream=0):
    """The random generator of sample `index` in the stream of `seed` (0: training streams)."""
    return np.random.default_rng([seed, index] if stream == 0 else [seed, index, stream])


def _illumination_gain(rng, shape, strength):
    """A smooth (H, W) gain within 1 +- strength: a linear ramp plus a soft bright or dark spot."""
    rows = np.linspace(-1, 1, shape[0], dtype=np.float32)
    cols = np.linspace(-1, 1, shape[1], dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    centre, spread = rng.uniform(-1, 1, 2), rng.uniform(0.3, 1.0)
    ramp_weight = rng.uniform(0, 1)
    spot_weight = (1 - ramp_weight) * rng.choice([-1.0, 1.0])
    # Both parts are separable, so the field is built from 1-D profiles (cheap at any size).
    ramp_scale = np.float32(strength * ramp_weight / np.sqrt(2))  # the ramp peaks at sqrt(2)
    ramp = (1 + ramp_scale * np.sin(angle) * rows)[:, None] + (ramp_scale * np.cos(angle) * cols)[
        None, :
    ]
    spot_rows = np.float32(strength * spot_weight) * np.exp(-((rows - centre[0]) ** 2) / spread)
    spot = np.outer(spot_rows, np.exp(-((cols - centre[1]) ** 2) / spread))
    return (ramp + spot).astype(np.float32)


@functools.cache
def _noise_bank():
    """A fixed field of standard normal noise; windows of it are ~40x cheaper than fresh draws."""
    return np.random.default_rng(0).standard_normal((512, 512, 3), dtype=np.float32)


def _gaussian_noise(rng, shape):
    """Standard normal (H, W, 3) noise: a random window of the bank (tiled for huge images)."""
    bank = _noise_bank()
    if shape[0] > bank.shape[0] or shape[1] > bank.shape[1]:
        bank = np.tile(bank, (shape[0] // bank.shape[0] + 1, shape[1] // bank.shape[1] + 1, 1))
    top = rng.integers(bank.shape[0] - shape[0] + 1)
    left = rng.integers(bank.shape[1] - shape[1] + 1)
    return bank[top : top + shape[0], left : left + shape[1]]


def _degrade(rng, image, config):
    """Camera-like degradations, in the order a camera applies them: light, optics, sensor."""
    shape = image.shape[:2]
    strength = rng.uniform(0, config.illumination)
    if strength > 0:
        image = cv2.multiply(image, cv2.merge([_illumination_gain(rng, shape, strength)] * 3))
    image = scale_contrast(image, rng.uniform(*config.contrast))
    sigma = rng.uniform(*config.blur_sigma)
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    image = add_gaussian_noise(rng, image, rng.uniform(*config.noise_std))
    image = add_salt_and_pepper(rng, image, rng.uniform(*config.salt_pepper))
    image = np.clip(image, 0, 1, out=image)
    if config.jpeg_quality[0] < 100:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        if quality < 100:
            image = _jpeg(image, quality)
    return image


def scale_contrast(image, factor):
    """`image` with its contrast scaled by `factor` around its mean (below 1 washes it out)."""
    factor = np.float32(factor)
    return image * factor + image.mean() * (1 - factor)


def add_gaussian_noise(rng, image, sigma):
    """`image` (float32, modified in place) plus Gaussian noise of standard deviation `sigma`,
    independent per pixel and channel; values are not clipped."""
    if sigma > 0:
        image += _gaussian_noise(rng, image.shape[:2]) * np.float32(sigma)
    return image


def add_salt_and_pepper(rng, image, fraction):
    """`image` (float32, modified in place) with about `fraction` of its pixels set to pure
    black or white (impulse noise)."""
    if fraction > 0:
        pixels = image.shape[0] * image.shape[1]
        hits = rng.integers(pixels, size=rng.binomial(pixels, fraction))
        image.reshape(-1, 3)[hits] = rng.integers(2, size=(hits.size, 1)).astype(np.float32)
    return image


def _jpeg(image, quality):
    """`image` after a round trip through JPEG at `quality` (blocking, ringing, colour bleed)."""
    pixels = cv2.convertScaleAbs(image, alpha=255.0)
    _, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255


def _backdrop(rng, size, config):
    """`(config, shape, background colour, background)` every scene starts from: a Mixture's
    part drawn first, then the background's colour and surface."""
    shape = size_hw(size)
    if isinstance(config, Mixture):
        config = config.pick(rng)
    colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    return config, shape, colour, draw_appearance(rng, shape, colour, config,
                                                  image_side=max(shape))


def make_sample(rng, size, config):
    """Draw one synthetic image and its exact mask.

    Args:
        rng: a `np.random.Generator`; the sample is a pure function of its state.
        size: image side, or `(height, width)`.
        config: a `GeneratorConfig`, or a `Mixture` to draw one from.

    Returns:
        `(image, mask)`: float32 `(height, width, 3)` in [0, 1] and float32 `(height, width, 1)`
        in {0, 1}, the union of the drawn objects (ring holes are background).
    """
    config, shape, background, image = _backdrop(rng, size, config)
    side = max(shape)
    mask = np.zeros((*shape, 1), dtype=np.float32)
    for _ in range(rng.integers(config.object_count[0], config.object_count[1] + 1)):
        rows, cols = object_pixels(rng, shape, config)
        if rows.size == 0:
            continue
        # The surface only covers the object's bounding box: most objects are small.
        top, left = rows.min(), cols.min()
        colour = distinct_colour(rng, background, config.color_distance)
        box = (rows.max() - top + 1, cols.max() - left + 1)
        image[rows, cols] = draw_appearance(rng, box, colour, config, image_side=side)[
            rows - top, cols - left
        ]
        mask[rows, cols] = 1
    return _degrade(rng, image, config), mask


def synthetic_sequence(rng, frames, size, config):
    """The frames of a short video: one object moving in a straight line over one background,
    each frame with its own sensor noise. Frames of one sequence are near-copies of each other,
    as a video's are (`segment.data.groups`).

    Args:
        rng: a `np.random.Generator`; the sequence is a pure function of its state.
        frames: number of frames.
        size: image side, or `(height, width)`.
        config: a `GeneratorConfig` (a `Mixture` draws one).

    Returns:
        `(images, masks)` as for `synthetic_arrays`, `frames` long.
    """
    config, shape, background_colour, background = _backdrop(rng, size, config)
    side = max(shape)
    rows, cols = object_pixels(rng, shape, config)
    while rows.size == 0:
        rows, cols = object_pixels(rng, shape, config)
    top, left = rows.min(), cols.min()
    box = (rows.max() - top + 1, cols.max() - left + 1)
    surface = draw_appearance(rng, box, distinct_colour(rng, background_colour,
                                                        config.color_distance), config,
                              image_side=side)[rows - top, cols - left]
    velocity = rng.uniform(-1, 1, 2) * min(shape) / (8 * max(frames, 1))  # an eighth, in all
    images, masks = [], []
    for frame in range(frames):
        shift = np.round(velocity * frame).astype(int)
        moved_rows, moved_cols = rows + shift[0], cols + shift[1]
        inside = ((moved_rows >= 0) & (moved_rows < shape[0]) & (moved_cols >= 0)
                  & (moved_cols < shape[1]))
        image = background.copy()
        mask = np.zeros((*shape, 1), dtype=np.float32)
        image[moved_rows[inside], moved_cols[inside]] = surface[inside]
        mask[moved_rows[inside], moved_cols[inside]] = 1
        image = add_gaussian_noise(rng, image, 0.01)
        images.append(np.clip(image, 0, 1, out=image))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def synthetic_arrays(count, *, size=128, difficulty="medium", seed=0, stream=0, **overrides):
    """Generate `count` samples in memory.

    Args:
        count: number of samples.
        size: image side, or `(height, width)`. Defaults to 128.
        difficulty: preset name. Defaults to `"medium"`.
        seed: stream seed; sample `i` uses `sample_rng(seed, i, stream)`. Defaults to 0.
        stream: 0 for the training streams, `DATASET_STREAM` for what `generate_data.py`
            writes. Defaults to 0.
        **overrides: generator settings replacing the preset's (see `GeneratorConfig`).

    Returns:
        `(images, masks)`: float32 `(count, height, width, 3)` and `(count, height, width, 1)`.
    """
    config = generator_config(difficulty, **overrides)
    return stack_samples(
        [make_sample(sample_rng(seed, index, stream), size, config) for index in range(count)]
    )


def stack_samples(samples):
    images, masks = zip(*samples)
    return np.stack(images), np.stack(masks)

