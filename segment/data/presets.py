"""The synthetic generator's settings: `GeneratorConfig`, the difficulty presets and mixtures."""

import dataclasses

import numpy as np

__all__ = [
    "APPEARANCE_KINDS", "DIFFICULTIES", "generator_config", "GeneratorConfig", "Mixture",
    "MIXTURES", "PRESETS", "SHAPE_KINDS",
]


SHAPE_KINDS = (
    "disk", "ellipse", "rectangle", "triangle", "star", "polygon", "ring", "bar",
    "silhouette", "curve", "blob", "holed",
)


APPEARANCE_KINDS = ("flat", "gradient", "texture", "photo", "pattern")


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
        return self.parts[weighted_choice(rng, {name: weight for name, (weight, _) in self.parts.items()})][1]


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


def weighted_choice(rng, weights):
    """A key of `weights` drawn with probability proportional to its value."""
    cumulative = np.cumsum(list(weights.values()))
    return list(weights)[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")]

