"""Image/mask folders: pairing images with masks, splits, reading pairs, writing folders."""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from segment.imageio import (
    DataError,
    is_image_file,
    read_image,
    read_mask,
    scale_image,
    size_hw,
    write_png,
)

__all__ = [
    "dataset_splits", "find_pairs", "foreground_fraction", "load_pairs", "read_pair",
    "SPLIT_NAMES", "split_pairs", "write_folder",
]


SPLIT_NAMES = ("train", "val", "test")


def _name_list(names, limit=5):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _image_files(folder):
    # Hidden files are skipped: editors' and macOS' "._name.png" companions are not images.
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and is_image_file(p) and not p.name.startswith(".")
    ]


def find_pairs(folder):
    """Pair `folder/images/<stem>.<ext>` with `folder/masks/<stem>.png`.

    Args:
        folder: a folder holding `images/` and `masks/`.

    Returns:
        A list of `(image_path, mask_path)`, sorted by stem.

    Raises:
        DataError: missing folders, no images, non-PNG masks, several images with one stem,
            images without masks or masks without images (the message lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    images_dir, masks_dir = folder / "images", folder / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise DataError(
                f"{folder}: missing {sub.name}/ subfolder "
                "(expected images/<name>.<png|jpg|...> and masks/<name>.png)"
            )
    images = {}
    duplicates = set()
    for path in _image_files(images_dir):
        if path.stem in images:
            duplicates.add(path.stem)
        images.setdefault(path.stem, []).append(path)
    if not images:
        raise DataError(
            f"{images_dir}: no images (expected {', '.join(('.png', '.jpg', '...'))} files)"
        )
    if duplicates:
        shown = _name_list(
            [f"{s} ({', '.join(sorted(p.name for p in images[s]))})" for s in duplicates]
        )
        raise DataError(
            f"{images_dir}: several images share a name, so the pairing is ambiguous: {shown}"
        )
    mask_files = _image_files(masks_dir)
    not_png = [p.name for p in mask_files if p.suffix.lower() != ".png"]
    if not_png:
        raise DataError(
            f"{masks_dir}: masks must be PNG (lossless) files, found {_name_list(not_png)}"
        )
    masks = {p.stem: p for p in mask_files}
    problems = []
    if lonely := images.keys() - masks.keys():
        problems.append(f"{len(lonely)} image(s) without a mask in masks/: {_name_list(lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"{len(lonely)} mask(s) without an image in images/: {_name_list(lonely)}")
    if problems:
        raise DataError(f"{folder}: " + "; ".join(problems))
    return [(images[stem][0], masks[stem]) for stem in sorted(images)]


def dataset_splits(root):
    """The image/mask folders of a dataset.

    Args:
        root: a dataset folder with `train/`, `val/` and/or `test/` image/mask folders, or an
            image/mask folder itself.

    Returns:
        `{"train": path, "val": path, "test": path}` for the splits that exist, or
        `{"all": root}` when `root` holds `images/` directly.

    Raises:
        DataError: `root` is missing or has neither form.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    splits = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
    if splits:
        return splits
    if (root / "images").is_dir():
        return {"all": root}
    raise DataError(
        f"{root}: expected images/ and masks/ subfolders, or train/, val/, test/ folders of them"
    )


def split_pairs(pairs, *, val_fraction=0.1, seed=0):
    """Hold out a seeded random part of `pairs` for validation.

    Args:
        pairs: a list from `find_pairs`.
        val_fraction: share of pairs held out; at least one pair when there are two or more.
            Defaults to 0.1.
        seed: shuffling seed. Defaults to 0.

    Returns:
        `(train_pairs, val_pairs)`, each in the original order.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    count = len(pairs)
    val_count = (
        min(count - 1, max(1, round(count * val_fraction)))
        if count >= 2 and val_fraction > 0
        else 0
    )
    held_out = set(np.random.default_rng(seed).permutation(count)[:val_count].tolist())
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


def read_pair(image_path, mask_path, *, threshold=None):
    """Read an image and its mask, checking they have the same size.

    Returns:
        `(image, mask)`: float32 RGB `(H, W, 3)` in [0, 1] and bool `(H, W)`.

    Raises:
        DataError: either file unreadable, a non-binary mask, or sizes that differ.
    """
    image = read_image(image_path)
    mask = read_mask(mask_path, threshold=threshold)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
    return image, mask


def foreground_fraction(pairs, *, threshold=None, limit=500):
    """The mean share of foreground pixels in the masks of `pairs` (at most `limit` of them,
    evenly spaced, so that a large folder is read quickly)."""
    step = max(1, len(pairs) // limit)
    return float(np.mean([read_mask(mask, threshold=threshold).mean() for _, mask in pairs[::step]]))


def read_training_pair(image_path, mask_path, threshold):
    image, mask = read_pair(image_path, mask_path, threshold=threshold)
    return image, mask[..., None].astype(np.float32)


def resize_pair(image, mask, shape):
    """Resize an image and its `(H, W, 1)` mask to `shape` (the mask by nearest neighbour)."""
    return scale_image(image, shape), scale_image(mask, shape, mask=True)


def load_pairs(pairs, *, size=None, threshold=None):
    """Read and validate image/mask pairs.

    Args:
        pairs: `(image_path, mask_path)` tuples, e.g. from `find_pairs`.
        size: if given, resize every pair to `size` x `size`. Defaults to None (native sizes).
        threshold: passed to `read_mask` to accept multi-valued masks. Defaults to None (strict).

    Returns:
        `(images, masks)` as float32: with `size`, arrays `(N, size, size, 3)` and
        `(N, size, size, 1)`; without, lists of `(H, W, 3)` and `(H, W, 1)` arrays.

    Raises:
        DataError: an unreadable file, a non-binary mask or an image and mask of different sizes.
    """
    if not pairs:
        raise ValueError("No image/mask pairs given")
    samples = [
        read_training_pair(image, mask, threshold)
        for image, mask in tqdm(pairs, desc="reading", disable=None)
    ]
    if size is None:
        images, masks = zip(*samples)
        return list(images), list(masks)
    images, masks = zip(*(resize_pair(image, mask, size_hw(size)) for image, mask in samples))
    return np.stack(images), np.stack(masks)


def write_folder(out, images, masks, *, stems=None):
    """Write an image/mask folder: `out/images/<stem>.png` and `out/masks/<stem>.png` (0/255).

    Args:
        out: destination folder, created if needed.
        images: float `(N, H, W, 3)` in [0, 1] (or a list of such images).
        masks: `(N, H, W, 1)` or `(N, H, W)`; values above 0.5 are foreground.
        stems: file names without extension. Defaults to zero-padded indices.

    Returns:
        The list of `(image_path, mask_path)` written, as `find_pairs` would return it.
    """
    if len(images) != len(masks):
        raise ValueError(f"Got {len(images)} images but {len(masks)} masks")
    stems = stems or [f"{index:05d}" for index in range(len(images))]
    if len(stems) != len(images) or len(set(stems)) != len(stems):
        raise ValueError(
            f"Need {len(images)} distinct stems, got {len(stems)} ({len(set(stems))} distinct)"
        )
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pairs = []
    for stem, image, mask in zip(stems, images, masks):
        pair = (out / "images" / f"{stem}.png", out / "masks" / f"{stem}.png")
        write_png(pair[0], image)
        write_png(pair[1], np.asarray(mask).reshape(np.shape(image)[:2]) > 0.5)
        pairs.append(pair)
    return sorted(pairs)

