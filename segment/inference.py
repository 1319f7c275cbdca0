"""Running a trained segmenter on users' images: safe loading, any-size prediction, outputs.

A model file is loaded in Keras safe mode only, so a file from elsewhere can never run code.
Images of any size go through the fully convolutional network either whole (padded up to the
network's size multiple) or, when larger than a tile, as overlapping tiles that are cross-faded
where they overlap, so memory stays bounded and no seams show. A model trained on whole images
at a working size (`train.py --data`) carries that size, and images are first scaled to it.

Typical use:

    model = load_segmenter("runs/shapes/model.keras")
    probability = predict_probability(model, read_image("photo.jpg"))
    mask = probability > 0.5
"""

import glob
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

import cv2
import keras
import numpy as np
from tqdm import tqdm

# Importing the package registers every custom class (layers, losses, optimizers, model), which
# safe-mode loading needs to rebuild a saved segmenter without `custom_objects`.
import segment  # noqa: F401
from segment.imageio import DataError, is_image_file, read_image, scale_image, scaled_shape, write_png
from segment.model import DEFAULT_INFERENCE

__all__ = [
    "error_picture",
    "OUTPUT_KINDS",
    "REFINE_SIDE",
    "REFINE_SURE",
    "check_min_part",
    "check_scales",
    "clean_mask",
    "collect_inputs",
    "find_latest_model",
    "finish_mask",
    "load_segmenter",
    "model_threshold",
    "model_min_hole",
    "model_min_part",
    "model_refine",
    "model_to_use",
    "model_scales",
    "model_tta",
    "output_path",
    "predict_mask",
    "predict_probability",
    "refine_mask",
    "render_output",
    "render_outputs",
    "segment_files",
    "size_multiple",
    "tile_window",
    "working_size",
]

OUTPUT_KINDS = ("mask", "prob", "overlay", "cutout")

# GrabCut refinement (`refine_mask`): pixels whose probability is above REFINE_SURE are fixed
# as foreground, those below 1 - REFINE_SURE as background, and GrabCut labels the rest from
# the image's own colours, on the image scaled down to at most REFINE_SIDE pixels a side
# (0.3-0.5 s per image there on 2 cores). A model uses it when training found that it scored
# better on the validation images (`segment.training`): on ECSSD photographs, whose outlines
# a 128-pixel working size blurs, test IoU 0.599 -> 0.651 and 0.590 -> 0.639 (two models,
# sure above 0.97); on Kvasir-SEG polyps, whose colours barely differ from the tissue around
# them, it cost 0.04 on validation and is left off (README, "On your own data"). Sure above
# 0.995 rather than 0.97 leaves GrabCut more of each outline: validation IoU +0.026, +0.006
# and +0.005 for three ECSSD models (README).
REFINE_SURE = 0.995
REFINE_SIDE = 400
_REFINE_ITERATIONS = 3
_REFINE_LEAST_PIXELS = 16  # GrabCut's colour models need samples on both sides

_OVERLAY_TINT = (255, 40, 40)  # red wash over the foreground
_OVERLAY_OPACITY = 0.4
_OUTLINE_COLOUR = (255, 255, 0)  # yellow: visible on both the tint and most photos


# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------


def load_segmenter(path):
    """Load a saved segmenter in Keras safe mode, for inference only.

    A native `.keras` archive is loaded in Keras safe mode, which refuses Python lambdas
    (stored as bytecode) and classes that are not registered with Keras; nothing in the file
    is unpickled or evaluated. An exported `.onnx`, `.tflite` or `.xml` file
    (`scripts/export.py`) is opened with onnxruntime, LiteRT or OpenVINO
    (`segment.export.load_exported`).

    Args:
        path: a `model.keras` file written by training, or an exported model.

    Returns:
        The `keras.Model`, uncompiled (or the exported model behind the same interface).

    Raises:
        DataError: the file is missing, not a Keras model, corrupt, or holds code or classes
            that safe mode refuses; the one-line message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    if path.suffix.lower() in (".onnx", ".tflite", ".xml"):
        from segment.export import load_exported

        return load_exported(path)
    if path.suffix.lower() != ".keras":
        raise DataError(
            f"{path}: not a model file (.keras, or .onnx/.tflite/.xml from scripts/export.py)"
        )
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras reports bad files as ValueError, TypeError, KeyError...
        raise DataError(f"{path}: {_load_failure_reason(error)}") from None


def _load_failure_reason(error):
    """One line saying why Keras refused a model file."""
    message = str(error)
    if "lambda" in message.lower() and "safe_mode" in message:
        return "model holds a Python lambda (arbitrary code); refused in safe mode"
    # Unknown classes come wrapped in a long "could not be deserialized" message.
    unknown = re.search(r"Could not locate (class|function) '([^']+)'", message)
    if unknown:
        kind, name = unknown.groups()
        return f"model uses {kind} '{name}', which is not registered with Keras here; refused"
    if isinstance(error, KeyError) or "not found" in message.lower():
        return "not a Keras model file (corrupt or another format)"
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return f"cannot load model ({first_line[:200]})"


def find_latest_model(runs_dir="runs"):
    """The most recently written `runs_dir/*/model.keras`, by modification time.

    Args:
        runs_dir: folder holding one sub-folder per training run. Defaults to "runs".

    Returns:
        `pathlib.Path` of the newest model, or None if there is none.
    """
    candidates = [path for path in Path(runs_dir).glob("*/model.keras") if path.is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def model_to_use(path, runs_dir="runs"):
    """`path`, or when it is None the newest model in `runs_dir` (`find_latest_model`).

    Raises:
        DataError: no path given and no model in `runs_dir`.
    """
    path = path or find_latest_model(runs_dir)
    if path is None:
        raise DataError("no model found; train one with python scripts/train.py")
    return Path(path)


def size_multiple(model):
    """The factor that the network's input height and width must be multiples of.

    A model may state it itself as an integer attribute `size_multiple`. Otherwise it is the
    product of the strides of every downsampling layer (pooling layers, strided convolutions;
    transposed convolutions upsample and are skipped), searched through nested layers. For a
    chain of downsampling steps, such as a U-Net encoder of depth 4, this is exactly `2**4 = 16`;
    for parallel branches it is a common multiple of what each branch needs, which is still
    a valid (if larger than necessary) padding target.

    Args:
        model: a `keras.Model`.

    Returns:
        int >= 1.
    """
    declared = getattr(model, "size_multiple", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    upsampling = (
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )
    multiple = 1
    # `_flatten_layers` also reaches layers nested inside custom blocks, which `model.layers`
    # does not list.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        strides = getattr(layer, "strides", None)
        if strides is None or isinstance(layer, upsampling):
            continue
        if isinstance(strides, int):
            strides = (strides, strides)
        # Height and width share one padding target, which must suit both axes.
        multiple *= math.lcm(*(int(stride) for stride in strides[:2]))
    return multiple


def tile_window(model, *, tile, overlap):
    """The side of the tiles fed to `model`: `tile` rounded down to the size multiple.

    Args:
        model: a `keras.Model`.
        tile: requested tile side.
        overlap: requested overlap between tiles.

    Returns:
        int, a multiple of `size_multiple(model)`.

    Raises:
        ValueError: `overlap` leaves no room to step from one tile to the next (tiles start on
            the network's pooling grid, so they step by at least the size multiple).
    """
    multiple = size_multiple(model)
    window = max(multiple, tile // multiple * multiple)
    if not 0 <= overlap <= window - multiple:
        raise ValueError(
            f"overlap must be between 0 and {window - multiple} for tile {tile} (tiles are "
            f"multiples of {multiple} for this model), got {overlap}"
        )
    return window


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def predict_probability(
    model, image, *, tile=512, overlap=64, tta=None, resize=None, scales=None, batch_size=4
):
    """Foreground probability for one image of any size, at the image's own size.

    The image is first brought to the scale the model learnt at: a model trained on whole
    images scaled to a working size (`train.py --data`) records that size, and every image is
    scaled, keeping its aspect ratio, so that its longer side has that many pixels; the
    probability is scaled back at the end. A model trained at the images' own scale (the
    synthetic default) sees the pixels as they are. Then the network runs on the image:

    - An image no larger than `tile` is predicted whole, padded by reflection up to the size
      multiple.
    - A larger one is cut into `tile`-sized windows overlapping by at least `overlap` pixels;
      each window's prediction is weighted by a ramp across the overlap (zero at the tile's
      edge, where the network lacks context, then a raised cosine) and the sum is normalised
      by the total weight, so no seam shows. Memory is one float32 `(height, width)`
      accumulator plus `batch_size` tiles, whatever the image size.

    Args:
        model: a `keras.Model` mapping `(batch, h, w, 3)` to sigmoid `(batch, h, w, 1)`.
        image: float `(height, width, 3)` RGB in [0, 1] (gray `(height, width)` is accepted).
        tile: largest window side fed to the network, rounded down to the size multiple.
            Defaults to 512.
        overlap: least number of pixels shared by neighbouring tiles. Predictions within
            `overlap // 4` of a tile edge are discarded, so a larger overlap suits a network
            with a larger receptive field. Defaults to 64.
        tta: average over horizontal and vertical flips (4 passes). Defaults to the model's
            own setting (`model_tta`): on for models trained at a working size, where a
            pass is cheap, off otherwise.
        resize: the longer side, in pixels, to scale the image to first; 0 for the image's own
            scale. Defaults to None: the model's own `working_size` (see `working_size`).
        scales: factors of that side (or of the image's own longer side) to predict at; the
            probabilities, each mapped back to the image, are averaged. Defaults to the
            model's own setting (`model_scales`): the training scale range 0.75-1.25 in
            steps of 1/8 for models trained at a working size, else `(1.0,)`.
        batch_size: tiles per network call. Defaults to 4.

    Returns:
        float32 array `(height, width)` with values in [0, 1].
    """
    image = _as_rgb(image)
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
    options = dict(
        tile=tile, overlap=overlap, tta=model_tta(model) if tta is None else tta,
        batch_size=batch_size,
    )
    side = working_size(model) if resize is None else resize
    scales = model_scales(model) if scales is None else check_scales(scales)
    if scales == (1.0,):
        return _predict_at(model, image, side=side, **options)
    # Several scales: a running sum, so memory stays one (height, width) array more.
    base = side or max(image.shape[:2])
    total = np.zeros(image.shape[:2], dtype=np.float32)
    for scale in scales:
        total += _predict_at(model, image, side=max(1, round(base * scale)), **options)
    return total / len(scales)


def _predict_at(model, image, *, side, **options):
    """The probability at the image's own size, predicted with the longer side at `side`
    pixels (None or 0: as it is)."""
    if side and side != max(image.shape[:2]):
        return _predict_scaled(model, image, side=side, **options)
    return _predict_tiled(model, image, **options)


def _predict_tiled(model, image, *, tile, overlap, tta, batch_size):
    multiple = size_multiple(model)
    window = tile_window(model, tile=tile, overlap=overlap)
    height, width = image.shape[:2]
    rows = _tile_layout(height, window=window, overlap=overlap, multiple=multiple)
    columns = _tile_layout(width, window=window, overlap=overlap, multiple=multiple)

    accumulated = np.zeros((height, width), dtype=np.float32)
    tiles = [(row, column) for row in rows for column in columns]
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        batch = np.stack([_cut_tile(image, row, column) for row, column in chunk])
        for (row, column), prediction in zip(chunk, _predict_batch(model, batch, tta=tta)):
            weight = np.outer(row.weight[: row.inside], column.weight[: column.inside])
            inside = prediction[: row.inside, : column.inside]
            accumulated[row.pixels, column.pixels] += inside * weight
    # The tile weight is separable and the tiles form a grid, so the summed weight is the outer
    # product of the per-axis sums: no second (height, width) array is needed for it.
    accumulated /= _summed_weight(rows, height)[:, None]
    accumulated /= _summed_weight(columns, width)[None, :]
    return np.clip(accumulated, 0.0, 1.0, out=accumulated)


def _inference_setting(model, key):
    """One of the settings saved with a `SegmentationModel`; `DEFAULT_INFERENCE`'s for any
    other model."""
    return getattr(model, "inference", {}).get(key, DEFAULT_INFERENCE[key])


def model_threshold(model):
    """The probability above which a model's pixel is foreground: its saved setting, or 0.5."""
    return float(_inference_setting(model, "threshold"))


def model_tta(model):
    """Whether a model's predictions are flip-averaged by default: its saved setting, or no."""
    return bool(_inference_setting(model, "tta"))


def model_refine(model):
    """Whether a model's masks are refined with GrabCut by default (`refine_mask`): its saved
    setting, or no."""
    return bool(_inference_setting(model, "refine"))


def model_min_part(model):
    """The share of an image's pixels below which a model's predicted foreground parts are
    dropped by default (`clean_mask`): its saved setting, or 0 (none)."""
    return check_min_part(_inference_setting(model, "min_part"))


def model_min_hole(model):
    """The share of an image's pixels below which holes in a model's masks are filled by
    default (`clean_mask`): its saved setting, or 0 (none)."""
    return check_min_part(_inference_setting(model, "min_hole"))


def check_min_part(min_part):
    """`min_part` as a float; ValueError unless it is a share in [0, 1)."""
    share = float(min_part)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"Expected a share of the image's pixels in [0, 1), got {min_part}")
    return share


def model_scales(model):
    """The factors of the working size a model's predictions are averaged over by default:
    its saved setting, or `(1.0,)`."""
    return check_scales(_inference_setting(model, "scales"))


def check_scales(scales):
    """`scales` as a tuple of floats; ValueError unless there is at least one and every one is
    finite and positive."""
    scales = tuple(float(scale) for scale in scales)
    if not scales or not all(math.isfinite(scale) and scale > 0 for scale in scales):
        raise ValueError(f"Expected one or more positive scales, got {list(scales)}")
    return scales


def working_size(model):
    """The longer image side a model was trained at, or None for its images' own scale.

    Read from the settings saved with a `SegmentationModel` (`model.inference`); any other
    model is taken to work at the images' own scale.
    """
    side = _inference_setting(model, "working_size")
    return int(side) if side else None


def predict_mask(
    model, image, *, threshold=None, refine=None, min_area=0, fill_holes=0, min_part=None,
    min_hole=None, **predict_options
):
    """Binary foreground mask for one image, at the image's own size.

    Args:
        model: a `keras.Model`, as for `predict_probability`.
        image: float `(height, width, 3)` RGB in [0, 1].
        threshold: pixels with probability above it are foreground. Defaults to the model's
            own (`model_threshold`).
        refine: refine the mask with GrabCut on the image's colours (`refine_mask`).
            Defaults to the model's own (`model_refine`; off unless training chose it).
        min_area: remove foreground parts smaller than this many pixels. Defaults to 0 (off).
        fill_holes: fill background holes smaller than this many pixels. Defaults to 0 (off).
        min_part: remove foreground parts smaller than this share of the image's pixels.
            Defaults to the model's own (`model_min_part`; 0, off, unless training chose one).
        min_hole: fill holes smaller than this share of the image's pixels. Defaults to the
            model's own (`model_min_hole`; 0, off, unless training chose one).
        **predict_options: passed to `predict_probability` (`tile`, `overlap`, `tta`, ...).

    Returns:
        bool array `(height, width)`.
    """
    probability = predict_probability(model, image, **predict_options)
    return finish_mask(
        model, image, probability, threshold=threshold, refine=refine, min_area=min_area,
        fill_holes=fill_holes, min_part=min_part, min_hole=min_hole,
    )


def finish_mask(
    model, image, probability, *, threshold=None, refine=None, min_area=0, fill_holes=0,
    min_part=None, min_hole=None,
):
    """The mask of `image` from its predicted `probability`: thresholded, refined with GrabCut
    if asked, and cleaned (`clean_mask`). The options are `predict_mask`'s; None takes the
    model's own."""
    threshold = model_threshold(model) if threshold is None else threshold
    refine = model_refine(model) if refine is None else refine
    min_part = model_min_part(model) if min_part is None else min_part
    min_hole = model_min_hole(model) if min_hole is None else min_hole
    if refine:
        mask = refine_mask(image, probability, threshold=threshold)
    else:
        mask = probability > threshold
    return clean_mask(
        mask, min_area=min_area, fill_holes=fill_holes, min_part=min_part, min_hole=min_hole
    )


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
    image = _as_rgb(image)
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
        labels, areas = _regions(~mask, connectivity=4)
        filled = areas < fill_holes
        filled[0] = False  # the foreground
        filled[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
        mask = mask | filled[labels]
    return mask


def _regions(mask, *, connectivity):
    """`(labels, areas)` of the connected regions of True pixels: label 0 for the False
    pixels, `areas[label]` pixels in each (OpenCV: int32 labels, a quarter of the memory of
    scikit-image's int64 on a 64-megapixel mask)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
    )
    return labels, stats[:, cv2.CC_STAT_AREA]


def _as_rgb(image):
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"Expected a float image in [0, 1] (as segment.imageio.read_image returns), "
            f"got {image.dtype}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an image of shape (height, width, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected a non-empty image, got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


class _Span(NamedTuple):
    """Where one tile lies along one axis."""

    start: int
    inside: int  # how many of the tile's pixels lie in the image (the rest is padding)
    weight: np.ndarray  # blending weight of each of the tile's pixels

    @property
    def pixels(self):
        """The image pixels the tile covers, as a slice."""
        return slice(self.start, self.start + self.inside)


def _tile_layout(length, *, window, overlap, multiple):
    """The tiles along one axis, as `_Span`s.

    Starts are multiples of `multiple`, so each tile meets the network's pooling grid where the
    whole image would, and tiled predictions match untiled ones away from tile edges. The axis
    is conceptually padded up to `multiple`; only the last tile reaches into that padding.
    """
    padded = _round_up(length, multiple)
    window = min(window, padded)
    step = max(multiple, (window - overlap) // multiple * multiple)
    starts = list(range(0, padded - window, step)) + [padded - window]
    fade_in = _fade_in(min(overlap, window))
    layout = []
    for index, start in enumerate(starts):
        weight = np.ones(window, dtype=np.float32)
        if index > 0:  # fade in from the previous tile; image borders keep full weight
            weight[: len(fade_in)] *= fade_in
        if index < len(starts) - 1:
            weight[window - len(fade_in) :] *= fade_in[::-1]
        layout.append(_Span(start, min(window, length - start), weight))
    return layout


def _fade_in(overlap):
    """Blending weights rising from 0 to 1 across an overlap of `overlap` pixels.

    The outer quarter, where the network saw the tile's edge instead of the image around it,
    gets weight 0; the middle half rises along a raised cosine; the inner quarter is 1. The
    neighbour's fade-out is the mirror image, so where two tiles overlap by exactly `overlap`
    the weights sum to 1, and where they overlap by more the neighbour's full weight covers
    this tile's zero quarter: the summed weight is positive everywhere.
    """
    quarter = overlap // 4
    middle = overlap - 2 * quarter
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(middle) + 0.5) / max(middle, 1))
    return np.concatenate([np.zeros(quarter), rise, np.ones(quarter)]).astype(np.float32)


def _summed_weight(layout, length):
    total = np.zeros(length, dtype=np.float32)
    for span in layout:
        total[span.pixels] += span.weight[: span.inside]
    return total


def _cut_tile(image, row, column):
    """One window of the image; the part beyond the image's end is filled by reflection."""
    tile = image[row.pixels, column.pixels]
    padding = ((0, len(row.weight) - row.inside), (0, len(column.weight) - column.inside), (0, 0))
    return np.pad(tile, padding, mode="reflect") if padding[0][1] or padding[1][1] else tile


def _predict_batch(model, batch, *, tta):
    """Probabilities `(batch, h, w)` for a `(batch, h, w, 3)` array, flip-averaged if `tta`."""
    if not tta:
        return _run_network(model, batch)
    # The four flips of the plane, run together: one network call of four small images costs
    # about 0.6x four calls of one (a 128-pixel image on 2 CPU cores). Calls stay no larger
    # than the batch itself or four images, whichever is more. Each prediction is flipped back
    # before averaging.
    flips = [(), (1,), (2,), (1, 2)]
    flipped = np.concatenate([np.flip(batch, axis=axes) if axes else batch for axes in flips])
    call = max(len(batch), len(flips))
    predictions = np.concatenate([
        _run_network(model, np.ascontiguousarray(flipped[first : first + call]))
        for first in range(0, len(flipped), call)
    ])
    total = np.zeros(batch.shape[:3], dtype=np.float32)
    for axes, prediction in zip(flips, np.split(predictions, len(flips))):
        total += np.flip(prediction, axis=axes) if axes else prediction
    return total / len(flips)


def _run_network(model, batch):
    output = np.asarray(model.predict_on_batch(batch))
    if output.ndim != 4 or output.shape[3] != 1 or output.shape[1:3] != batch.shape[1:3]:
        raise ValueError(
            f"Expected the model to map {batch.shape} to (batch, h, w, 1), got {output.shape}"
        )
    return output[..., 0].astype(np.float32, copy=False)


def _predict_scaled(model, image, *, side, **predict_options):
    height, width = image.shape[:2]
    scaled = scale_image(image, scaled_shape(image.shape, side))
    probability = _predict_tiled(model, scaled, **predict_options)
    probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(probability.reshape(height, width), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def render_output(kind, image, probability, mask):
    """One output picture.

    Args:
        kind: one of `OUTPUT_KINDS`: "mask" (uint8 0/255), "prob" (uint8 gray, probability
            times 255), "overlay" (uint8 RGB: the image, foreground tinted and outlined) or
            "cutout" (uint8 RGBA: the foreground with a transparent, zeroed background).
        image: `(height, width, 3)` RGB, float in [0, 1] or uint8.
        probability: float `(height, width)` in [0, 1].
        mask: bool `(height, width)`.

    Returns:
        uint8 array `(height, width)`, `(height, width, 3)` or `(height, width, 4)`.
    """
    # Written for large images: uint8 throughout and masked copies (`np.copyto(where=)`)
    # rather than boolean indexing, which would build index arrays of 16 bytes per pixel.
    if kind == "mask":
        return mask.astype(np.uint8) * 255
    if kind == "prob":
        return _to_uint8(probability)
    rgb = _to_uint8(image)
    if kind == "overlay":
        return _overlay(rgb, mask)
    if kind == "cutout":
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        np.copyto(rgba[..., :3], rgb, where=mask[..., None])
        rgba[..., 3] = mask
        rgba[..., 3] *= 255
        return rgba
    raise ValueError(f"Unknown output kind {kind!r}; expected one of {OUTPUT_KINDS}")


def render_outputs(image, probability, mask, kinds=OUTPUT_KINDS):
    """`{kind: picture}` for each of `kinds`; see `render_output`."""
    return {kind: render_output(kind, image, probability, mask) for kind in kinds}


def _to_uint8(image):
    if image.dtype == np.uint8:
        return image
    return cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates, no float copy


def error_picture(predicted, truth):
    """An RGB picture of a prediction against the truth, for contact sheets.

    White: correct foreground; red: false foreground; blue: missed foreground; black: correct
    background. Both arguments are bool `(H, W)`; returns uint8 `(H, W, 3)`.
    """
    picture = np.zeros(truth.shape + (3,), np.uint8)
    picture[predicted & truth] = 255
    picture[predicted & ~truth] = (230, 40, 40)
    picture[~predicted & truth] = (40, 90, 230)
    return picture


def _overlay(rgb, mask):
    # rgb * (1 - opacity) + tint * opacity, in place on one uint8 copy.
    overlay = cv2.convertScaleAbs(rgb, alpha=1.0 - _OVERLAY_OPACITY)
    tint = tuple(channel * _OVERLAY_OPACITY for channel in _OVERLAY_TINT) + (0.0,)  # cv2 scalar
    cv2.add(overlay, tint, dst=overlay)
    np.copyto(overlay, rgb, where=~mask[..., None])
    # The outline is the inner rim of the foreground, thick enough to see on large images;
    # erosion treats outside the image as foreground, so image borders are not outlined.
    thickness = max(1, round(max(mask.shape) / 400))
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), dtype=np.uint8)
    mask_u8 = mask.view(np.uint8)
    rim = mask_u8 > cv2.erode(mask_u8, kernel)
    np.copyto(overlay, np.array(_OUTLINE_COLOUR, dtype=np.uint8), where=rim[..., None])
    return overlay


def output_path(out_dir, source, kind):
    """Where the `kind` output for `source` goes: `out_dir/<stem>_<kind>.png`."""
    return Path(out_dir) / f"{Path(source).stem}_{kind}.png"


# --------------------------------------------------------------------------------------------
# Batches of files
# --------------------------------------------------------------------------------------------


def collect_inputs(inputs, *, recursive=False):
    """Image files named by command-line arguments, in order, without duplicates.

    A folder gives its image files (by extension, hidden files skipped), descending into
    sub-folders only if `recursive`. A glob pattern is expanded here (with `**` when
    `recursive`) so it works even when the shell did not expand it. Any other argument is taken
    as a file as given, even a missing one or one with another extension, so that reading it
    reports what is wrong with it.

    Args:
        inputs: paths, folders or glob patterns.
        recursive: descend into sub-folders. Defaults to False.

    Returns:
        `(paths, unmatched)`: the `pathlib.Path`s found, and the arguments that matched nothing.
    """
    paths, unmatched, seen = [], [], set()

    def add(path):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for argument in inputs:
        argument = str(argument)
        if Path(argument).is_dir():
            found = _images_in_folder(Path(argument), recursive=recursive)
        elif glob.has_magic(argument):
            found = []
            for match in sorted(glob.glob(argument, recursive=recursive)):
                match = Path(match)
                if match.is_dir():
                    found.extend(_images_in_folder(match, recursive=recursive))
                elif is_image_file(match) and not match.name.startswith("."):
                    found.append(match)
        else:
            found = [Path(argument)]
        if not found:
            unmatched.append(argument)
        for path in found:
            add(path)
    return paths, unmatched


def _images_in_folder(folder, *, recursive):
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and is_image_file(path) and not path.name.startswith(".")
    )


def segment_files(
    paths,
    model,
    out_dir,
    *,
    save=("mask",),
    overwrite=False,
    threshold=None,
    refine=None,
    min_area=0,
    fill_holes=0,
    min_part=None,
    min_hole=None,
    **predict_options,
):
    """Segment image files and write their outputs, carrying on past bad files.

    Each file that cannot be done gets one line on stderr, naming it and the reason. Outputs
    are written atomically as `out_dir/<stem>_<kind>.png`. An input file is never overwritten,
    even with `overwrite`, and two inputs with the same stem do not overwrite each other.

    Args:
        paths: image files.
        model: a `keras.Model` (see `load_segmenter`).
        out_dir: existing folder for the outputs.
        save: output kinds to write, from `OUTPUT_KINDS`. Defaults to ("mask",).
        overwrite: replace outputs already in `out_dir`. Defaults to False.
        threshold: see `predict_mask`. Defaults to the model's own.
        refine: see `predict_mask`. Defaults to the model's own.
        min_area: see `predict_mask`. Defaults to 0 (off).
        fill_holes: see `predict_mask`. Defaults to 0 (off).
        min_part: see `predict_mask`. Defaults to the model's own.
        min_hole: see `predict_mask`. Defaults to the model's own.
        **predict_options: passed to `predict_probability` (`tile`, `overlap`, `tta`, ...).

    Returns:
        `(done, failed)`: the paths done, and `(path, reason)` for each that failed.
    """
    unknown = set(save) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"Unknown output kinds {sorted(unknown)}; expected {OUTPUT_KINDS}")
    paths = [Path(path) for path in paths]
    finish = dict(threshold=threshold, refine=refine, min_area=min_area, fill_holes=fill_holes,
                  min_part=min_part, min_hole=min_hole)
    inputs = {path.resolve() for path in paths}
    written_by = {}  # output file -> the input it was written for, in this run
    done, failed = [], []
    for path in tqdm(paths, desc="segmenting", unit="image", disable=None):
        try:
            targets = {kind: output_path(out_dir, path, kind) for kind in save}
            _check_targets(path, targets.values(), inputs, written_by, overwrite=overwrite)
            image = read_image(path)
            probability = predict_probability(model, image, **predict_options)
            mask = finish_mask(model, image, probability, **finish)
            # The outputs need 8-bit colour only; the float image is four times larger.
            image = _to_uint8(image)
            for kind, target in targets.items():
                write_png(target, render_output(kind, image, probability, mask))
                written_by[target.resolve()] = path
        except Exception as error:  # one bad file must not end the batch
            reason = str(error) if isinstance(error, DataError) else _describe(error)
            reason = reason if reason.startswith(str(path)) else f"{path}: {reason}"
            tqdm.write(reason.splitlines()[0], file=sys.stderr)
            failed.append((path, reason))
        else:
            done.append(path)
    return done, failed


def _check_targets(path, targets, inputs, written_by, *, overwrite):
    for target in targets:
        key = target.resolve()
        if key in inputs:
            raise DataError(f"{path}: output {target} would overwrite an input file")
        if key in written_by:
            raise DataError(f"{path}: output {target} was already written for {written_by[key]}")
        if target.exists() and not overwrite:
            raise DataError(f"{path}: output {target} exists; use --overwrite to replace it")


def _describe(error):
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
