"""Training data: a synthetic shape generator, an image/mask folder reader and tf.data pipelines.

Synthetic samples are drawn with `skimage.draw`: several possibly overlapping objects (disks,
ellipses, rotated rectangles, triangles, stars, irregular polygons, rings, thin bars) whose
appearance (flat colour, gradient or a real texture from `skimage.data`) differs from the
background's, then degraded by uneven illumination, low contrast, blur and noise. The mask is
exactly the union of the drawn objects. Sample `i` of seed `s` comes from its own generator,
`np.random.default_rng([s, i])`, so it is the same on any machine, in any order, at any degree
of parallelism.

Image/mask folders follow `DIR/images/<stem>.<ext>` + `DIR/masks/<stem>.png`, optionally split
into `train/`, `val/`, `test/`. Every problem with the files raises `DataError` naming them.
"""

import dataclasses
import functools
import os
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import skimage.draw
import tensorflow as tf
from tqdm import tqdm

from segment.imageio import (
    DataError,
    is_image_file,
    read_image,
    read_mask,
    scale_image,
    scaled_shape,
    write_png,
)

__all__ = [
    "DIFFICULTIES",
    "MIXTURES",
    "Mixture",
    "PRESETS",
    "SHAPE_KINDS",
    "APPEARANCE_KINDS",
    "SPLIT_NAMES",
    "add_gaussian_noise",
    "add_salt_and_pepper",
    "batched_dataset",
    "scale_contrast",
    "GeneratorConfig",
    "dataset_splits",
    "find_pairs",
    "folder_dataset",
    "foreground_fraction",
    "generator_config",
    "load_pairs",
    "read_pair",
    "make_sample",
    "sample_rng",
    "DATASET_STREAM",
    "split_pairs",
    "synthetic_arrays",
    "stream_positions",
    "synthetic_dataset",
    "write_folder",
]

SHAPE_KINDS = (
    "disk", "ellipse", "rectangle", "triangle", "star", "polygon", "ring", "bar",
    "silhouette", "curve", "blob", "holed",
)
APPEARANCE_KINDS = ("flat", "gradient", "texture", "photo", "pattern")
SPLIT_NAMES = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Generator settings


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Every knob of the synthetic generator; `(low, high)` pairs are sampled uniformly per image.

    The defaults are the `medium` preset. Sizes are fractions of the image's shorter side, so a
    config means the same at any resolution; blur is in pixels.
    """

    # Objects per image, inclusive. Several objects make the model segment a union, not "the blob".
    object_count: tuple[int, int] = (1, 5)
    # Relative frequency of each shape kind (need not sum to 1); kinds left out are never drawn.
    shape_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "disk": 1.0,
            "ellipse": 1.0,
            "rectangle": 1.0,
            "triangle": 1.0,
            "star": 1.0,
            "polygon": 1.0,
            "ring": 1.0,
            "bar": 0.5,
        }
    )
    # Object radius as a fraction of the shorter side; a 128 px image gets radii of ~10-32 px.
    object_size: tuple[float, float] = (0.08, 0.25)
    # Relative frequency of each appearance source, for the background and each object alike.
    appearance_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"flat": 0.2, "gradient": 0.3, "texture": 0.5}
    )
    # RGB distance between an object's mean colour and the background's (at most sqrt(3)).
    # This is what keeps the foreground learnable: it always differs from the background.
    color_distance: tuple[float, float] = (0.45, 0.9)
    # Largest colour change across a gradient (RGB norm from one side to the other). Kept
    # below the smallest colour distance, or a gradient can make an object vanish locally.
    gradient_strength: float = 0.3
    # Standard deviation a texture adds around its mean colour.
    texture_strength: tuple[float, float] = (0.03, 0.1)
    # Multiplicative illumination field 1 +- this at most (a ramp and a soft spot); 0 = even.
    illumination: float = 0.15
    # Contrast scale around the image mean; below 1 washes the image out.
    contrast: tuple[float, float] = (0.8, 1.0)
    # Gaussian blur sigma in pixels; 0 = sharp.
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    # Standard deviation of additive Gaussian noise, in [0, 1] intensity units.
    noise_std: tuple[float, float] = (0.0, 0.04)
    # Fraction of pixels set to pure black or white (salt and pepper).
    salt_pepper: tuple[float, float] = (0.0, 0.003)
    # JPEG quality the finished image is compressed at, as a camera or a web page would;
    # 100 leaves it uncompressed.
    jpeg_quality: tuple[int, int] = (100, 100)

    def __post_init__(self):
        for name, weights, known in (
            ("shape_weights", self.shape_weights, SHAPE_KINDS),
            ("appearance_weights", self.appearance_weights, APPEARANCE_KINDS),
        ):
            unknown = sorted(set(weights) - set(known))
            if unknown:
                raise ValueError(f"{name}: unknown kinds {unknown}; known: {list(known)}")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"{name}: weights must be >= 0 with a positive sum, got {weights}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple) and not (len(value) == 2 and 0 <= value[0] <= value[1]):
                raise ValueError(
                    f"{field.name}: expected (low, high) with 0 <= low <= high, got {value}"
                )
        if self.object_size[0] <= 0:
            raise ValueError(f"object_size: must be > 0, got {self.object_size}")


PRESETS = {
    # Flat, well separated colours, a few large objects, no degradation.
    "easy": GeneratorConfig(
        object_count=(1, 3),
        object_size=(0.12, 0.3),
        appearance_weights={"flat": 1.0},
        color_distance=(0.4, 0.9),
        illumination=0.0,
        contrast=(1.0, 1.0),
        blur_sigma=(0.0, 0.0),
        noise_std=(0.0, 0.0),
        salt_pepper=(0.0, 0.0),
    ),
    "medium": GeneratorConfig(),
    # Many small objects, close colours, strong textures, washed out, blurred and noisy.
    "hard": GeneratorConfig(
        object_count=(2, 8),
        object_size=(0.05, 0.25),
        appearance_weights={"flat": 0.1, "gradient": 0.3, "texture": 0.6},
        color_distance=(0.08, 0.35),
        gradient_strength=0.6,
        texture_strength=(0.06, 0.2),
        illumination=0.45,
        contrast=(0.4, 0.9),
        blur_sigma=(0.3, 1.5),
        noise_std=(0.02, 0.1),
        salt_pepper=(0.0, 0.02),
    ),
    # Everything a user's picture may hold on top of "medium": every shape family (animal-like
    # silhouettes, thin curves, blobs, objects with holes), photos of things and procedural
    # patterns as surfaces, more and larger objects, blur and JPEG compression.
    "varied": GeneratorConfig(
        object_count=(1, 6),
        object_size=(0.06, 0.35),
        shape_weights=dict.fromkeys(SHAPE_KINDS, 1.0),
        appearance_weights={"flat": 0.2, "gradient": 0.2, "texture": 0.25, "photo": 0.2,
                            "pattern": 0.15},
        color_distance=(0.3, 0.9),
        texture_strength=(0.03, 0.15),
        illumination=0.3,
        contrast=(0.6, 1.0),
        blur_sigma=(0.0, 1.5),
        noise_std=(0.0, 0.05),
        salt_pepper=(0.0, 0.005),
        jpeg_quality=(30, 100),
    ),
    # "varied" scenes through a poor sensor: strong Gaussian and impulse noise.
    "noisy": GeneratorConfig(
        object_count=(1, 6),
        object_size=(0.06, 0.35),
        shape_weights=dict.fromkeys(SHAPE_KINDS, 1.0),
        appearance_weights={"flat": 0.2, "gradient": 0.2, "texture": 0.25, "photo": 0.2,
                            "pattern": 0.15},
        color_distance=(0.35, 0.9),
        texture_strength=(0.03, 0.15),
        illumination=0.3,
        contrast=(0.6, 1.0),
        blur_sigma=(0.0, 1.2),
        noise_std=(0.05, 0.22),
        salt_pepper=(0.0, 0.1),
        jpeg_quality=(40, 100),
    ),
}


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Generator settings for a stream whose every sample comes from one of several presets,
    drawn by weight: `{preset name: (weight, GeneratorConfig)}`."""

    parts: dict[str, tuple[float, GeneratorConfig]]

    def pick(self, rng):
        """The settings of one sample, drawn with `rng`."""
        return self.parts[_choose(rng, {name: weight for name, (weight, _) in self.parts.items()})][1]


# Streams mixing presets, by weight. "mixed" is what the default model trains on: clean and
# noisy, plain and textured, easy and hard scenes in one stream.
MIXTURES = {
    "mixed": {"easy": 1.0, "medium": 2.0, "varied": 3.0, "hard": 2.0, "noisy": 3.0},
}
DIFFICULTIES = (*PRESETS, *MIXTURES)


def generator_config(difficulty="medium", **overrides):
    """A preset (or a mixture of presets) with some knobs replaced.

    Args:
        difficulty: a preset (`"easy"`, `"medium"`, `"hard"`, `"varied"`, `"noisy"`) or a
            mixture of them (`"mixed"`). Defaults to `"medium"`.
        **overrides: `GeneratorConfig` fields to replace, e.g. `noise_std=(0, 0)`.

    Returns:
        A new `GeneratorConfig`, or a `Mixture` of them (the overrides apply to every part).

    Raises:
        ValueError: unknown difficulty, unknown knob or invalid value.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"Unknown difficulty {difficulty!r}; expected one of {list(DIFFICULTIES)}")
    known = {field.name for field in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown generator settings {unknown}; known: {sorted(known)}")
    # JSON and argparse give lists; the dataclass validates (low, high) tuples.
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if difficulty in MIXTURES:
        return Mixture({
            name: (weight, dataclasses.replace(PRESETS[name], **overrides))
            for name, weight in MIXTURES[difficulty].items()
        })
    return dataclasses.replace(PRESETS[difficulty], **overrides)


# --------------------------------------------------------------------------------------------
# Synthetic samples

# Photos shipped inside scikit-image (no download). "texture" draws from photos that look like
# surfaces; "photo" from photos of things (coins, a camera, a rocket, a page of text...), whose
# own discs, bars and letters are unlabelled structure the model must learn to leave alone.
_TEXTURE_SOURCES = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
)
_PHOTO_SOURCES = (
    "astronaut", "camera", "cell", "clock", "coffee", "coins", "page", "retina", "rocket", "text",
)
_TEXTURE_SIDE = (
    256  # bank resolution: crops of 30-100% of it cover 128 px images without much upscaling
)


def _square_bank(names):
    """Zero-mean, unit-std float32 (side, side, 3) squares of scikit-image photos."""
    bank = []
    for name in names:
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        height, width = photo.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = photo[top : top + side, left : left + side, :3].astype(np.float32)
        square = cv2.resize(square, (_TEXTURE_SIDE, _TEXTURE_SIDE), interpolation=cv2.INTER_AREA)
        bank.append((square - square.mean()) / max(float(square.std()), 1e-6))
    return tuple(bank)


@functools.cache
def _texture_bank():
    """The surface photos, built once per process."""
    return _square_bank(_TEXTURE_SOURCES)


@functools.cache
def _photo_bank():
    """The photos of things, built once per process."""
    return _square_bank(_PHOTO_SOURCES)


def _pattern(rng, shape):
    """A zero-mean, unit-std procedural (H, W, 3) pattern: clouds, stripes or a checkerboard,
    in one colour direction or per channel."""
    height, width = shape
    kind = rng.integers(3)
    if kind == 0:  # clouds: octaves of smooth noise
        field = np.zeros(shape, np.float32)
        for octave in range(rng.integers(2, 5)):
            cells = 2 ** (octave + 2)
            noise = rng.standard_normal((cells, cells)).astype(np.float32)
            field += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) / 2**octave
    else:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.04, 0.3) * max(shape)
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        along = (rows * np.sin(angle) + cols * np.cos(angle)) * np.float32(2 * np.pi / period)
        if kind == 1:  # stripes
            field = np.sin(along)
        else:  # checkerboard
            across = (cols * np.sin(angle) - rows * np.cos(angle)) * np.float32(2 * np.pi / period)
            field = np.sign(np.sin(along) * np.sin(across))
    field = ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)
    direction = rng.normal(size=3)
    direction *= np.sqrt(3) / np.linalg.norm(direction)
    return cv2.merge([field * np.float32(channel) for channel in direction])


def _bank_crop(rng, bank, shape, image_side):
    """A random crop of a random bank square at a random scale, flipped and transposed: one
    photo yields many textures. The whole image spans 30-100% of the bank square."""
    height, width = shape
    texture = bank[rng.integers(len(bank))]
    bank_pixels_per_pixel = rng.uniform(0.3, 1.0) * _TEXTURE_SIDE / image_side
    transpose = rng.random() < 0.5
    out_h, out_w = (width, height) if transpose else (height, width)
    crop_h, crop_w = (
        min(_TEXTURE_SIDE, max(2, round(side * bank_pixels_per_pixel))) for side in (out_h, out_w)
    )
    top = rng.integers(_TEXTURE_SIDE - crop_h + 1)
    left = rng.integers(_TEXTURE_SIDE - crop_w + 1)
    patch = cv2.resize(texture[top : top + crop_h, left : left + crop_w], (out_w, out_h))
    if transpose:
        patch = patch.transpose(1, 0, 2)
    flip_rows, flip_cols = rng.random(2) < 0.5
    return patch[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]


# Datasets written to disk draw from their own stream, so a folder generated with seed `s`
# never repeats the images a training run with seed `s` sees on the fly.
DATASET_STREAM = 1


def sample_rng(seed, index, stream=0):
    """The random generator of sample `index` in the stream of `seed` (0: training streams)."""
    return np.random.default_rng([seed, index] if stream == 0 else [seed, index, stream])


def _size_hw(size):
    height, width = (size, size) if np.isscalar(size) else size
    if height < 8 or width < 8:
        raise ValueError(f"Image size must be at least 8x8, got {size}")
    return int(height), int(width)


def _choose(rng, weights):
    """A key of `weights` drawn with probability proportional to its value."""
    cumulative = np.cumsum(list(weights.values()))
    return list(weights)[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")]


def _distinct_colour(rng, reference, distance_range):
    """A colour at a random distance within `distance_range` of `reference`, inside [0, 1]^3."""
    distance = rng.uniform(*distance_range)
    for _ in range(20):
        direction = rng.normal(size=3)
        colour = reference + distance * direction / np.linalg.norm(direction)
        if np.all((colour >= 0) & (colour <= 1)):
            return colour.astype(np.float32)
    # A reference near a corner with a large distance: head for the far corner instead.
    direction = (reference < 0.5) - reference
    return np.clip(reference + distance * direction / np.linalg.norm(direction), 0, 1).astype(
        np.float32
    )


def _plus_colour(pattern, colour):
    """`pattern + colour` for an (H, W, 3) pattern; cv2 is ~10x faster than numpy broadcasting."""
    return cv2.add(pattern, (*colour.tolist(), 0.0))


def _appearance(rng, shape, colour, config, *, image_side):
    """An (H, W, 3) float32 surface: `colour` plus a zero-mean flat, gradient, texture (surface
    photo), photo (of things) or procedural pattern.

    `image_side` (the longer side of the whole image) sets the texture scale, so that an object's
    texture has the same grain as a background's.
    """
    height, width = shape
    kind = _choose(rng, config.appearance_weights)
    if kind == "flat":
        return np.tile(colour, (height, width, 1))
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        step = rng.normal(size=3)
        step *= rng.uniform(0, config.gradient_strength) / np.linalg.norm(step)
        rows = np.linspace(-0.5, 0.5, height, dtype=np.float32) * np.float32(np.sin(angle))
        cols = np.linspace(-0.5, 0.5, width, dtype=np.float32) * np.float32(np.cos(angle))
        ramp = rows[:, None] + cols[None, :]
        return _plus_colour(
            cv2.merge([ramp * np.float32(channel_step) for channel_step in step]), colour
        )
    if kind == "pattern":
        patch = _pattern(rng, shape)
    else:
        patch = _bank_crop(
            rng, _texture_bank() if kind == "texture" else _photo_bank(), shape, image_side
        )
    return _plus_colour(patch * np.float32(rng.uniform(*config.texture_strength)), colour)


def _polygon(shape, centre, radii, angles):
    return skimage.draw.polygon(
        centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles), shape
    )


def _object_pixels(rng, shape, config):
    """One object of a random kind as `(rows, cols)` pixel coordinates, clipped to the image."""
    kind = _choose(rng, config.shape_weights)
    centre = rng.uniform(0, 1, 2) * shape
    radius = rng.uniform(*config.object_size) * min(shape)
    rotation = rng.uniform(0, np.pi)
    if kind == "disk":
        return skimage.draw.disk(centre, radius, shape=shape)
    if kind == "ellipse":
        return skimage.draw.ellipse(
            *centre, radius, radius * rng.uniform(0.35, 0.85), shape, rotation=rotation
        )
    if kind == "ring":
        # A concentric hole of 35-60% of the outer size: always enclosed, so it stays a hole.
        radii = np.array([radius, radius * rng.uniform(0.6, 1.0)])
        rows, cols = skimage.draw.ellipse(*centre, *radii, shape, rotation=rotation)
        # skimage.draw.ellipse's convention: rotation turns the row axis towards the columns.
        along = (rows - centre[0]) * np.cos(rotation) + (cols - centre[1]) * np.sin(rotation)
        across = (cols - centre[1]) * np.cos(rotation) - (rows - centre[0]) * np.sin(rotation)
        outside_hole = np.hypot(along / radii[0], across / radii[1]) >= rng.uniform(0.35, 0.6)
        return rows[outside_hole], cols[outside_hole]
    if kind in ("rectangle", "bar"):
        if kind == "rectangle":
            half_length, half_width = radius, radius * rng.uniform(0.4, 1.0)
        else:  # long and at least 2 px wide, so it survives blur and resizing
            half_length = radius * rng.uniform(1.0, 1.6)
            half_width = max(1.0, rng.uniform(0.015, 0.035) * min(shape))
        corners = np.arctan2(  # going round the rectangle, long axis along angle 0
            [half_width, half_width, -half_width, -half_width],
            [half_length, -half_length, -half_length, half_length],
        )
        return _polygon(shape, centre, np.hypot(half_length, half_width), corners + rotation)
    if kind == "triangle":
        angles = rotation + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.4, 0.4, 3)
        return _polygon(shape, centre, radius * rng.uniform(0.8, 1.0, 3), angles)
    if kind == "star":
        points = rng.integers(5, 9)
        angles = rotation + np.arange(2 * points) * np.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * rng.uniform(0.4, 0.6))
        return _polygon(shape, centre, radii, angles)
    if kind == "polygon":
        # Irregular, but vertices sorted by angle around the centre never self-intersect.
        vertices = rng.integers(5, 11)
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        return _polygon(shape, centre, radius * rng.uniform(0.5, 1.0, vertices), angles)
    canvas = np.zeros(shape, dtype=np.uint8)
    if kind == "silhouette":
        _draw_silhouette(rng, canvas, centre, radius, rotation)
    elif kind == "curve":
        _draw_curve(rng, canvas, centre, radius, min(shape))
    elif kind == "blob":
        _draw_blob(rng, canvas, centre, radius)
    else:  # "holed": a disc, ellipse or polygon with one to three holes punched in it
        _draw_holed(rng, canvas, centre, radius, rotation)
    return np.nonzero(canvas)


def _cv_point(row, col):
    # OpenCV takes (x, y) integer points; 4 fractional bits keep sub-pixel placement.
    return (int(round(col * 16)), int(round(row * 16)))


def _draw_ellipse(canvas, centre, axes, angle, value=1):
    """A filled ellipse: `axes` (along, across) in pixels; the first axis points along
    `(row, col) = (sin(angle), cos(angle))`."""
    cv2.ellipse(
        canvas, _cv_point(*centre), (int(round(axes[0] * 16)), int(round(axes[1] * 16))),
        np.degrees(angle), 0, 360, value, thickness=-1, lineType=cv2.LINE_8, shift=4,
    )


def _draw_path(canvas, points, thickness):
    """A thick polyline through `(row, col)` points, with round joints and ends."""
    path = np.array([_cv_point(*point) for point in points], dtype=np.int32)
    cv2.polylines(canvas, [path], False, 1, thickness=max(1, int(round(thickness))),
                  lineType=cv2.LINE_8, shift=4)


def _draw_silhouette(rng, canvas, centre, radius, rotation):
    """An animal-like outline: a body, a head on a neck, thin legs and a tail, all joined."""
    along = np.array([np.sin(rotation), np.cos(rotation)])  # (row, col) of the body's axis
    across = np.array([along[1], -along[0]])
    body = (radius, radius * rng.uniform(0.35, 0.55))
    _draw_ellipse(canvas, centre, body, rotation)
    leg_width = max(1.5, radius * rng.uniform(0.08, 0.14))
    down = across * rng.choice([-1.0, 1.0])
    for offset in np.linspace(-0.7, 0.7, rng.integers(2, 5)) + rng.uniform(-0.1, 0.1):
        hip = centre + along * offset * body[0]
        foot = hip + down * radius * rng.uniform(0.8, 1.4) + along * radius * rng.uniform(-0.2, 0.2)
        _draw_path(canvas, [hip, foot], leg_width)
    end = rng.choice([-1.0, 1.0])
    shoulder = centre + along * end * body[0] * 0.8
    head = shoulder + (along * end - down) * radius * rng.uniform(0.4, 0.7)
    _draw_path(canvas, [shoulder, head], leg_width * 1.8)
    _draw_ellipse(canvas, head, (radius * 0.3, radius * 0.18), rng.uniform(0, np.pi))
    tail_root = centre - along * end * body[0] * 0.95
    tail = [tail_root + (-along * end * t + down * t * t * rng.uniform(-0.8, 0.8)) * radius
            for t in np.linspace(0, rng.uniform(0.5, 1.0), 6)]
    _draw_path(canvas, tail, leg_width * 0.7)


def _draw_curve(rng, canvas, centre, radius, side):
    """A thin, smoothly bending band: a quadratic Bezier curve, 2 to 6% of the side wide."""
    start, control, finish = (centre + rng.uniform(-1.6, 1.6, 2) * radius for _ in range(3))
    t = np.linspace(0, 1, 24)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * finish
    _draw_path(canvas, points, max(2.0, rng.uniform(0.02, 0.06) * side))


def _draw_blob(rng, canvas, centre, radius):
    """An organic blob: smooth random noise over the object's box, thresholded; it may come
    in several parts and with holes."""
    side = max(4, int(round(2 * radius)))
    noise = cv2.resize(rng.standard_normal((5, 5)).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_CUBIC)
    rows, cols = np.mgrid[-1:1:side * 1j, -1:1:side * 1j]
    field = noise - 1.5 * (rows**2 + cols**2)  # fade out towards the box's edge
    inside = (field > np.quantile(field, rng.uniform(0.55, 0.8))).astype(np.uint8)
    top, left = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    rows, cols = np.nonzero(inside)
    rows, cols = rows + top, cols + left
    keep = (rows >= 0) & (rows < canvas.shape[0]) & (cols >= 0) & (cols < canvas.shape[1])
    canvas[rows[keep], cols[keep]] = 1


def _draw_holed(rng, canvas, centre, radius, rotation):
    """A disc, ellipse or polygon with one to three elliptical holes inside it."""
    outline = rng.integers(3)
    if outline == 0:
        _draw_ellipse(canvas, centre, (radius, radius), 0.0)
    elif outline == 1:
        _draw_ellipse(canvas, centre, (radius, radius * rng.uniform(0.6, 0.9)), rotation)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
        radii = radius * rng.uniform(0.8, 1.0, 8)
        points = [centre + r * np.array([np.sin(a), np.cos(a)]) for r, a in zip(radii, angles)]
        cv2.fillPoly(canvas, [np.array([_cv_point(*pt) for pt in points], np.int32)], 1, shift=4)
    for _ in range(rng.integers(1, 4)):
        distance, angle = rng.uniform(0, 0.45) * radius, rng.uniform(0, 2 * np.pi)
        hole = centre + distance * np.array([np.sin(angle), np.cos(angle)])
        size = radius * rng.uniform(0.12, 0.28)
        _draw_ellipse(canvas, hole, (size, size * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi), 0)


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
    shape = _size_hw(size)
    if isinstance(config, Mixture):
        config = config.pick(rng)
    side = max(shape)
    background = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    image = _appearance(rng, shape, background, config, image_side=side)
    mask = np.zeros((*shape, 1), dtype=np.float32)
    for _ in range(rng.integers(config.object_count[0], config.object_count[1] + 1)):
        rows, cols = _object_pixels(rng, shape, config)
        if rows.size == 0:
            continue
        # The surface only covers the object's bounding box: most objects are small.
        top, left = rows.min(), cols.min()
        colour = _distinct_colour(rng, background, config.color_distance)
        box = (rows.max() - top + 1, cols.max() - left + 1)
        image[rows, cols] = _appearance(rng, box, colour, config, image_side=side)[
            rows - top, cols - left
        ]
        mask[rows, cols] = 1
    return _degrade(rng, image, config), mask


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
    return _stack(
        [make_sample(sample_rng(seed, index, stream), size, config) for index in range(count)]
    )


def _stack(samples):
    images, masks = zip(*samples)
    return np.stack(images), np.stack(masks)


# Batches a stream makes at once: one per core this process may use, at most 8 (the numpy work
# holds the GIL for much of a batch, and every batch in flight is memory).
_PARALLEL_BATCHES = min(
    8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


def batched_dataset(make_batch, indices, *, shape, batch_size, drop_remainder):
    """Map batches of sample indices to `(images, masks)` batches with a numpy function.

    Each batch depends only on its indices, so parallel generation stays reproducible. A batch
    per core (at most 8) is made at once and two wait ready, with `tf.data`'s autotuner off:
    its thread sleeps up to a minute between rounds, and freeing the iterator waits for it,
    which held Keras's `fit` on returning (by 16-45 s in our runs).

    Args:
        make_batch: `positions -> (images, masks)`, float32 `(n, H, W, 3)` and `(n, H, W, 1)`.
        indices: an int64 `tf.data.Dataset` of sample positions.
        shape: `(H, W)`.
        batch_size: positions per batch.
        drop_remainder: drop a last, smaller batch (its size is then static).

    Returns:
        A `tf.data.Dataset` of `(images, masks)` batches.
    """
    batch = batch_size if drop_remainder else None

    def generate(batch_indices):
        images, masks = tf.numpy_function(
            make_batch, [batch_indices], (tf.float32, tf.float32), stateful=False
        )
        images.set_shape((batch, *shape, 3))
        masks.set_shape((batch, *shape, 1))
        return images, masks

    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        indices.batch(batch_size, drop_remainder=drop_remainder)
        .map(generate, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)
        .prefetch(2)
        .with_options(options)
    )


def stream_positions(start=0, *, batch_size, shard=None):
    """The sample positions an endless stream reads, and the rows per batch it yields.

    Unsharded: `start, start + 1, ...` in batches of `batch_size`. With `shard=(index,
    count)`, the stream is one of `count` workers that together make each global batch of
    `batch_size` samples: it yields rows `index * b` to `(index + 1) * b - 1` of every global
    batch, `b = batch_size // count`, so the workers read different samples and their batches
    side by side are exactly the unsharded stream's.

    Returns:
        `(positions, rows)`: an int64 `tf.data.Dataset` of positions and the batch size.

    Raises:
        ValueError: `batch_size` not a multiple of `count`, or `start` not a whole number of
            global batches.
    """
    if shard is None:
        return tf.data.Dataset.counter(start), batch_size
    index, count = shard
    if not 0 <= index < count or batch_size % count or start % batch_size:
        raise ValueError(
            f"Cannot take shard {index} of {count} from batches of {batch_size} starting at "
            f"sample {start}: the batch size must be a multiple of the number of workers"
        )
    rows = batch_size // count
    first = start + index * rows
    positions = tf.data.Dataset.counter().map(
        lambda i: first + (i // rows) * batch_size + i % rows
    )
    return positions, rows


def synthetic_dataset(
    *, size=128, batch_size=16, difficulty="medium", seed=0, start=0, shard=None, **overrides
):
    """An endless, parallel `tf.data` stream of synthetic batches.

    Sample `i` of the stream (batch `i // batch_size`, row `i % batch_size`) equals sample `i`
    of `synthetic_arrays` with the same arguments.

    Args:
        size: image side, or `(height, width)`. Defaults to 128.
        batch_size: samples per (global) batch. Defaults to 16.
        difficulty: preset name. Defaults to `"medium"`.
        seed: stream seed. Defaults to 0.
        start: index of the first sample, to resume a stream where it stopped. Defaults to 0.
        shard: `(index, count)`: this worker's share of every batch (`stream_positions`).
            Defaults to None (the whole stream).
        **overrides: generator settings replacing the preset's.

    Returns:
        A `tf.data.Dataset` of `(images, masks)`, float32 `(rows, height, width, 3)` and
        `(rows, height, width, 1)`, `rows = batch_size // count`.
    """
    config = generator_config(difficulty, **overrides)
    shape = _size_hw(size)

    def make_batch(indices):
        return _stack([make_sample(sample_rng(seed, int(i)), shape, config) for i in indices])

    positions, rows = stream_positions(start, batch_size=batch_size, shard=shard)
    return batched_dataset(make_batch, positions, shape=shape, batch_size=rows, drop_remainder=True)


# --------------------------------------------------------------------------------------------
# Image/mask folders


def _name_list(names, limit=5):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _image_files(folder):
    # Hidden files are skipped: editors' and macOS' "._name.png" companions are not images.
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and is_image_file(p) and not p.name.startswith(".")
    ]


def find_pairs(folder):
    """Pair `folder/images/<stem>.<ext>` with `folder/masks/<stem>.png`.

    Args:
        folder: a folder holding `images/` and `masks/`.

    Returns:
        A list of `(image_path, mask_path)`, sorted by stem.

    Raises:
        DataError: missing folders, no images, non-PNG masks, several images with one stem,
            images without masks or masks without images (the message lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    images_dir, masks_dir = folder / "images", folder / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise DataError(
                f"{folder}: missing {sub.name}/ subfolder "
                "(expected images/<name>.<png|jpg|...> and masks/<name>.png)"
            )
    images = {}
    duplicates = set()
    for path in _image_files(images_dir):
        if path.stem in images:
            duplicates.add(path.stem)
        images.setdefault(path.stem, []).append(path)
    if not images:
        raise DataError(
            f"{images_dir}: no images (expected {', '.join(('.png', '.jpg', '...'))} files)"
        )
    if duplicates:
        shown = _name_list(
            [f"{s} ({', '.join(sorted(p.name for p in images[s]))})" for s in duplicates]
        )
        raise DataError(
            f"{images_dir}: several images share a name, so the pairing is ambiguous: {shown}"
        )
    mask_files = _image_files(masks_dir)
    not_png = [p.name for p in mask_files if p.suffix.lower() != ".png"]
    if not_png:
        raise DataError(
            f"{masks_dir}: masks must be PNG (lossless) files, found {_name_list(not_png)}"
        )
    masks = {p.stem: p for p in mask_files}
    problems = []
    if lonely := images.keys() - masks.keys():
        problems.append(f"{len(lonely)} image(s) without a mask in masks/: {_name_list(lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"{len(lonely)} mask(s) without an image in images/: {_name_list(lonely)}")
    if problems:
        raise DataError(f"{folder}: " + "; ".join(problems))
    return [(images[stem][0], masks[stem]) for stem in sorted(images)]


def dataset_splits(root):
    """The image/mask folders of a dataset.

    Args:
        root: a dataset folder with `train/`, `val/` and/or `test/` image/mask folders, or an
            image/mask folder itself.

    Returns:
        `{"train": path, "val": path, "test": path}` for the splits that exist, or
        `{"all": root}` when `root` holds `images/` directly.

    Raises:
        DataError: `root` is missing or has neither form.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    splits = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if splits:
        return splits
    if (root / "images").is_dir():
        return {"all": root}
    raise DataError(
        f"{root}: expected images/ and masks/ subfolders, or train/, val/, test/ folders of them"
    )


def split_pairs(pairs, *, val_fraction=0.1, seed=0):
    """Hold out a seeded random part of `pairs` for validation.

    Args:
        pairs: a list from `find_pairs`.
        val_fraction: share of pairs held out; at least one pair when there are two or more.
            Defaults to 0.1.
        seed: shuffling seed. Defaults to 0.

    Returns:
        `(train_pairs, val_pairs)`, each in the original order.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    count = len(pairs)
    val_count = (
        min(count - 1, max(1, round(count * val_fraction)))
        if count >= 2 and val_fraction > 0
        else 0
    )
    held_out = set(np.random.default_rng(seed).permutation(count)[:val_count].tolist())
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


def read_pair(image_path, mask_path, *, threshold=None):
    """Read an image and its mask, checking they have the same size.

    Returns:
        `(image, mask)`: float32 RGB `(H, W, 3)` in [0, 1] and bool `(H, W)`.

    Raises:
        DataError: either file unreadable, a non-binary mask, or sizes that differ.
    """
    image = read_image(image_path)
    mask = read_mask(mask_path, threshold=threshold)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
    return image, mask


def foreground_fraction(pairs, *, threshold=None, limit=500):
    """The mean share of foreground pixels in the masks of `pairs` (at most `limit` of them,
    evenly spaced, so that a large folder is read quickly)."""
    step = max(1, len(pairs) // limit)
    return float(np.mean([read_mask(mask, threshold=threshold).mean() for _, mask in pairs[::step]]))


def _read_training_pair(image_path, mask_path, threshold):
    image, mask = read_pair(image_path, mask_path, threshold=threshold)
    return image, mask[..., None].astype(np.float32)


def _resize(image, mask, shape):
    """Resize an image and its `(H, W, 1)` mask to `shape` (the mask by nearest neighbour)."""
    return scale_image(image, shape), scale_image(mask, shape, mask=True)


def load_pairs(pairs, *, size=None, threshold=None):
    """Read and validate image/mask pairs.

    Args:
        pairs: `(image_path, mask_path)` tuples, e.g. from `find_pairs`.
        size: if given, resize every pair to `size` x `size`. Defaults to None (native sizes).
        threshold: passed to `read_mask` to accept multi-valued masks. Defaults to None (strict).

    Returns:
        `(images, masks)` as float32: with `size`, arrays `(N, size, size, 3)` and
        `(N, size, size, 1)`; without, lists of `(H, W, 3)` and `(H, W, 1)` arrays.

    Raises:
        DataError: an unreadable file, a non-binary mask or an image and mask of different sizes.
    """
    if not pairs:
        raise ValueError("No image/mask pairs given")
    samples = [
        _read_training_pair(image, mask, threshold)
        for image, mask in tqdm(pairs, desc="reading", disable=None)
    ]
    if size is None:
        images, masks = zip(*samples)
        return list(images), list(masks)
    return _stack([_resize(image, mask, _size_hw(size)) for image, mask in samples])


# Folder augmentation, within what photographs of the same kind of scene plausibly show: the
# whole image at 0.75-1.25x the working size, turned by up to 30 degrees about its centre,
# shifted by up to 15% of the canvas and mirrored either way; saturation and contrast x0.7-1.3,
# brightness +-0.1 and gamma 0.7-1.4, identical for every pixel.
_SCALE = (0.75, 1.25)
_ROTATION = 30.0
_SHIFT = 0.15
_SATURATION = (0.7, 1.3)
_CONTRAST = (0.7, 1.3)
_BRIGHTNESS = 0.1
_GAMMA = (0.7, 1.4)


def _place(image, mask, side):
    """An image and its `(H, W, 1)` mask scaled so the longer side is `side`, on a
    `side` x `side` canvas: top left, the rest reflect-padded, as prediction pads."""
    shape = scaled_shape(image.shape, side)
    image, mask = scale_image(image, shape), scale_image(mask, shape, mask=True)
    padding = ((0, side - shape[0]), (0, side - shape[1]), (0, 0))
    return np.pad(image, padding, mode="reflect"), np.pad(mask, padding, mode="reflect")


def _augment(rng, image, mask, side):
    """A random view of a uint8 image and its mask on a `side` x `side` float32 canvas."""
    height, width = image.shape[:2]
    scale = rng.uniform(*_SCALE) * side / max(height, width)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-_ROTATION, _ROTATION), scale)
    # Centre the image on the canvas, then shift it.
    matrix[:, 2] += side / 2 - np.array([width, height]) / 2 + rng.uniform(-_SHIFT, _SHIFT, 2) * side
    warp = dict(dsize=(side, side), borderMode=cv2.BORDER_REFLECT_101)
    image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
    mask = cv2.warpAffine(mask, matrix, flags=cv2.INTER_NEAREST, **warp)
    flip_rows, flip_cols = rng.random(2) < 0.5
    image = image[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]
    mask = mask[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]

    image = image.astype(np.float32) / 255
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * np.float32(rng.uniform(*_SATURATION))
    mean = image.mean()
    image = (image - mean) * np.float32(rng.uniform(*_CONTRAST)) + mean
    image = np.clip(image + np.float32(rng.uniform(-_BRIGHTNESS, _BRIGHTNESS)), 0, 1)
    image = image ** np.float32(rng.uniform(*_GAMMA))
    return image, mask.reshape(side, side, 1).astype(np.float32)


def folder_dataset(
    pairs, *, size, batch_size, augment=True, seed=0, repeat=True, threshold=None, start=0,
    shard=None,
):
    """A `tf.data` stream of batches from image/mask pairs, whole images at a working size.

    Every image is seen whole, scaled (keeping its aspect ratio) so that its longer side is
    `size` pixels, on a `size` x `size` canvas: exactly what prediction feeds a model trained
    at that working size. Every pair is read and validated first, so a bad file fails before
    training starts. With `repeat`, pairs are reshuffled each epoch (seeded) and the stream
    never ends; without, it is one pass in the given order, the last batch possibly smaller.

    Args:
        pairs: `(image_path, mask_path)` tuples.
        size: the working size: the longer image side, and the canvas side.
        batch_size: samples per batch.
        augment: random scale (0.75-1.25x), rotation (up to 30 degrees), shift, mirroring,
            and saturation, contrast, brightness and gamma changes, with the mask warped
            alongside; else the image at the working size, top left, reflect-padded.
            Defaults to True.
        seed: seed for shuffling and augmentation. Defaults to 0.
        repeat: endless shuffled epochs, or a single ordered pass. Defaults to True.
        threshold: passed to `read_mask`. Defaults to None (strict binary masks).
        start: with `repeat`, the stream position to begin at, to resume training where it
            stopped. Defaults to 0.
        shard: with `repeat`, `(index, count)`: this worker's share of every batch
            (`stream_positions`). Defaults to None (the whole stream).

    Returns:
        A `tf.data.Dataset` of `(images, masks)`, float32 `(batch, size, size, 3)` and
        `(batch, size, size, 1)`.

    Raises:
        DataError: a file that cannot be used (the message names it).
    """
    if not pairs:
        raise ValueError("No image/mask pairs given")
    side = _size_hw(size)[0]
    # Kept as 8-bit at the largest scale augmentation asks for, so that the warp only ever
    # shrinks mildly (no aliasing) and memory stays small whatever the photographs' size.
    keep_side = int(np.ceil(side * _SCALE[1]))
    images, masks = [], []
    for image_path, mask_path in tqdm(pairs, desc="reading", disable=None):
        image, mask = _read_training_pair(image_path, mask_path, threshold)
        if not augment:
            image, mask = _place(image, mask, side)
        elif max(image.shape[:2]) > keep_side:
            image, mask = _resize(image, mask, scaled_shape(image.shape, keep_side))
        images.append(np.round(image * 255).astype(np.uint8))
        masks.append(mask.astype(np.uint8))
    count = len(pairs)

    @functools.lru_cache(maxsize=2)
    def epoch_order(epoch):
        # The third word keeps shuffling apart from the augmentation streams [seed, position].
        return np.random.default_rng([seed, epoch, 1]).permutation(count)

    def make_sample_at(position):
        epoch, offset = divmod(position, count)
        index = epoch_order(epoch)[offset] if repeat else offset
        if augment:
            return _augment(sample_rng(seed, position), images[index], masks[index], side)
        return images[index].astype(np.float32) / 255, masks[index].astype(np.float32)

    def make_batch(positions):
        return _stack([make_sample_at(int(position)) for position in positions])

    if repeat:
        positions, rows = stream_positions(start, batch_size=batch_size, shard=shard)
    else:
        positions, rows = tf.data.Dataset.range(count), batch_size
    return batched_dataset(
        make_batch, positions, shape=(side, side), batch_size=rows, drop_remainder=repeat
    )


def write_folder(out, images, masks, *, stems=None):
    """Write an image/mask folder: `out/images/<stem>.png` and `out/masks/<stem>.png` (0/255).

    Args:
        out: destination folder, created if needed.
        images: float `(N, H, W, 3)` in [0, 1] (or a list of such images).
        masks: `(N, H, W, 1)` or `(N, H, W)`; values above 0.5 are foreground.
        stems: file names without extension. Defaults to zero-padded indices.

    Returns:
        The list of `(image_path, mask_path)` written, as `find_pairs` would return it.
    """
    if len(images) != len(masks):
        raise ValueError(f"Got {len(images)} images but {len(masks)} masks")
    stems = stems or [f"{index:05d}" for index in range(len(images))]
    if len(stems) != len(images) or len(set(stems)) != len(stems):
        raise ValueError(
            f"Need {len(images)} distinct stems, got {len(stems)} ({len(set(stems))} distinct)"
        )
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pairs = []
    for stem, image, mask in zip(stems, images, masks):
        pair = (out / "images" / f"{stem}.png", out / "masks" / f"{stem}.png")
        write_png(pair[0], image)
        write_png(pair[1], np.asarray(mask).reshape(np.shape(image)[:2]) > 0.5)
        pairs.append(pair)
    return sorted(pairs)
