"""Image/mask folders: pairing images with masks, splits, reading pairs, writing folders."""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from segment.imageio import (
    LOSSY_EXTENSIONS,
    VOID_LABEL,
    DataError,
    exif_orientation,
    is_image_file,
    read_image,
    read_labels,
    read_mask,
    scale_image,
    size_hw,
    write_png,
)

__all__ = [
    "IMAGE_FOLDERS", "MASK_FOLDERS", "MASK_SUFFIXES", "SPLIT_NAMES", "dataset_splits",
    "find_pairs", "foreground_fraction", "image_files", "load_pairs", "lossy_mask_note",
    "pairing_note", "read_pair", "split_pairs", "write_folder",
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


# Where image/mask folders keep their files, by the names datasets and tools use: the first
# that exists is taken (`images/` and `masks/` first), and the mask suffix that pairs most.
IMAGE_FOLDERS = ("images", "imgs", "img", "JPEGImages", "photos")
MASK_FOLDERS = ("masks", "mask", "labels", "annotations", "gt", "ground_truth", "groundtruth",
                "SegmentationClass", "segmentations")
MASK_SUFFIXES = ("", "_mask", "-mask", "_masks", "_label", "_labels", "_gt", "_seg",
                 "_segmentation")


def _subfolder(folder, names):
    return next((folder / name for name in names if (folder / name).is_dir()), None)


def _stems(paths, folder, what):
    """`{stem: path}`, refusing several files with one stem."""
    found = {}
    for path in paths:
        found.setdefault(path.stem, []).append(path)
    duplicates = {stem: files for stem, files in found.items() if len(files) > 1}
    if duplicates:
        shown = _name_list(
            [f"{s} ({', '.join(sorted(p.name for p in files))})" for s, files in duplicates.items()]
        )
        raise DataError(f"{folder}: several {what} share a name, so the pairing is ambiguous: {shown}")
    return {stem: files[0] for stem, files in found.items()}


def image_files(folder, what="images"):
    """The image files of `folder` (hidden files left out), by stem; several files with one
    stem are refused (`DataError`), as masks are named by stem."""
    return [path for _, path in sorted(_stems(_image_files(folder), folder, what).items())]


def _mask_suffix(image_stems, mask_stems):
    """The suffix of `MASK_SUFFIXES` that pairs the most masks with images."""
    def pairs(suffix):
        return sum(stem.endswith(suffix) and stem[: len(stem) - len(suffix)] in image_stems
                   for stem in mask_stems)

    return max(MASK_SUFFIXES, key=pairs)  # the first of a tie: "" before any suffix


def find_pairs(folder):
    """Pair the images of `folder` with their masks.

    The usual layout is `folder/images/<stem>.<ext>` with `folder/masks/<stem>.png`; images
    may also be in `imgs/`, `img/`, `JPEGImages/` or `photos/`, masks in `mask/`, `labels/`,
    `annotations/`, `gt/`, `ground_truth/`, `SegmentationClass/` or `segmentations/`, named
    `<stem>.<ext>` or `<stem>_mask`, `_label`, `_gt`, `_seg`, `_segmentation` (`pairing_note`
    says which were taken). Masks may be PNG or any lossless format, or JPEG (thresholded at
    the midpoint, `lossy_mask_note`).

    Args:
        folder: a folder holding images and masks subfolders.

    Returns:
        A list of `(image_path, mask_path)`, sorted by stem.

    Raises:
        DataError: missing folders, no images, several images (or masks) with one stem,
            images without masks or masks without images (the message lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    images_dir, masks_dir = _subfolder(folder, IMAGE_FOLDERS), _subfolder(folder, MASK_FOLDERS)
    if images_dir is None or masks_dir is None:
        missing = "images/" if images_dir is None else "masks/"
        raise DataError(
            f"{folder}: missing {missing} subfolder "
            "(expected images/<name>.<png|jpg|...> and masks/<name>.png)"
        )
    images = _stems(_image_files(images_dir), images_dir, "images")
    if not images:
        raise DataError(
            f"{images_dir}: no images (expected {', '.join(('.png', '.jpg', '...'))} files)"
        )
    mask_files = _stems(_image_files(masks_dir), masks_dir, "masks")
    suffix = _mask_suffix(images.keys(), mask_files.keys())
    masks = {stem[: len(stem) - len(suffix)]: path for stem, path in mask_files.items()
             if stem.endswith(suffix)}
    problems = []
    named = f"{masks_dir.name}/" + (f" (as <name>{suffix})" if suffix else "")
    if lonely := images.keys() - masks.keys():
        problems.append(f"{len(lonely)} image(s) without a mask in {named}: {_name_list(lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"{len(lonely)} mask(s) without an image in {images_dir.name}/: "
                        f"{_name_list(lonely)}")
    if problems:
        raise DataError(f"{folder}: " + "; ".join(problems))
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def pairing_note(pairs):
    """One line on where `find_pairs` found images and masks when it was not `images/` and
    `masks/<stem>.png`; None when it was."""
    if not pairs:
        return None
    image, mask = pairs[0]
    suffix = mask.stem[len(image.stem):]
    if (image.parent.name, mask.parent.name, suffix) == ("images", "masks", ""):
        return None
    return (f"pairs: {image.parent.name}/<name>{image.suffix} with "
            f"{mask.parent.name}/<name>{suffix}{mask.suffix}")


def lossy_mask_note(pairs):
    """A warning when masks among `pairs` are JPEG: they are thresholded at the midpoint, and
    the line says how many of their pixels were neither black nor white. None without any."""
    lossy = [mask for _, mask in pairs if Path(mask).suffix.lower() in LOSSY_EXTENSIONS]
    if not lossy:
        return None
    between = total = 0
    for mask in tqdm(lossy, desc="checking JPEG masks", disable=None, leave=False):
        values = read_image(mask)
        values = values.reshape(-1, 3)[:, 0]
        between += np.count_nonzero((values > 0) & (values < 1))
        total += values.size
    return (f"warning: {len(lossy)} masks are JPEG (lossy), read as foreground above the "
            f"midpoint; {between / total:.1%} of their pixels were neither black nor white")


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
    if _subfolder(root, IMAGE_FOLDERS) is not None:
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


def read_pair(image_path, mask_path, *, threshold=None, void=None):
    """Read an image and its mask, checking they have the same size.

    Returns:
        `(image, mask)`: float32 RGB `(H, W, 3)` in [0, 1] and bool `(H, W)`; a mask with
        void pixels (`segment.imageio.read_labels`) is a `numpy.ma` masked array, its void
        pixels masked, which the metrics of `segment.metrics` leave out.

    Raises:
        DataError: either file unreadable, a non-binary mask, or sizes that differ.
    """
    image = read_image(image_path)
    mask, void_pixels = read_labels(mask_path, threshold=threshold, void=void)
    if image.shape[:2] != mask.shape:
        turned = image.shape[1::-1] == mask.shape and exif_orientation(
            np.fromfile(str(image_path), dtype=np.uint8)) >= 5
        raise DataError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)" + (
                "; the mask fits the photo's pixels as stored, before its EXIF orientation "
                "turns it upright: pass --keep-orientation" if turned else "")
        )
    if void_pixels is not None:
        return image, np.ma.MaskedArray(mask, mask=void_pixels)
    return image, mask


def foreground_fraction(pairs, *, threshold=None, void=None, limit=500):
    """The mean share of foreground pixels in the masks of `pairs` (at most `limit` of them,
    evenly spaced, so that a large folder is read quickly)."""
    step = max(1, len(pairs) // limit)
    return float(np.mean([read_mask(mask, threshold=threshold, void=void).mean()
                          for _, mask in pairs[::step]]))


def read_training_pair(image_path, mask_path, threshold, void=None):
    """An image and its `(H, W, 1)` float32 mask: 0, 1, and `VOID_LABEL` where void."""
    image, mask = read_pair(image_path, mask_path, threshold=threshold, void=void)
    labels = np.ma.getdata(mask).astype(np.float32)
    labels[np.ma.getmaskarray(mask)] = VOID_LABEL
    return image, labels[..., None]


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

