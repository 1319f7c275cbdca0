"""Endless, seeded, resumable `tf.data` streams of training batches."""

import functools
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from segment.data.augment import (
    AUGMENT_SCALE,
    PASTE_PROBABILITY,
    augment_pair,
    paste_foreground,
    place_pair,
)
from segment.data.folders import read_training_pair, resize_pair
from segment.data.presets import generator_config
from segment.data.synthetic import make_sample, sample_rng, stack_samples
from segment.imageio import scaled_shape, size_hw

__all__ = ["batched_dataset", "folder_dataset", "stream_positions", "synthetic_dataset"]


# Batches a stream makes at once: one per core this process may use, at most 8 (the numpy work
# holds the GIL for much of a batch, and every batch in flight is memory).
_PARALLEL_BATCHES = min(
    8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


def batched_dataset(make_batch, indices, *, shape, batch_size, drop_remainder):
    """Map batches of sample indices to `(images, masks)` batches with a numpy function.

    Each batch depends only on its indices, so parallel generation stays reproducible. A batch
    per core (at most 8) is made at once and two wait ready, with `tf.data`'s autotuner off:
    its thread sleeps up to a minute between rounds, and freeing the iterator waits for it,
    which held Keras's `fit` on returning (by 16-45 s in our runs).

    Args:
        make_batch: `positions -> (images, masks)`, float32 `(n, H, W, 3)` and `(n, H, W, 1)`.
        indices: an int64 `tf.data.Dataset` of sample positions.
        shape: `(H, W)`.
        batch_size: positions per batch.
        drop_remainder: drop a last, smaller batch (its size is then static).

    Returns:
        A `tf.data.Dataset` of `(images, masks)` batches.
    """
    batch = batch_size if drop_remainder else None

    def generate(batch_indices):
        images, masks = tf.numpy_function(
            make_batch, [batch_indices], (tf.float32, tf.float32), stateful=False
        )
        images.set_shape((batch, *shape, 3))
        masks.set_shape((batch, *shape, 1))
        return images, masks

    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        indices.batch(batch_size, drop_remainder=drop_remainder)
        .map(generate, num_parallel_calls=_PARALLEL_BATCHES, deterministic=True)
        .prefetch(2)
        .with_options(options)
    )


def stream_positions(start=0, *, batch_size, shard=None):
    """The sample positions an endless stream reads, and the rows per batch it yields.

    Unsharded: `start, start + 1, ...` in batches of `batch_size`. With `shard=(index,
    count)`, the stream is one of `count` workers that together make each global batch of
    `batch_size` samples: it yields rows `index * b` to `(index + 1) * b - 1` of every global
    batch, `b = batch_size // count`, so the workers read different samples and their batches
    side by side are exactly the unsharded stream's.

    Returns:
        `(positions, rows)`: an int64 `tf.data.Dataset` of positions and the batch size.

    Raises:
        ValueError: `batch_size` not a multiple of `count`, or `start` not a whole number of
            global batches.
    """
    if shard is None:
        return tf.data.Dataset.counter(start), batch_size
    index, count = shard
    if not 0 <= index < count or batch_size % count or start % batch_size:
        raise ValueError(
            f"Cannot take shard {index} of {count} from batches of {batch_size} starting at "
            f"sample {start}: the batch size must be a multiple of the number of workers"
        )
    rows = batch_size // count
    first = start + index * rows
    positions = tf.data.Dataset.counter().map(
        lambda i: first + (i // rows) * batch_size + i % rows
    )
    return positions, rows


def synthetic_dataset(
    *, size=128, batch_size=16, difficulty="medium", seed=0, start=0, shard=None, **overrides
):
    """An endless, parallel `tf.data` stream of synthetic batches.

    Sample `i` of the stream (batch `i // batch_size`, row `i % batch_size`) equals sample `i`
    of `synthetic_arrays` with the same arguments.

    Args:
        size: image side, or `(height, width)`. Defaults to 128.
        batch_size: samples per (global) batch. Defaults to 16.
        difficulty: preset name. Defaults to `"medium"`.
        seed: stream seed. Defaults to 0.
        start: index of the first sample, to resume a stream where it stopped. Defaults to 0.
        shard: `(index, count)`: this worker's share of every batch (`stream_positions`).
            Defaults to None (the whole stream).
        **overrides: generator settings replacing the preset's.

    Returns:
        A `tf.data.Dataset` of `(images, masks)`, float32 `(rows, height, width, 3)` and
        `(rows, height, width, 1)`, `rows = batch_size // count`.
    """
    config = generator_config(difficulty, **overrides)
    shape = size_hw(size)

    def make_batch(indices):
        return stack_samples([make_sample(sample_rng(seed, int(i)), shape, config) for i in indices])

    positions, rows = stream_positions(start, batch_size=batch_size, shard=shard)
    return batched_dataset(make_batch, positions, shape=shape, batch_size=rows, drop_remainder=True)


def folder_dataset(
    pairs, *, size, batch_size, augment=True, seed=0, repeat=True, threshold=None, void=None,
    start=0, shard=None, paste=None,
):
    """A `tf.data` stream of batches from image/mask pairs, whole images at a working size.

    Every image is seen whole, scaled (keeping its aspect ratio) so that its longer side is
    `size` pixels, on a `size` x `size` canvas: exactly what prediction feeds a model trained
    at that working size. Every pair is read and validated first, so a bad file fails before
    training starts. With `repeat`, pairs are reshuffled each epoch (seeded) and the stream
    never ends; without, it is one pass in the given order, the last batch possibly smaller.

    Args:
        pairs: `(image_path, mask_path)` tuples.
        size: the working size: the longer image side, and the canvas side.
        batch_size: samples per batch.
        augment: random scale (0.75-1.25x), rotation (up to 30 degrees), shift, mirroring,
            and saturation, contrast, brightness and gamma changes, with the mask warped
            alongside, and in a share `paste` of the samples another image's object pasted
            in (`paste_foreground`); else the image at the working size, top left,
            reflect-padded.
            Defaults to True.
        seed: seed for shuffling and augmentation. Defaults to 0.
        repeat: endless shuffled epochs, or a single ordered pass. Defaults to True.
        threshold: passed to `read_mask`. Defaults to None (strict binary masks).
        void: passed to `read_labels`: the mask value of void pixels, which the masks carry
            as `VOID_LABEL` and training leaves out. Defaults to None (VOC palettes only).
        start: with `repeat`, the stream position to begin at, to resume training where it
            stopped. Defaults to 0.
        shard: with `repeat`, `(index, count)`: this worker's share of every batch
            (`stream_positions`). Defaults to None (the whole stream).
        paste: with `augment`, the share of samples with another image's object pasted in.
            Defaults to None (`PASTE_PROBABILITY`).

    Returns:
        A `tf.data.Dataset` of `(images, masks)`, float32 `(batch, size, size, 3)` and
        `(batch, size, size, 1)`.

    Raises:
        DataError: a file that cannot be used (the message names it).
    """
    if not pairs:
        raise ValueError("No image/mask pairs given")
    paste = PASTE_PROBABILITY if paste is None else paste
    side = size_hw(size)[0]
    pairs = tuple(map(tuple, pairs))
    changed = tuple(_modified(path) for pair in pairs for path in pair)
    images, masks = _read_pairs(pairs, changed, side, augment, threshold, void)
    count = len(pairs)

    @functools.lru_cache(maxsize=2)
    def epoch_order(epoch):
        # The third word keeps shuffling apart from the augmentation streams [seed, position].
        return np.random.default_rng([seed, epoch, 1]).permutation(count)

    def make_sample_at(position):
        epoch, offset = divmod(position, count)
        index = epoch_order(epoch)[offset] if repeat else offset
        if augment:
            rng = sample_rng(seed, position)
            image, mask = augment_pair(rng, images[index], masks[index], side)
            if rng.random() < paste:
                other = int(rng.integers(count))
                image, mask = paste_foreground(
                    image, mask, *augment_pair(rng, images[other], masks[other], side))
            return image, mask
        return images[index].astype(np.float32) / 255, masks[index].astype(np.float32)

    def make_batch(positions):
        return stack_samples([make_sample_at(int(position)) for position in positions])

    if repeat:
        positions, rows = stream_positions(start, batch_size=batch_size, shard=shard)
    else:
        positions, rows = tf.data.Dataset.range(count), batch_size
    return batched_dataset(
        make_batch, positions, shape=(side, side), batch_size=rows, drop_remainder=repeat
    )


def _modified(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:  # reading it names the file
        return None


# A run builds its stream again when it plans again or changes size: the pairs are read once
# (again once a file has changed: `changed` holds their modification times).
@functools.lru_cache(maxsize=2)
def _read_pairs(pairs, changed, side, augment, threshold, void):
    """The pairs as 8-bit images and masks: with `augment`, kept at the largest scale
    augmentation asks for, so that the warp only ever shrinks mildly (no aliasing) and memory
    stays small whatever the photographs' size; else placed on the `side` canvas."""
    keep_side = int(np.ceil(side * AUGMENT_SCALE[1]))
    images, masks = [], []
    for image_path, mask_path in tqdm(pairs, desc="reading", disable=None):
        image, mask = read_training_pair(image_path, mask_path, threshold, void)
        if not augment:
            image, mask = place_pair(image, mask, side)
        elif max(image.shape[:2]) > keep_side:
            image, mask = resize_pair(image, mask, scaled_shape(image.shape, keep_side))
        images.append(np.round(image * 255).astype(np.uint8))
        masks.append(mask.astype(np.uint8))
    return tuple(images), tuple(masks)
