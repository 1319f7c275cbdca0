"""Per-image mask-quality metrics on boolean masks (numpy, scipy, OpenCV).

Overlap (IoU, Dice, precision, recall, pixel accuracy) says how many pixels are right; boundary
F1 and HD95 say how well the outline follows the truth; the topology errors (`b0_error`,
`b1_error`, `spurious`) say whether the mask is speckled, pierced or broken, which overlap
scores barely notice.

Every function takes `(pred, gt)`: two binary masks of the same `(height, width)` shape
(`(height, width, 1)` is accepted too), as bool or as numbers that are all 0 or 1. Inputs are
validated first and a `ValueError` carries the offending shapes or values.

Conventions shared by several metrics:

* Empty masks: every ratio with a zero denominator is 1.0, since nothing predicted or
  nothing to find means nothing wrong (the DAVIS convention). An empty prediction of a
  non-empty truth therefore scores precision 1.0 but recall, IoU, Dice and boundary F1 0.0;
  a non-empty prediction of an empty truth scores recall 1.0 and precision, IoU, Dice and
  boundary F1 0.0. Each docstring gives its own values.
* Boundaries: the foreground pixels with a 4-connected background neighbour, where everything
  outside the image counts as background. A mask's boundary is therefore empty exactly when the
  mask is empty, and an object cut by the image edge is outlined along the edge.
* Connectivity: foreground components are 8-connected, so diagonal neighbours belong to one
  component; background is 4-connected, the complementary choice that makes holes well
  defined (a closed 8-connected ring encloses its inside).
"""

import math

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "METRIC_NAMES", "b0_error", "b1_error", "boundary_f1", "dice", "evaluate_masks", "hd95",
    "hole_regions", "iou", "mean_metrics", "pixel_accuracy", "precision", "recall", "spurious",
]

# Column order of every table this project writes (evaluation report, loss benchmark).
METRIC_NAMES = (
    "iou",
    "dice",
    "precision",
    "recall",
    "pixel_accuracy",
    "boundary_f1",
    "hd95",
    "b0_error",
    "b1_error",
    "spurious",
)

# DAVIS boundary tolerance: a fraction of the image diagonal, rounded up to whole pixels.
# Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
# Segmentation", CVPR 2016, https://davischallenge.org (db_eval_boundary, bound_th=0.008).
DAVIS_TOLERANCE_FRACTION = 0.008


# --- validation -----------------------------------------------------------------------------------


def _as_mask(array, name):
    """One input as a 2-D bool array, or a ValueError naming what is wrong with it."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (height, width) or (height, width, 1), got {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be bool or numeric, got dtype {array.dtype}")
    is_binary = (array == 0) | (array == 1)
    if not is_binary.all():
        found = np.unique(array[~is_binary])
        shown = ", ".join(str(value) for value in found[:5]) + (", ..." if found.size > 5 else "")
        raise ValueError(f"{name} must be binary (0/1 or bool), found values {shown}")
    return array.astype(bool)


def _validate(pred, gt):
    """Both masks as 2-D bool arrays of equal shape. A truth given as a `numpy.ma` masked
    array has void pixels (a border nobody labelled): they are background in both masks, so
    they count for neither side."""
    void = np.ma.getmaskarray(gt) if np.ma.isMaskedArray(gt) else None
    pred_mask, gt_mask = _as_mask(pred, "pred"), _as_mask(np.ma.getdata(gt), "gt")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got {np.shape(pred)} and {np.shape(gt)}"
        )
    if void is not None and void.any():
        void = void.reshape(gt_mask.shape)
        return pred_mask & ~void, gt_mask & ~void
    return pred_mask, gt_mask


# --- helpers on validated 2-D bool masks ----------------------------------------------------------


def _ratio(numerator, denominator, *, if_empty):
    return float(numerator) / float(denominator) if denominator else if_empty


def _f_score(precision_value, recall_value):
    total = precision_value + recall_value
    return float(2.0 * precision_value * recall_value / total) if total else 0.0


def _boundary(mask):
    # border_value=0 treats the outside of the image as background (see the module docstring).
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _distances_to(target, at):
    """Euclidean distance from each True pixel of `at` to the nearest True pixel of `target`."""
    return ndimage.distance_transform_edt(~target)[at]


def _components(mask):
    """`(labels, count)` of the 8-connected foreground components; label 0 is background."""
    pixels = np.ascontiguousarray(mask).view(np.uint8)
    count, labels = cv2.connectedComponents(pixels, connectivity=8, ltype=cv2.CV_32S)
    return labels, count - 1


def hole_regions(mask):
    """The holes of a 2-D bool mask: `(labels, areas, is_hole)`, where `labels` numbers the
    4-connected background regions from 1 (0 on the foreground), `areas[label]` is each
    region's pixels and `is_hole[label]` whether it is a hole, a region that does not reach
    the image's edge (what `b1_error` counts and `segment.inference.clean_mask` fills).

    OpenCV's labelling, 15 times faster than scikit-image's Euler number: choosing a model's
    mask settings counts the holes of up to 30 masks per validation image.
    """
    pixels = np.ascontiguousarray(~np.asarray(mask, bool)).view(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(pixels, connectivity=4,
                                                           ltype=cv2.CV_32S)
    is_hole = np.ones(len(stats), bool)
    is_hole[0] = False  # the foreground
    is_hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return labels, stats[:, cv2.CC_STAT_AREA], is_hole


def _holes(mask):
    return int(np.count_nonzero(hole_regions(mask)[2]))


def _default_tolerance(shape):
    return math.ceil(DAVIS_TOLERANCE_FRACTION * math.hypot(*shape))


# --- overlap --------------------------------------------------------------------------------------


def iou(pred, gt):
    """Intersection over union, |pred & gt| / |pred | gt|.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float in [0, 1]. Both masks empty: 1.0 (nothing to find, nothing found). Exactly one empty:
    0.0.

    Examples
    --------
    >>> iou([[1, 1, 0]], [[1, 0, 0]])
    0.5
    """
    pred, gt = _validate(pred, gt)
    return _ratio(np.count_nonzero(pred & gt), np.count_nonzero(pred | gt), if_empty=1.0)


def dice(pred, gt):
    """Dice coefficient (F1 over pixels), 2 |pred & gt| / (|pred| + |gt|).

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float in [0, 1]. Both masks empty: 1.0. Exactly one empty: 0.0.

    Examples
    --------
    >>> dice([[1, 1, 0]], [[1, 0, 0]])
    0.6666666666666666
    """
    pred, gt = _validate(pred, gt)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return _ratio(2 * np.count_nonzero(pred & gt), total, if_empty=1.0)


def precision(pred, gt):
    """Fraction of predicted foreground that is true foreground, |pred & gt| / |pred|.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float in [0, 1]. Empty prediction: 1.0 whatever the truth (no predicted pixel is wrong;
    the DAVIS convention, pair it with `recall`). Non-empty prediction of an empty truth: 0.0.

    Examples
    --------
    >>> precision([[1, 1, 0]], [[1, 0, 0]])
    0.5
    """
    pred, gt = _validate(pred, gt)
    return _ratio(np.count_nonzero(pred & gt), np.count_nonzero(pred), if_empty=1.0)


def recall(pred, gt):
    """Fraction of true foreground that is predicted, |pred & gt| / |gt|.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float in [0, 1]. Empty truth: 1.0 whatever the prediction (nothing was missed). Empty
    prediction of a non-empty truth: 0.0.

    Examples
    --------
    >>> recall([[1, 1, 0]], [[1, 0, 0]])
    1.0
    """
    pred, gt = _validate(pred, gt)
    return _ratio(np.count_nonzero(pred & gt), np.count_nonzero(gt), if_empty=1.0)


def pixel_accuracy(pred, gt):
    """Fraction of pixels labelled correctly, foreground and background alike.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float in [0, 1]; always defined (empty masks are simply all background).

    Examples
    --------
    >>> pixel_accuracy([[1, 1, 0]], [[1, 0, 0]])
    0.6666666666666666
    """
    pred, gt = _validate(pred, gt)
    return float(np.count_nonzero(pred == gt)) / pred.size


# --- boundaries -----------------------------------------------------------------------------------


def boundary_f1(pred, gt, *, tolerance=None):
    """Boundary F-measure as in the DAVIS benchmark.

    Boundary precision is the fraction of predicted boundary pixels within `tolerance` pixels
    (Euclidean) of the true boundary; boundary recall the converse; the score is their
    harmonic mean. Boundaries are the foreground pixels with a 4-connected background
    neighbour, the outside of the image counting as background.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)
    tolerance : float, optional
        Matching distance in pixels. Defaults to ``ceil(0.008 * hypot(height, width))``, the
        DAVIS setting (1 pixel up to 88 x 88, 2 at 128 x 128, 6 at 512 x 512).

    Returns
    -------
    float in [0, 1]. Both masks empty: 1.0. Exactly one empty: 0.0 (precision or recall is 0).

    References
    ----------
    Perazzi et al., CVPR 2016, https://davischallenge.org

    Examples
    --------
    >>> boundary_f1([[1, 1, 0, 0]], [[1, 1, 0, 0]])
    1.0
    """
    pred, gt = _validate(pred, gt)
    if tolerance is None:
        tolerance = _default_tolerance(pred.shape)
    elif tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    pred_boundary, gt_boundary = _boundary(pred), _boundary(gt)
    if not pred_boundary.any() or not gt_boundary.any():
        # DAVIS: precision 1 with nothing predicted, recall 1 with nothing to find.
        return 1.0 if not pred_boundary.any() and not gt_boundary.any() else 0.0
    # A boundary pixel is matched when the other boundary passes within `tolerance` pixels,
    # the same as DAVIS's dilation with disk(tolerance), whose pixels lie at distance <= r.
    matched_pred = np.count_nonzero(_distances_to(gt_boundary, pred_boundary) <= tolerance)
    matched_gt = np.count_nonzero(_distances_to(pred_boundary, gt_boundary) <= tolerance)
    return _f_score(
        matched_pred / np.count_nonzero(pred_boundary), matched_gt / np.count_nonzero(gt_boundary)
    )


def hd95(pred, gt, *, percentile=95.0):
    """Robust symmetric Hausdorff distance between the mask boundaries, in pixels.

    The larger of the two directed 95th percentiles: of the distances from each predicted
    boundary pixel to the nearest true boundary pixel, and from each true boundary pixel to the
    nearest predicted one (the MONAI definition; ``percentile=100`` gives the Hausdorff
    distance). Percentiles interpolate linearly (`numpy.percentile`).

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)
    percentile : float, optional
        Defaults to 95.

    Returns
    -------
    float >= 0. Both masks empty: 0.0. Exactly one empty: the image diagonal, the largest
    distance the image allows (the BraTS convention; `skimage.metrics.hausdorff_distance` gives
    inf here, which would make every mean over images inf).

    Examples
    --------
    >>> hd95([[1, 0, 0, 0]], [[0, 0, 0, 1]])
    3.0
    """
    pred, gt = _validate(pred, gt)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    pred_boundary, gt_boundary = _boundary(pred), _boundary(gt)
    if not pred_boundary.any() and not gt_boundary.any():
        return 0.0
    if not pred_boundary.any() or not gt_boundary.any():
        return math.hypot(*pred.shape)
    return float(
        max(
            np.percentile(_distances_to(gt_boundary, pred_boundary), percentile),
            np.percentile(_distances_to(pred_boundary, gt_boundary), percentile),
        )
    )


# --- topology -------------------------------------------------------------------------------------


def b0_error(pred, gt):
    """Betti-0 error: |components(pred) - components(gt)|, 8-connected foreground.

    Counts broken-up objects and extra specks alike.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float, a whole number >= 0. An empty mask has 0 components.

    Examples
    --------
    >>> b0_error([[1, 0, 1]], [[1, 1, 1]])
    1.0
    """
    pred, gt = _validate(pred, gt)
    return float(abs(_components(pred)[1] - _components(gt)[1]))


def b1_error(pred, gt):
    """Betti-1 error: |holes(pred) - holes(gt)|.

    A hole is a 4-connected background region that does not reach the image edge (so that
    components - holes is `skimage.measure.euler_number` with connectivity=2). Counts pinholes
    in the prediction and holes it filled in.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float, a whole number >= 0. An empty mask has 0 holes.

    Examples
    --------
    >>> ring = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    >>> b1_error(ring, [[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    1.0
    """
    pred, gt = _validate(pred, gt)
    return float(abs(_holes(pred) - _holes(gt)))


def spurious(pred, gt):
    """Number of predicted 8-connected components that share no pixel with the truth.

    The speckle count: false detections away from every true object.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    float, a whole number >= 0. Empty prediction: 0.0. Empty truth: the number of predicted
    components.

    Examples
    --------
    >>> spurious([[1, 0, 0, 1]], [[1, 1, 0, 0]])
    1.0
    """
    pred, gt = _validate(pred, gt)
    labels, count = _components(pred)
    overlapping = np.unique(labels[gt])
    return float(count - np.count_nonzero(overlapping))  # label 0 is background, not a component


# --- all at once ----------------------------------------------------------------------------------

_METRIC_FUNCTIONS = {
    "iou": iou,
    "dice": dice,
    "precision": precision,
    "recall": recall,
    "pixel_accuracy": pixel_accuracy,
    "boundary_f1": boundary_f1,
    "hd95": hd95,
    "b0_error": b0_error,
    "b1_error": b1_error,
    "spurious": spurious,
}


def evaluate_masks(pred, gt):
    """Every metric of this module for one image, with default options.

    Parameters
    ----------
    pred, gt : array_like of bool or {0, 1}, shape (height, width) or (height, width, 1)

    Returns
    -------
    dict[str, float] keyed by `METRIC_NAMES`, in that order.

    Examples
    --------
    >>> evaluate_masks([[1, 1, 0]], [[1, 0, 0]])["precision"]
    0.5
    """
    # Validated once here; on bool arrays each function's own validation is only a shape check.
    pred, gt = _validate(pred, gt)
    return {name: _METRIC_FUNCTIONS[name](pred, gt) for name in METRIC_NAMES}


def mean_metrics(preds, gts):
    """Mean of every metric over a set of images.

    Parameters
    ----------
    preds, gts : sequences of masks, or arrays of shape (count, height, width[, 1]), bool or
        {0, 1}; image sizes may differ between pairs. Threshold probabilities first, e.g.
        ``mean_metrics(probabilities > 0.5, masks)``.

    Returns
    -------
    dict[str, float] keyed by `METRIC_NAMES`: the arithmetic mean over images.

    Examples
    --------
    >>> mean_metrics([[[1, 0]], [[1, 1]]], [[[1, 0]], [[1, 0]]])["iou"]
    0.75
    """
    if len(preds) != len(gts):
        raise ValueError(f"Expected as many predictions as truths, got {len(preds)} and {len(gts)}")
    if len(preds) == 0:
        raise ValueError("Expected at least one image, got none")
    rows = [evaluate_masks(pred, gt) for pred, gt in zip(preds, gts)]
    return {name: float(np.mean([row[name] for row in rows])) for name in METRIC_NAMES}
