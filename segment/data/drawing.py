"""Drawing synthetic scenes: object shapes and the surfaces (flat, gradient, texture, photo,
pattern) that fill objects and backgrounds."""

import functools

import cv2
import numpy as np
import skimage.data
import skimage.draw

from segment.data.presets import weighted_choice

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


def distinct_colour(rng, reference, distance_range):
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


def draw_appearance(rng, shape, colour, config, *, image_side):
    """An (H, W, 3) float32 surface: `colour` plus a zero-mean flat, gradient, texture (surface
    photo), photo (of things) or procedural pattern.

    `image_side` (the longer side of the whole image) sets the texture scale, so that an object's
    texture has the same grain as a background's.
    """
    height, width = shape
    kind = weighted_choice(rng, config.appearance_weights)
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


def object_pixels(rng, shape, config):
    """One object of a random kind as `(rows, cols)` pixel coordinates, clipped to the image."""
    kind = weighted_choice(rng, config.shape_weights)
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

