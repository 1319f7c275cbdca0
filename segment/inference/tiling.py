"""Tiles for images larger than the network takes at once, cross-faded where they overlap."""

import math
from typing import NamedTuple

import keras
import numpy as np

__all__ = ["size_multiple", "tile_window"]


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


def tile_layout(length, *, window, overlap, multiple):
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


def summed_weight(layout, length):
    total = np.zeros(length, dtype=np.float32)
    for span in layout:
        total[span.pixels] += span.weight[: span.inside]
    return total


def cut_tile(image, row, column):
    """One window of the image; the part beyond the image's end is filled by reflection."""
    tile = image[row.pixels, column.pixels]
    padding = ((0, len(row.weight) - row.inside), (0, len(column.weight) - column.inside), (0, 0))
    return np.pad(tile, padding, mode="reflect") if padding[0][1] or padding[1][1] else tile

