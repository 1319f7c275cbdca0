"""Any-size prediction: the working scale, tiles, flip and scale averaging."""


import cv2
import numpy as np

from segment.imageio import as_float_rgb, scale_image, scaled_shape
from segment.inference.masks import finish_mask
from segment.inference.tiling import (
    cut_tile,
    size_multiple,
    summed_weight,
    tile_layout,
    tile_window,
)
from segment.model import InferenceSettings, check_scales

__all__ = ["predict_mask", "predict_probability"]


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
            own setting (`InferenceSettings.tta`): on for models trained at a working size, where a
            pass is cheap, off otherwise.
        resize: the longer side, in pixels, to scale the image to first; 0 for the image's own
            scale. Defaults to None: the model's own (`InferenceSettings.working_size`).
        scales: factors of that side (or of the image's own longer side) to predict at; the
            probabilities, each mapped back to the image, are averaged. Defaults to the
            model's own setting (`InferenceSettings.scales`): the training scale range 0.75-1.25 in
            steps of 1/8 for models trained at a working size, else `(1.0,)`.
        batch_size: tiles per network call. Defaults to 4.

    Returns:
        float32 array `(height, width)` with values in [0, 1].
    """
    image = as_float_rgb(image)
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
    saved = InferenceSettings.of(model)
    options = dict(
        tile=tile, overlap=overlap, tta=saved.tta if tta is None else tta, batch_size=batch_size,
    )
    side = saved.working_size if resize is None else resize
    scales = saved.scales if scales is None else check_scales(scales)
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
    rows = tile_layout(height, window=window, overlap=overlap, multiple=multiple)
    columns = tile_layout(width, window=window, overlap=overlap, multiple=multiple)

    accumulated = np.zeros((height, width), dtype=np.float32)
    tiles = [(row, column) for row in rows for column in columns]
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        batch = np.stack([cut_tile(image, row, column) for row, column in chunk])
        for (row, column), prediction in zip(chunk, _predict_batch(model, batch, tta=tta)):
            weight = np.outer(row.weight[: row.inside], column.weight[: column.inside])
            inside = prediction[: row.inside, : column.inside]
            accumulated[row.pixels, column.pixels] += inside * weight
    # The tile weight is separable and the tiles form a grid, so the summed weight is the outer
    # product of the per-axis sums: no second (height, width) array is needed for it.
    accumulated /= summed_weight(rows, height)[:, None]
    accumulated /= summed_weight(columns, width)[None, :]
    return np.clip(accumulated, 0.0, 1.0, out=accumulated)


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


def predict_mask(
    model, image, *, threshold=None, refine=None, min_area=0, fill_holes=0, min_part=None,
    min_hole=None, **predict_options
):
    """Binary foreground mask for one image, at the image's own size.

    Args:
        model: a `keras.Model`, as for `predict_probability`.
        image: float `(height, width, 3)` RGB in [0, 1].
        threshold: pixels with probability above it are foreground. Defaults to the model's
            own (`InferenceSettings.threshold`).
        refine: refine the mask with GrabCut on the image's colours (`refine_mask`).
            Defaults to the model's own (off unless training chose it).
        min_area: remove foreground parts smaller than this many pixels. Defaults to 0 (off).
        fill_holes: fill background holes smaller than this many pixels. Defaults to 0 (off).
        min_part: remove foreground parts smaller than this share of the image's pixels.
            Defaults to the model's own (0, off, unless training chose one).
        min_hole: fill holes smaller than this share of the image's pixels. Defaults to the
            model's own (0, off, unless training chose one).
        **predict_options: passed to `predict_probability` (`tile`, `overlap`, `tta`, ...).

    Returns:
        bool array `(height, width)`.
    """
    probability = predict_probability(model, image, **predict_options)
    return finish_mask(
        model, image, probability, threshold=threshold, refine=refine, min_area=min_area,
        fill_holes=fill_holes, min_part=min_part, min_hole=min_hole,
    )
