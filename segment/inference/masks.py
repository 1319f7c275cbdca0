"""From probabilities to masks: threshold, GrabCut refinement, small parts and holes."""

import math

import cv2
import numpy as np

from segment.imageio import as_float_rgb, scale_image, scaled_shape
from segment.metrics import hole_regions
from segment.model import InferenceSettings, check_min_part

__all__ = ["clean_mask", "finish_mask", "refine_mask", "REFINE_SIDE", "REFINE_SURE"]


# GrabCut refinement (`refine_mask`): pixels above REFINE_SURE stay foreground, those below
# 1 - REFINE_SURE background, and GrabCut labels the rest from the image's colours, at most
# REFINE_SIDE pixels a side. Used where training found it scores better on validation; why
# these values: docs/experiments.md, "GrabCut refinement".
REFINE_SURE = 0.995
REFINE_SIDE = 400
_REFINE_ITERATIONS = 3
_REFINE_LEAST_PIXELS = 16  # GrabCut's colour models need samples on both sides


def finish_mask(
    model, image, probability, *, threshold=None, refine=None, min_area=0, fill_holes=0,
    min_part=None, min_hole=None,
):
    """The mask of `image` from its predicted `probability`: thresholded, refined with GrabCut
    if asked, and cleaned (`clean_mask`). The options are `predict_mask`'s; None takes the
    model's own."""
    settings = InferenceSettings.of(model).replace(
        threshold=threshold, refine=refine, min_part=min_part, min_hole=min_hole
    )
    if settings.refine:
        mask = refine_mask(image, probability, threshold=settings.threshold)
    else:
        mask = probability > settings.threshold
    return clean_mask(mask, min_area=min_area, fill_holes=fill_holes,
                      min_part=settings.min_part, min_hole=settings.min_hole)


def refine_mask(image, probability, *, threshold=0.5):
    """A mask refined by GrabCut (Rother et al. 2004, `cv2.grabCut`) from a probability map.

    Pixels above `REFINE_SURE` are kept as foreground and those below `1 - REFINE_SURE` as
    background; the others start as probable foreground (above `threshold`) or probable
    background, and GrabCut's colour models and its edge-aware smoothing label them from the
    image itself. So an outline the network drew soft, at its working size, follows the edge in
    the photograph. Run on the image scaled so its longer side is at most `REFINE_SIDE`, and
    scaled back, where the sure pixels are set again at full size; seeded, so the same input
    always gives the same mask. A threshold beyond the sure limits moves them with it.

    Args:
        image: float `(height, width, 3)` RGB in [0, 1], or gray `(height, width)`.
        probability: float `(height, width)` foreground probabilities.
        threshold: the probability above which an unsure pixel starts as foreground.
            Defaults to 0.5.

    Returns:
        bool array `(height, width)`; `probability > threshold` where either side has too
        few pixels for GrabCut's colour models.
    """
    image = as_float_rgb(image)
    probability = np.asarray(probability, np.float32)
    height, width = probability.shape
    start = probability > threshold
    sure, unsure = max(REFINE_SURE, threshold), min(1 - REFINE_SURE, threshold)
    small = probability
    if max(height, width) > REFINE_SIDE:
        shape = scaled_shape(probability.shape, REFINE_SIDE)
        image, small = scale_image(image, shape), scale_image(probability, shape)
    labels = np.where(small > threshold, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[small > sure] = cv2.GC_FGD
    labels[small < unsure] = cv2.GC_BGD
    foreground = np.count_nonzero((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    if min(foreground, labels.size - foreground) < _REFINE_LEAST_PIXELS:
        return start
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means from OpenCV's RNG
    cv2.grabCut(
        np.ascontiguousarray(pixels), labels, None, np.zeros((1, 65)), np.zeros((1, 65)),
        _REFINE_ITERATIONS, cv2.GC_INIT_WITH_MASK,
    )
    refined = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if refined.shape != (height, width):
        refined = scale_image(refined.astype(np.float32), (height, width)) > 0.5
        refined[probability > sure] = True
        refined[probability < unsure] = False
    return refined


def clean_mask(mask, *, min_area=0, fill_holes=0, min_part=0.0, min_hole=0.0):
    """Drop foreground parts (8-connected) smaller than `min_area` pixels or than `min_part`
    of the mask's pixels, then fill holes smaller than `fill_holes` pixels or than `min_hole`
    of the mask's pixels; 0 leaves the mask as it is.

    A hole is what `segment.metrics.b1_error` counts: a 4-connected background region that
    does not reach the image's edge.

    Args:
        mask: `(height, width)` array, nonzero for foreground.

    Returns:
        bool array `(height, width)`.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"Expected a (height, width) mask, got shape {mask.shape}")
    if mask.size == 0:
        return mask
    min_area = max(min_area, math.ceil(check_min_part(min_part) * mask.size))
    if min_area > 1:
        labels, areas = _regions(mask, connectivity=8)
        kept = areas >= min_area
        kept[0] = False  # the background
        mask = kept[labels]
    fill_holes = max(fill_holes, math.ceil(check_min_part(min_hole) * mask.size))
    if fill_holes > 1:
        labels, areas, is_hole = hole_regions(mask)
        mask = mask | (is_hole & (areas < fill_holes))[labels]
    return mask


def _regions(mask, *, connectivity):
    """`(labels, areas)` of the connected regions of True pixels: label 0 for the False
    pixels, `areas[label]` pixels in each (OpenCV: int32 labels, a quarter of the memory of
    scikit-image's int64 on a 64-megapixel mask)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
    )
    return labels, stats[:, cv2.CC_STAT_AREA]

