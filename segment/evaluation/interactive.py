"""A simulated annotator: clicks that correct a mask, as interactive segmentation is scored.

The protocol of the interactive segmentation literature (Xu et al. 2016, "Deep interactive
object selection"; Sofiiuk et al. 2022, "Reviving iterative training with mask guidance for
interactive segmentation"): after each answer, the annotator looks at the errors, takes the
largest connected region of them and clicks at its pixel farthest from the region's
boundary: a foreground click in a missed region, a background click in a false one. The
score is the number of clicks (NoC) until the mask reaches a target IoU, and the IoU after
each click.
"""

import time

import cv2
import numpy as np

from segment.inference import (
    Click,
    InferenceSettings,
    correct_mask,
    finish_mask,
    predict_probability,
)
from segment.metrics import iou

__all__ = ["model_corrections", "next_click", "noc", "simulate"]


def next_click(prediction, truth):
    """Where the annotator clicks next.

    Among the error regions, false negatives and false positives each split into connected
    (8-connected) regions, the largest is taken; the click goes at its pixel farthest from
    the region's boundary, the image's border counted as boundary.

    Args:
        prediction: bool `(height, width)`, the current mask.
        truth: bool `(height, width)`, the true mask; a masked array's void pixels
            (`segment.data.read_pair`) are never errors.

    Returns:
        a `Click`, foreground for a missed (false negative) region; None when there is no
        error.
    """
    prediction = np.asarray(prediction, bool)
    known = ~np.ma.getmaskarray(truth)
    truth = np.ma.getdata(truth).astype(bool)
    best = None
    for foreground, errors in ((True, truth & ~prediction), (False, prediction & ~truth)):
        errors &= known
        count, regions, stats, _ = cv2.connectedComponentsWithStats(
            errors.view(np.uint8), connectivity=8
        )
        if count > 1:
            label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[label, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, foreground, regions == label)
    if best is None:
        return None
    _, foreground, region = best
    # One pixel of zeros around: the image's border is the region's boundary too.
    padded = np.pad(region.view(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(int(x) - 1, int(y) - 1, foreground)


def simulate(segmenter, image, truth, *, max_clicks=20, until=None):
    """Correct one image click by click, as the annotator of `next_click` would.

    Args:
        segmenter: `segmenter(image, clicks) -> bool mask`, `clicks` a list of `Click`s (the
            first call gets none).
        image: the image, as `segmenter` takes it.
        truth: bool `(height, width)`, the true mask (a masked array leaves its void
            pixels out, as `segment.metrics` does).
        max_clicks: the most clicks. Defaults to 20.
        until: stop once the IoU reaches this, where only the clicks to reach it are
            wanted (`noc`). Defaults to None: every click.

    Returns:
        `(ious, seconds)`: the IoU after 0, 1, ..., `max_clicks` clicks (`max_clicks + 1`
        values; once the mask is perfect, or reaches `until`, the last IoU is carried
        forward), and the seconds the segmenter took for each click made.
    """
    clicks, seconds = [], []
    mask = segmenter(image, [])
    ious = [iou(mask, truth)]
    while len(clicks) < max_clicks and (until is None or ious[-1] < until):
        click = next_click(mask, truth)
        if click is None:
            break
        clicks.append(click)
        began = time.perf_counter()
        mask = segmenter(image, list(clicks))
        seconds.append(time.perf_counter() - began)
        ious.append(iou(mask, truth))
    ious += [ious[-1]] * (max_clicks + 1 - len(ious))
    return ious, seconds


def noc(ious, target, max_clicks=20):
    """The number of clicks until the IoU reaches `target`: 0 if the start already does,
    `max_clicks` where it never does within `max_clicks` clicks.

    Args:
        ious: the IoU after 0, 1, ... clicks, as `simulate` returns them.
        target: the IoU to reach, e.g. 0.85 or 0.9.
        max_clicks: the most clicks counted. Defaults to 20.
    """
    for clicks, value in enumerate(ious[: max_clicks + 1]):
        if value >= target:
            return clicks
    return max_clicks


def model_corrections(model, image, click_networks):
    """`{name: segmenter(image, clicks) -> bool mask}` for `simulate`: `model`'s mask of
    `image`, finished as predict.py finishes it, corrected as serve.py corrects it
    (`correct_mask`) with each of `click_networks` (`{name: click network, or None for the
    model's probability alone}`). The probability is predicted and finished once for all."""
    probability = predict_probability(model, image)
    start = finish_mask(model, image, probability)
    threshold = InferenceSettings.of(model).threshold

    def corrected(network):
        return lambda image, clicks: correct_mask(image, probability, clicks,
                                                  threshold=threshold, start=start,
                                                  network=network)

    return {name: corrected(network) for name, network in click_networks.items()}
