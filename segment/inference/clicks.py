"""Corrections from clicks: a user's clicks on a mask's errors, and the mask they ask for.

A click at `(x, y)` says "this pixel is foreground" (or background). `correct_mask` takes the
network's probability as the starting point and the clicks as the user's word. With a
probability, each click moves the network's decision boundary along the probability's own
contours: the logit is raised (or lowered) by a smooth bump centred on the click, just enough
to put the click a margin inside the side it asks for, and as wide as the click is far from
that side, so the mask grows (or shrinks) where the network was least sure, not by a disc.
From the clicks alone (no network), GrabCut (Rother et al. 2004) relabels the image from its
colours, seeded with discs of sure labels at the clicks, and its changes are kept only in the
regions the clicks touch, then the discs are set to the clicks' labels. A click always wins
at its own pixel. `parse_clicks` reads the clicks a client sends as JSON.
"""

import json
from dataclasses import dataclass

import cv2
import numpy as np

from segment.imageio import DataError, as_float_rgb, scale_image, scaled_shape

__all__ = ["Click", "correct_mask", "MAX_CLICKS", "parse_clicks"]

MAX_CLICKS = 100  # per request: more is not a correction but a drawing
_FIELDS = ("x", "y", "foreground")

# With a probability: a click's bump brings the logit (less the threshold's) at the click to
# CLICK_MARGIN on the click's side; it is a Gaussian whose standard deviation is CLICK_REACH
# times the click's distance from the nearest pixel of the mask on its side (at least
# LEAST_REACH of the image's diagonal, and FAR_REACH where the mask has no such pixel).
# Chosen on development photographs held out of training (docs/experiments.md, "Corrections
# from clicks").
CLICK_REACH = 2.0
CLICK_MARGIN = 2.0
LEAST_REACH = 0.01
FAR_REACH = 0.1
_LOGIT_CLIP = 1e-4  # probabilities of 0 and 1 have no logit
_BUMP_END = 3.0  # standard deviations: beyond, a click changes nothing
# Bumps, and GrabCut, are worked out on the image scaled so its longer side is at most
# CLICK_SIDE pixels (speed); a click's disc of sure labels has a radius of CLICK_RADIUS of the
# image's diagonal, and at least LEAST_RADIUS pixels at GrabCut's scale. Within CLICK_RELAX of
# the diagonal from a click, GrabCut's first guess is the click's kind.
CLICK_SIDE = 320
CLICK_RADIUS = 0.015
LEAST_RADIUS = 3
CLICK_RELAX = 0.1
_ITERATIONS = 2  # a third changed nothing on the benchmark but the time
_LEAST_PIXELS = 16  # GrabCut's colour models need samples on both sides


@dataclass(frozen=True)
class Click:
    """One click: pixel `(x, y)`, x to the right and y down in the image's own pixels, and
    whether the user says it is foreground."""

    x: int
    y: int
    foreground: bool


def parse_clicks(text, shape):
    """Clicks from JSON text, `[{"x": 120, "y": 48, "foreground": true}, ...]`.

    Args:
        text: the JSON text (str or bytes).
        shape: the image's `(height, width)` (or `(height, width, channels)`): every click must
            fall inside it.

    Returns:
        A list of `Click`, in the order given.

    Raises:
        DataError: not JSON, not a list of objects, missing or unknown keys, coordinates that
            are not integers or fall outside the image, `foreground` not true or false, or more
            than `MAX_CLICKS` clicks; the one-line message names the field, e.g.
            `clicks[2]: x=700 is outside the image (0 to 639)`.
    """
    try:
        items = json.loads(text)
    except (ValueError, TypeError) as error:  # JSONDecodeError and undecodable bytes
        raise DataError(f"clicks: not valid JSON ({_one_line(error)})") from None
    if not isinstance(items, list):
        raise DataError(
            f'clicks: expected a JSON list of {{"x", "y", "foreground"}} objects, '
            f"got {_shown(items)}"
        )
    if len(items) > MAX_CLICKS:
        raise DataError(f"clicks: {len(items)} clicks, more than the {MAX_CLICKS} allowed")
    height, width = shape[:2]
    return [_parse_click(item, f"clicks[{index}]", (height, width))
            for index, item in enumerate(items)]


def _parse_click(item, where, shape):
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with x, y and foreground, got {_shown(item)}")
    missing = [key for key in _FIELDS if key not in item]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(key for key in item if key not in _FIELDS)
    if unknown:
        raise DataError(f"{where}: unknown key {', '.join(map(repr, unknown))} "
                        "(a click has x, y and foreground)")
    x = _coordinate(item["x"], where, "x", shape[1])
    y = _coordinate(item["y"], where, "y", shape[0])
    foreground = item["foreground"]
    if not isinstance(foreground, bool):
        raise DataError(f"{where}: foreground must be true or false, got {_shown(foreground)}")
    return Click(x, y, foreground)


def _coordinate(value, where, name, size):
    # JSON has one number type: 3.0 is accepted as 3, but true is not 1.
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise DataError(f"{where}: {name} must be an integer, got {_shown(value)}")
    if not 0 <= value < size:
        raise DataError(f"{where}: {name}={_shown(value)} is outside the image (0 to {size - 1})")
    return int(value)


def _shown(value):
    """A JSON value as a message shows it, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(error):
    return " ".join(str(error).split())


def default_radius(shape):
    """The radius, in the image's pixels, of a click's disc of sure labels."""
    height, width = shape[:2]
    return CLICK_RADIUS * float(np.hypot(height, width))


# A click network's guidance: the mask being corrected, then discs at the foreground clicks and
# at the background clicks, at the network's working size.
GUIDANCE = 3
# A click network answers from the first NETWORK_CLICKS clicks; later ones move its boundary
# as they move the segmenter's (it learnt with at most four, and given more its answers fall
# behind: docs/experiments.md, "How many clicks the click network is given").
NETWORK_CLICKS = 5


def guidance_radius(shape):
    """The radius, in pixels of an image of `shape`, of a click's disc in a click network's
    guidance: `CLICK_RADIUS` of the diagonal, at least `LEAST_RADIUS`."""
    return max(LEAST_RADIUS, round(default_radius(shape)))


def guidance_maps(start, clicks, radius):
    """float32 `(height, width, GUIDANCE)`: the mask `start`, the discs of the foreground
    clicks, the discs of the background clicks."""
    maps = np.empty((*start.shape, GUIDANCE), np.float32)
    maps[..., 0] = start
    maps[..., 1] = _discs(start.shape, clicks, radius, True)
    maps[..., 2] = _discs(start.shape, clicks, radius, False)
    return maps


def network_correction(network, image, start, clicks):
    """A click network's foreground probability for `image`, the mask `start` and the
    `clicks`, at the image's own size: it runs once at its working size, the image
    reflect-padded and the guidance zero-padded to its size multiple."""
    # Imported here: tiling imports the model's settings.
    from segment.inference.tiling import size_multiple
    from segment.model import InferenceSettings

    shape = image.shape[:2]
    side = InferenceSettings.of(network).working_size
    small_shape = scaled_shape(shape, side) if side else shape
    scale = small_shape[0] / shape[0], small_shape[1] / shape[1]
    small_clicks = [_scaled_click(click, scale, small_shape) for click in clicks]
    guides = guidance_maps(_scaled_mask(start, small_shape), small_clicks,
                           guidance_radius(small_shape))
    multiple = size_multiple(network)
    padding = [(0, -small_shape[0] % multiple), (0, -small_shape[1] % multiple), (0, 0)]
    pixels = np.pad(_scaled(image, small_shape), padding, mode="reflect")
    guides = np.pad(guides, padding)
    output = network.predict_on_batch([pixels[None], guides[None]])
    probability = np.asarray(output)[0, : small_shape[0], : small_shape[1], 0]
    return np.clip(_scaled(probability.astype(np.float32), shape), 0.0, 1.0)


def correct_mask(image, probability, clicks, *, threshold=0.5, radius=None, start=None,
                 network=None):
    """The mask of `image` corrected by the user's `clicks`.

    The network's probability is the starting point (`probability > threshold`, or `start`)
    and the clicks are the user's word. The work is done on the image scaled so that its
    longer side is at most `CLICK_SIDE`:

    - With a probability, the clicks move the boundary, in the order given: a click on the
      side it asks for already changes nothing; otherwise the logit (less the threshold's,
      each pixel on the starting mask's side) gets a Gaussian bump at the click that brings
      the click `CLICK_MARGIN` inside its side, with a standard deviation of `CLICK_REACH`
      times the click's distance from the nearest pixel already on its side, cut off at
      three standard deviations. The mask grows or shrinks along the probability's contours,
      where the network was least sure, and nowhere beyond the cut-off. Where the starting
      mask overrules the network (a finished or saved mask), its pixels count as surely on
      their side as a click.
    - With a click network as well (`network`, trained by `train.py --data` beside the
      segmenter: `segment.training.clicks`), it first answers from the image, the starting
      mask and the first `NETWORK_CLICKS` clicks; its probability then takes the place of
      the segmenter's, its mask of the starting one, and every click moves its boundary as
      above.
    - From the clicks alone, GrabCut is seeded with the clicks' discs as sure labels, the
      surroundings of each click (within `CLICK_RELAX` of the diagonal) as probably the
      click's kind, and the rest as the starting mask says; its result replaces the starting
      mask only in the connected regions of change that a click's disc touches. Seeded, so
      the same input always gives the same mask.

    Last, every click's pixel (from the clicks alone, first its disc) is set to the click's
    label, later clicks over earlier ones: a click always wins at its own pixel.

    Args:
        image: float `(height, width, 3)` RGB in [0, 1], or gray `(height, width)`.
        probability: float `(height, width)` foreground probabilities in [0, 1], or None to
            work from the clicks alone with GrabCut (no foreground click and no starting
            mask: an empty mask).
        clicks: `Click`s in the image's own pixels, in the order the user gave them.
        threshold: foreground above this probability. Defaults to 0.5.
        radius: the radius of a click's disc of sure labels from the clicks alone (GrabCut),
            in the image's pixels. Defaults to `CLICK_RADIUS` of the image's diagonal;
            GrabCut's seeds are at least `LEAST_RADIUS` pixels at its scale.
        start: bool `(height, width)`: the mask the user corrects, e.g. `finish_mask`'s.
            Defaults to `probability > threshold` (empty without a probability).
        network: a click network (`segment.inference.load_click_network`), used where
            there is a probability. Defaults to None (the segmenter's probability alone).

    Returns:
        bool array `(height, width)`; the starting mask itself without clicks.

    Raises:
        ValueError: a probability or starting mask of another shape than the image, or a
            click outside the image.
    """
    image = as_float_rgb(image)
    shape = image.shape[:2]
    probability, start = _starting_point(probability, start, shape, threshold)
    clicks = _checked(clicks, shape)
    if not clicks:
        return start.copy()
    if network is not None and probability is not None:
        # The click network's answer replaces the probability and the mask it corrected.
        probability = network_correction(network, image, start, clicks[:NETWORK_CLICKS])
        start, threshold = probability > 0.5, 0.5
    small_shape = scaled_shape(shape, CLICK_SIDE) if max(shape) > CLICK_SIDE else shape
    scale = small_shape[0] / shape[0], small_shape[1] / shape[1]
    small_clicks = [_scaled_click(click, scale, small_shape) for click in clicks]
    if probability is not None:
        mask = _moved_boundary(probability, start, small_clicks, small_shape, threshold)
        _paint_clicks(mask, clicks, 0)  # a disc would overshoot a thin error
        return mask
    radius = default_radius(shape) if radius is None else float(radius)
    small_radius = max(LEAST_RADIUS, round(radius * min(scale)))
    small_start = _scaled_mask(start, small_shape)
    labels = _seeds(small_start, small_clicks, small_radius)
    cut = _grabcut(_scaled(image, small_shape), labels)
    mask = start.copy()
    if cut is not None:
        touched = _touched_changes(cut, small_start, small_clicks, small_radius)
        replace = _scaled_mask(touched, shape)
        mask[replace] = _scaled_mask(cut, shape)[replace]
    _paint_clicks(mask, clicks, round(radius))
    return mask


def _moved_boundary(probability, start, clicks, small_shape, threshold):
    """The starting mask with its boundary moved by each click's bump of the logit (see
    `correct_mask`); `clicks` at the scale of `small_shape`, where the bumps are worked out."""
    logit = _logit(probability) - float(_logit(threshold))  # a Python float keeps float32
    # The starting mask (finished, or saved by the user) says which side each pixel is on;
    # where it overrules the network, as surely as a click's margin.
    overruled = (logit > 0) != start
    logit[overruled] = np.where(start[overruled], CLICK_MARGIN, -CLICK_MARGIN)
    small = _scaled(logit.astype(np.float32), small_shape)
    bumps = np.zeros(small_shape, np.float32)
    diagonal = float(np.hypot(*small_shape))
    rows, columns = (np.arange(size, dtype=np.float32) for size in small_shape)
    for click in clicks:
        value = small[click.y, click.x] + bumps[click.y, click.x]
        if (value > 0) == click.foreground:
            continue
        side = (small + bumps > 0) == click.foreground
        distance = FAR_REACH * diagonal
        if side.any():  # to the nearest pixel on the click's side
            distance = cv2.distanceTransform((~side).view(np.uint8), cv2.DIST_L2,
                                             cv2.DIST_MASK_5)[click.y, click.x]
        sigma = max(CLICK_REACH * float(distance), LEAST_REACH * diagonal)
        height = CLICK_MARGIN - value if click.foreground else -(value + CLICK_MARGIN)
        squared = (((rows - click.y) / sigma) ** 2)[:, None] + ((columns - click.x) / sigma) ** 2
        bumps += np.where(squared < _BUMP_END**2, height * np.exp(-0.5 * squared), 0)
    return logit + _scaled(bumps, start.shape) > 0


def _logit(probability):
    """`log(p / (1 - p))` of a probability or an array of them, clipped away from 0 and 1."""
    probability = np.clip(probability, _LOGIT_CLIP, 1 - _LOGIT_CLIP)
    return np.log(probability / (1 - probability))


def _starting_point(probability, start, shape, threshold):
    """`(probability or None, start mask)`, checked against the image's shape."""
    if probability is not None:
        probability = np.asarray(probability, np.float32)
        if probability.shape != shape:
            raise ValueError(f"probability of shape {probability.shape} for an image of {shape}")
    if start is None:
        start = np.zeros(shape, bool) if probability is None else probability > threshold
    start = np.ascontiguousarray(start, dtype=bool)
    if start.shape != shape:
        raise ValueError(f"starting mask of shape {start.shape} for an image of {shape}")
    return probability, start


def _checked(clicks, shape):
    clicks = list(clicks)
    for click in clicks:
        if not (0 <= click.x < shape[1] and 0 <= click.y < shape[0]):
            raise ValueError(f"{click} is outside the {shape[1]}x{shape[0]} image")
    return clicks


def _scaled(array, shape):
    return array if array.shape[:2] == tuple(shape) else scale_image(array, shape)


def _scaled_mask(mask, shape):
    """A bool mask scaled to `shape` as a float (linear or area), then above one half."""
    if mask.shape == tuple(shape):
        return mask
    return scale_image(mask.astype(np.float32), shape) > 0.5


def _scaled_click(click, scale, shape):
    """The click at GrabCut's scale: the pixel whose centre is nearest the click's."""
    x = min(shape[1] - 1, int((click.x + 0.5) * scale[1]))
    y = min(shape[0] - 1, int((click.y + 0.5) * scale[0]))
    return Click(x, y, click.foreground)


def _discs(shape, clicks, radius, foreground):
    """bool mask: the discs of the clicks of one kind."""
    canvas = np.zeros(shape, np.uint8)
    for click in clicks:
        if click.foreground == foreground:
            cv2.circle(canvas, (click.x, click.y), radius, 1, thickness=-1)
    return canvas.view(bool)


def _seeds(start, clicks, radius):
    """GrabCut's starting labels: probable foreground or background as the starting mask says,
    but the click's kind near a click, where the user has just said the mask is wrong (so
    GrabCut's colour models learn the colours there as the click's); sure in the clicks'
    discs."""
    labels = np.where(start, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    relax = max(radius, round(CLICK_RELAX * float(np.hypot(*start.shape))))
    for click in clicks:  # later clicks over earlier ones
        label = cv2.GC_PR_FGD if click.foreground else cv2.GC_PR_BGD
        cv2.circle(labels, (click.x, click.y), relax, label, thickness=-1)
    for click in clicks:
        label = cv2.GC_FGD if click.foreground else cv2.GC_BGD
        cv2.circle(labels, (click.x, click.y), radius, label, thickness=-1)
    return labels


def _grabcut(image, labels):
    """bool foreground after GrabCut from `labels`; None where a side has too few pixels."""
    foreground = np.count_nonzero((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    if min(foreground, labels.size - foreground) < _LEAST_PIXELS:
        return None
    pixels = np.ascontiguousarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means from OpenCV's RNG
    cv2.grabCut(pixels, labels, None, np.zeros((1, 65)), np.zeros((1, 65)), _ITERATIONS,
                cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _touched_changes(cut, start, clicks, radius):
    """The connected regions (8-connected) where `cut` differs from `start` that a click's
    disc touches: the errors the user pointed at, and nothing GrabCut changed elsewhere."""
    _, regions = cv2.connectedComponents((cut != start).view(np.uint8), connectivity=8)
    touched = _discs(start.shape, clicks, radius, True) | _discs(start.shape, clicks, radius, False)
    kept = np.zeros(regions.max() + 1, bool)
    kept[regions[touched]] = True
    kept[0] = False  # where nothing changed
    return kept[regions]


def _paint_clicks(mask, clicks, radius):
    """Set each click's disc, then each click's own pixel, to its label, in order."""
    canvas = mask.view(np.uint8)
    for click in clicks:
        cv2.circle(canvas, (click.x, click.y), radius, int(click.foreground), thickness=-1)
    for click in clicks:
        canvas[click.y, click.x] = click.foreground
