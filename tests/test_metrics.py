import math

import numpy as np
import pytest
from skimage.measure import euler_number, label
from skimage.metrics import hausdorff_distance
from skimage.segmentation import find_boundaries

from segment import metrics
from segment.metrics import METRIC_NAMES, evaluate_masks, mean_metrics


def mask(rows):
    """A bool mask from strings of '#' (foreground) and '.' (background)."""
    return np.array([[char == "#" for char in row] for row in rows])


# Every value below is worked out by hand. Unless a case says otherwise the images are under
# 88 x 88 pixels, so the DAVIS boundary tolerance is ceil(0.008 * diagonal) = 1 pixel.
# Boundaries are foreground pixels with a 4-neighbour in the background, outside the image
# counting as background. HD95 percentiles interpolate linearly: for n sorted distances the
# 95th percentile sits at index 0.95 * (n - 1).
CASES = {
    # 2x2 truth inside a 2x3 prediction: TP=4 FP=2 FN=0 TN=10.
    # iou 4/6, dice 8/10, precision 4/6, recall 4/4 (a swap would fail), accuracy 14/16.
    # Every pixel of both blocks is boundary; pred's extra column is 1 px from the truth, so
    # boundary P = R = 1. HD95: pred->gt distances [0,0,0,0,1,1], index 4.75 -> 1; gt->pred all 0.
    "asymmetric": (
        mask(["....", ".###", ".###", "...."]),
        mask(["....", ".##.", ".##.", "...."]),
        dict(iou=4 / 6, dice=0.8, precision=4 / 6, recall=1.0, pixel_accuracy=14 / 16,
             boundary_f1=1.0, hd95=1.0, b0_error=0, b1_error=0, spurious=0),
    ),
    # Two single-pixel specks, truth a 2x2 block elsewhere: TP=0 FP=2 FN=4 TN=19.
    # iou 0/6, dice 0/6, precision 0/2, recall 0/4, accuracy 19/25.
    # Specks (0,4), (4,4) lie 3 and sqrt(18) from the block, beyond 1 px: boundary F1 0.
    # HD95 pred->gt [3, sqrt 18] -> 3 + 0.95 (sqrt 18 - 3); gt->pred (0,0) 4, (0,1) 3,
    # (1,0) sqrt 17, (1,1) sqrt 10 -> sorted [3, sqrt 10, 4, sqrt 17] at index 2.85
    # -> 4 + 0.85 (sqrt 17 - 4) = 4.105, the smaller of the two.
    # Components 2 vs 1; both specks touch no truth pixel.
    "two specks": (
        mask(["....#", ".....", ".....", ".....", "....#"]),
        mask(["##...", "##...", ".....", ".....", "....."]),
        dict(iou=0.0, dice=0.0, precision=0.0, recall=0.0, pixel_accuracy=19 / 25,
             boundary_f1=0.0, hd95=3 + 0.95 * (math.sqrt(18) - 3), b0_error=1, b1_error=0,
             spurious=2),
    ),
    # A ring predicted for a solid 3x3 block: TP=8 FP=0 FN=1 TN=16.
    # iou 8/9, dice 16/17, precision 8/8, recall 8/9, accuracy 24/25.
    # The block's centre is interior, so both boundaries are the same 8 ring pixels: boundary
    # F1 1 and HD95 0. Only the Betti-1 error sees the pinhole: holes 1 vs 0.
    "ring": (
        mask([".....", ".###.", ".#.#.", ".###.", "....."]),
        mask([".....", ".###.", ".###.", ".###.", "....."]),
        dict(iou=8 / 9, dice=16 / 17, precision=1.0, recall=8 / 9, pixel_accuracy=24 / 25,
             boundary_f1=1.0, hd95=0.0, b0_error=0, b1_error=1, spurious=0),
    ),
    # A diagonal line predicted for a full 3x3 image: TP=3 FP=0 FN=6 TN=0.
    # iou 3/9, dice 6/12, precision 3/3, recall 3/9, accuracy 3/9.
    # Diagonal neighbours are one 8-connected component, so components 1 vs 1 (4-connectivity
    # would give 3 vs 1). Truth boundary: the 8 border pixels. Pred boundary: all 3 pixels,
    # each within 1 px of the border ring -> P 1; ring corners (0,2), (2,0) are sqrt 2 from
    # the diagonal -> R 6/8; F1 = 2 * 1 * 0.75 / 1.75 = 6/7.
    # HD95 pred->gt [0,0,1] at index 1.9 -> 0.9; gt->pred [0,0,1,1,1,1,sqrt 2,sqrt 2] at
    # index 6.65 -> sqrt 2.
    "diagonal": (
        mask(["#..", ".#.", "..#"]),
        mask(["###", "###", "###"]),
        dict(iou=1 / 3, dice=0.5, precision=1.0, recall=1 / 3, pixel_accuracy=1 / 3,
             boundary_f1=6 / 7, hd95=math.sqrt(2), b0_error=0, b1_error=0, spurious=0),
    ),
    # A diamond predicted for a full 3x3 image: TP=4 FP=0 FN=5 TN=0.
    # iou 4/9, dice 8/13, precision 1, recall 4/9, accuracy 4/9.
    # The diamond is one 8-connected component whose centre is a hole for a 4-connected
    # background (an 8-connected background would leak out through the corners): holes 1 vs 0.
    # Boundary: diamond pixels lie on the truth's border ring, the ring corners 1 px from
    # them -> F1 1. HD95 gt->pred [0,0,0,0,1,1,1,1] at index 6.65 -> 1.
    "diamond": (
        mask([".#.", "#.#", ".#."]),
        mask(["###", "###", "###"]),
        dict(iou=4 / 9, dice=8 / 13, precision=1.0, recall=4 / 9, pixel_accuracy=4 / 9,
             boundary_f1=1.0, hd95=1.0, b0_error=0, b1_error=1, spurious=0),
    ),
    # The truth plus a speck at (5,5), sqrt 8 from the block's corner (3,3) and so not
    # 8-connected to it: TP=9 FP=1 FN=0 TN=26.
    # iou 9/10, dice 18/19, precision 9/10, recall 1, accuracy 35/36.
    # Boundary P 8/9 (the speck is unmatched), R 8/8 -> F1 = 2 (8/9) / (17/9) = 16/17.
    # HD95 pred->gt [0 x8, sqrt 8] at index 7.6 -> 0.6 sqrt 8; gt->pred all 0.
    # Components 2 vs 1, and the speck touches no truth pixel.
    "extra speck": (
        mask(["......", ".###..", ".###..", ".###..", "......", ".....#"]),
        mask(["......", ".###..", ".###..", ".###..", "......", "......"]),
        dict(iou=0.9, dice=18 / 19, precision=0.9, recall=1.0, pixel_accuracy=35 / 36,
             boundary_f1=16 / 17, hd95=0.6 * math.sqrt(8), b0_error=1, b1_error=0,
             spurious=1),
    ),
    "identical": (
        mask([".....", ".###.", ".###.", "....."]),
        mask([".....", ".###.", ".###.", "....."]),
        dict(iou=1.0, dice=1.0, precision=1.0, recall=1.0, pixel_accuracy=1.0,
             boundary_f1=1.0, hd95=0.0, b0_error=0, b1_error=0, spurious=0),
    ),
    # Empty masks: nothing to find and nothing found is perfect.
    "both empty": (
        mask(["...", "...", "..."]),
        mask(["...", "...", "..."]),
        dict(iou=1.0, dice=1.0, precision=1.0, recall=1.0, pixel_accuracy=1.0,
             boundary_f1=1.0, hd95=0.0, b0_error=0, b1_error=0, spurious=0),
    ),
    # Empty prediction: no predicted pixel is wrong (precision 1, DAVIS), one missed (recall 0),
    # accuracy 8/9, HD95 the diagonal sqrt(3^2 + 3^2) (no boundary to measure to),
    # components 0 vs 1.
    "empty prediction": (
        mask(["...", "...", "..."]),
        mask(["...", ".#.", "..."]),
        dict(iou=0.0, dice=0.0, precision=1.0, recall=0.0, pixel_accuracy=8 / 9,
             boundary_f1=0.0, hd95=math.sqrt(18), b0_error=1, b1_error=0, spurious=0),
    ),
    # Empty truth: the predicted pixel is wrong (precision 0), nothing missed (recall 1),
    # and it is a spurious component.
    "empty truth": (
        mask(["...", ".#.", "..."]),
        mask(["...", "...", "..."]),
        dict(iou=0.0, dice=0.0, precision=0.0, recall=1.0, pixel_accuracy=8 / 9,
             boundary_f1=0.0, hd95=math.sqrt(18), b0_error=1, b1_error=0, spurious=1),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_computed_values(name):
    pred, gt, expected = CASES[name]
    assert set(expected) == set(METRIC_NAMES)
    for metric, value in expected.items():
        got = getattr(metrics, metric)(pred, gt)
        assert isinstance(got, float), metric
        assert got == pytest.approx(value, abs=1e-12), f"{name}: {metric}"
    assert evaluate_masks(pred, gt) == pytest.approx(expected, abs=1e-12)


def test_evaluate_masks_keys_in_order():
    pred, gt, _ = CASES["asymmetric"]
    assert tuple(evaluate_masks(pred, gt)) == METRIC_NAMES


def test_boundary_f1_tolerance():
    # A 3x3 block shifted one column: ring pixels shared exactly are (1,2), (1,3), (3,2),
    # (3,3), i.e. 4 of 8 on each side -> F1 0.5 with tolerance 0; every ring pixel is within
    # 1 px of the other ring -> F1 1 with the default tolerance of 1 px.
    gt = mask([".....", ".###.", ".###.", ".###.", "....."])
    pred = mask([".....", "..###", "..###", "..###", "....."])
    assert metrics.boundary_f1(pred, gt, tolerance=0) == pytest.approx(0.5)
    assert metrics.boundary_f1(pred, gt) == 1.0


def test_boundary_f1_default_tolerance_scales_with_the_image():
    # 128 x 128: ceil(0.008 * 181.02) = 2 px, so a 2 px shift still matches fully but 3 does not.
    gt = np.zeros((128, 128), bool)
    gt[40:80, 40:80] = True
    assert metrics.boundary_f1(np.roll(gt, 2, axis=1), gt) == 1.0
    assert metrics.boundary_f1(np.roll(gt, 3, axis=1), gt) < 1.0


def _independent_boundary(mask_array):
    # The same definition built differently: inner boundary of the padded mask.
    return find_boundaries(np.pad(mask_array, 1), mode="inner")[1:-1, 1:-1]


def test_hd95_agrees_with_skimage_where_it_must():
    rng = np.random.default_rng(0)
    for _ in range(20):
        # Single pixels: one distance each way, so every percentile is the Hausdorff distance.
        a, b = np.zeros((2, 9, 7), bool)
        a[tuple(rng.integers(0, (9, 7)))] = True
        b[tuple(rng.integers(0, (9, 7)))] = True
        assert metrics.hd95(a, b) == pytest.approx(hausdorff_distance(a, b))
        # Any masks at the 100th percentile: the Hausdorff distance between the boundaries.
        a, b = rng.random((2, 12, 10)) < 0.3
        expected = hausdorff_distance(_independent_boundary(a), _independent_boundary(b))
        assert metrics.hd95(a, b, percentile=100) == pytest.approx(expected)
        assert metrics.hd95(a, b) <= metrics.hd95(a, b, percentile=100) + 1e-12
    # Empty cases: both empty agrees with skimage (0); exactly one empty is the image diagonal
    # where skimage says inf, so that means over images stay finite.
    empty, dot = np.zeros((2, 4, 4), bool)
    dot[1, 2] = True
    assert metrics.hd95(empty, empty) == hausdorff_distance(empty, empty) == 0.0
    for a, b in [(empty, dot), (dot, empty)]:
        assert hausdorff_distance(a, b) == np.inf
        assert metrics.hd95(a, b) == pytest.approx(np.hypot(4, 4))


def test_hd95_is_symmetric():
    pred, gt, _ = CASES["two specks"]
    assert metrics.hd95(pred, gt) == metrics.hd95(gt, pred)


def _holes_by_flood_fill(mask_array):
    # Background regions (4-connected) of the padded mask, minus the one outside the image.
    return label(~np.pad(mask_array, 1), connectivity=1).max() - 1


def test_b1_counts_holes_like_a_flood_fill():
    rng = np.random.default_rng(1)
    empty = np.zeros((10, 10), bool)
    for _ in range(50):
        random_mask = rng.random((10, 10)) < 0.6
        assert metrics.b1_error(random_mask, empty) == _holes_by_flood_fill(random_mask)


def test_b1_hole_cut_open_by_the_image_edge_is_not_a_hole():
    u_shape = mask(["#.#", "#.#", "###"])
    assert metrics.b1_error(u_shape, np.zeros_like(u_shape)) == 0.0


def test_spurious_diagonal_contact_is_not_overlap():
    # The speck touches the truth only at a corner: it shares no pixel, so it is spurious.
    pred = mask(["#..", ".#.", "..."])
    gt = mask(["#..", "...", "..."])
    assert metrics.spurious(pred, gt) == 0.0  # one 8-connected component, overlapping
    pred = mask(["...", ".#.", "..."])
    assert metrics.spurious(pred, gt) == 1.0


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_input_forms(metric):
    pred, gt, expected = CASES["asymmetric"]
    function = getattr(metrics, metric)
    # (H, W, 1) and 0/1 numbers are the same masks.
    assert function(pred[..., None], gt.astype(np.float32)) == pytest.approx(expected[metric])
    assert function(pred.astype(np.uint8), gt[..., None]) == pytest.approx(expected[metric])


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.zeros((3, 3)), np.zeros((3, 4)), r"same shape, got \(3, 3\) and \(3, 4\)"),
        (np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), r"pred must have shape .* got \(3, 3, 3\)"),
        (np.zeros(5), np.zeros(5), r"got \(5,\)"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "pred is empty"),
        (np.zeros((2, 2)), np.array([[0, 2], [1, 0.5]]), r"gt must be binary .* 0\.5, 2"),
        (np.array([["a"]]), np.zeros((1, 1)), "dtype <U1"),
    ],
)
def test_invalid_inputs(pred, gt, message):
    for metric in METRIC_NAMES:
        with pytest.raises(ValueError, match=message):
            getattr(metrics, metric)(pred, gt)
    with pytest.raises(ValueError, match=message):
        evaluate_masks(pred, gt)


def test_invalid_options():
    pred, gt, _ = CASES["asymmetric"]
    with pytest.raises(ValueError, match="tolerance"):
        metrics.boundary_f1(pred, gt, tolerance=-1)
    with pytest.raises(ValueError, match="percentile"):
        metrics.hd95(pred, gt, percentile=101)
    with pytest.raises(TypeError):
        metrics.hd95(pred, gt, 50)  # options are keyword-only


def _expected_means(names):
    return {metric: np.mean([CASES[name][2][metric] for name in names]) for metric in METRIC_NAMES}


def test_mean_metrics():
    # Sequences of masks of different sizes...
    names = ["asymmetric", "ring", "diagonal"]
    preds = [CASES[name][0] for name in names]
    gts = [CASES[name][1] for name in names]
    assert mean_metrics(preds, gts) == pytest.approx(_expected_means(names))
    # ...and batched model-style arrays (count, height, width, 1) of 0/1 floats.
    names = ["ring", "two specks"]
    preds = np.stack([CASES[name][0] for name in names])[..., None].astype(np.float32)
    gts = np.stack([CASES[name][1] for name in names])[..., None].astype(np.float32)
    result = mean_metrics(preds, gts)
    assert tuple(result) == METRIC_NAMES
    assert result == pytest.approx(_expected_means(names))
    with pytest.raises(ValueError, match="as many"):
        mean_metrics(preds, gts[:1])
    with pytest.raises(ValueError, match="at least one"):
        mean_metrics([], [])


def test_metric_functions_do_not_modify_inputs():
    pred, gt, _ = CASES["two specks"]
    pred_copy, gt_copy = pred.copy(), gt.copy()
    evaluate_masks(pred, gt)
    assert np.array_equal(pred, pred_copy) and np.array_equal(gt, gt_copy)


def test_holes_and_components_agree_with_scikit_image_euler_number():
    # components - holes is the Euler number of an 8-connected foreground with a 4-connected
    # background (scikit-image's connectivity=2), on any shape, including 1-pixel-wide masks.
    rng = np.random.default_rng(2)
    for _ in range(200):
        height, width = rng.integers(1, 24, size=2)
        random_mask = rng.random((height, width)) < rng.random()
        _, components = label(random_mask, connectivity=2, return_num=True)
        holes = components - euler_number(random_mask, connectivity=2)
        empty = np.zeros_like(random_mask)
        assert metrics.b1_error(random_mask, empty) == holes
        assert metrics.spurious(random_mask, empty) == components
