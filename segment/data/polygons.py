"""Masks from polygon annotation exports: COCO instances JSON and LabelMe JSON.

Every annotation (COCO) or shape (LabelMe) is foreground, one class, unless `classes` names
the category names or labels to keep. Those named `background` are drawn as background after
the foreground, so they cut holes: COCO's polygons cannot hold holes (the polygons of one
annotation are unioned; holes come as RLE) and LabelMe has none of its own.

Polygons are filled with `cv2.fillPoly` (each polygon on its own, so that they are unioned),
LabelMe rectangles with `cv2.rectangle` and circles with `cv2.circle`, at the image's width
and height as the file gives them. COCO RLE, plain (a list of counts) or compressed (a
string), is decoded as pycocotools decodes it.

Everything is checked when a file is read; a mask is drawn only when asked for
(`AnnotatedImage.mask`), so a large export is not held in memory as masks.
"""

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from segment.imageio import DataError

__all__ = [
    "AnnotatedImage", "SHAPE_TYPES", "annotation_files", "annotation_format", "decode_rle",
    "draw_mask", "read_annotations", "read_coco", "read_labelme", "rle_counts_from_string",
]

SHAPE_TYPES = ("polygon", "rectangle", "circle")  # the LabelMe shapes drawn; others skipped
# A point further outside the image than this share of its side is refused rather than
# clipped: it most likely belongs to an image of another size.
OUTSIDE_SHARE = 0.1


class AnnotatedImage(NamedTuple):
    """One image of an annotation file, with what to draw on its mask.

    `file_name` is the image's name as the file gives it (COCO `file_name`, LabelMe
    `imagePath`, relative to the JSON file); `shape` is `(height, width)`; `foreground` and
    `background` hold `(kind, geometry)` pairs for `draw_mask`; `source` is the annotation
    file, `kind` its format ("coco" or "labelme") and `image_data` LabelMe's embedded base64
    image, if any.
    """

    file_name: str
    shape: tuple
    foreground: tuple
    background: tuple
    source: Path
    kind: str
    image_data: str | None = None

    @property
    def stem(self):
        """The stem of the image's file name: its mask is `masks/<stem>.png`."""
        return Path(self.file_name).stem

    @property
    def empty(self):
        """Whether no annotation of the kept classes falls on this image."""
        return not self.foreground

    @property
    def mask(self):
        """The bool `(height, width)` mask, drawn anew on each access."""
        return draw_mask(self.shape, self.foreground, self.background)


def _draw(canvas, kind, geometry):
    if kind == "polygon":
        cv2.fillPoly(canvas, [np.round(geometry).astype(np.int32)], 255)
    elif kind == "rectangle":
        corners = np.round(geometry).astype(np.int32)
        low, high = corners.min(axis=0), corners.max(axis=0)
        cv2.rectangle(canvas, tuple(map(int, low)), tuple(map(int, high)), 255, thickness=-1)
    elif kind == "circle":
        centre, edge = geometry
        radius = int(round(float(np.hypot(*(edge - centre)))))
        cv2.circle(canvas, tuple(int(v) for v in np.round(centre)), radius, 255, thickness=-1)
    elif kind == "rle":
        canvas[decode_rle(geometry, canvas.shape)] = 255
    else:
        raise ValueError(f"unknown kind of drawing {kind!r}")


def draw_mask(shape, foreground, background=()):
    """A bool mask of `shape` `(height, width)`: `foreground` drawn, then `background` cleared.

    Args:
        shape: `(height, width)`.
        foreground, background: `(kind, geometry)` pairs: `("polygon", points)`,
            `("rectangle", two corners)`, `("circle", (centre, point on the circle))` with
            points as `(N, 2)` x, y arrays, or `("rle", counts)` (see `decode_rle`).

    Returns:
        bool array of shape `(height, width)`.
    """
    layers = []
    for drawings in (foreground, background):
        canvas = np.zeros(shape, np.uint8)
        for kind, geometry in drawings:
            _draw(canvas, kind, geometry)
        layers.append(canvas > 0)
    return layers[0] & ~layers[1]


def decode_rle(counts, shape):
    """A bool mask from uncompressed COCO RLE: run lengths down the columns (column-major),
    starting with background.

    Args:
        counts: the run lengths, summing to `height * width`.
        shape: `(height, width)`.
    """
    height, width = shape
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def rle_counts_from_string(text):
    """The run lengths of compressed COCO RLE (pycocotools' `rleFrString`).

    Each count is written 5 bits to a character (`chr(48 + bits)`), lowest bits first; 0x20
    marks that more characters follow, 0x10 in the last one is the sign; from the fourth
    count on, each is stored as its difference from the count two before.

    Raises:
        ValueError: a character outside the alphabet or a string that ends mid-count.
    """
    counts, position = [], 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                raise ValueError("the string ends inside a count")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} is not compressed RLE")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _get(record, key, kinds, where, name):
    """`record[key]` checked to be one of `kinds` (bool is no number here)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(f"{where}: {key!r} should be {name}, got {json.dumps(value)[:40]}")
    return value


def _side(record, key, where):
    value = _get(record, key, (int, float), where, "a positive whole number")
    if not (np.isfinite(value) and value == int(value) and value >= 1):
        raise DataError(f"{where}: {key!r} should be a positive whole number, got {value}")
    return int(value)


def _coordinates(value, flat):
    """`value` as an `(N, 2)` float array, or None where it has another form."""
    if not isinstance(value, list):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists, strings
        return None
    if array.size == 0:
        return array.reshape(0, 2)
    if flat and array.ndim == 1 and array.size % 2 == 0:
        return array.reshape(-1, 2)
    return array if not flat and array.ndim == 2 and array.shape[1] == 2 else None


def _points(value, shape, where, minimum, *, flat=False):
    """`value`, a list of `[x, y]` pairs (or with `flat`, of x, y, x, y, ...), as an `(N, 2)`
    float array, checked to lie about the image."""
    points = _coordinates(value, flat)
    if points is None:
        form = "x1, y1, x2, y2, ..." if flat else "[x, y] pairs"
        raise DataError(f"{where}: expected a list of {form}")
    if len(points) < minimum:
        raise DataError(f"{where}: {len(points)} point(s), at least {minimum} needed")
    if not np.isfinite(points).all():
        raise DataError(f"{where}: coordinates that are not numbers")
    height, width = shape
    margin = OUTSIDE_SHARE * np.array([width, height])
    outside = ((points < -margin) | (points > [width, height] + margin)).any(axis=1)
    if outside.any():
        x, y = points[outside.argmax()]
        raise DataError(f"{where}: point ({x:g}, {y:g}) lies far outside the {width}x{height} "
                        "image (annotations of an image of another size?)")
    return points


def _rle(segmentation, shape, where):
    counts, size = segmentation.get("counts"), segmentation.get("size")
    if not isinstance(size, list) or size != list(shape):
        raise DataError(f"{where}: RLE size {size} is not the image's [height, width] "
                        f"{list(shape)}")
    if isinstance(counts, str):
        try:
            counts = rle_counts_from_string(counts)
        except ValueError as error:
            raise DataError(f"{where}: compressed RLE: {error}") from None
    if not isinstance(counts, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise DataError(f"{where}: RLE counts should be whole numbers >= 0 or a string")
    if sum(counts) != shape[0] * shape[1]:
        raise DataError(f"{where}: RLE counts add up to {sum(counts)} pixels, not "
                        f"{shape[0]}x{shape[1]}")
    return [("rle", np.asarray(counts, dtype=np.int64))]


def _coco_segmentation(annotation, shape, where):
    """The drawings of one COCO annotation: its polygons, or its RLE."""
    segmentation = _get(annotation, "segmentation", (list, dict), where, "polygons or RLE")
    where = f"{where}: segmentation"
    if isinstance(segmentation, dict):
        return _rle(segmentation, shape, where)
    drawings = []
    for index, polygon in enumerate(segmentation):
        drawings.append(("polygon", _points(polygon, shape, f"{where}[{index}]", 3, flat=True)))
    return drawings


def _role(name, classes, background):
    """"foreground", "background" or None (left out) for a category name or label."""
    if background is not None and name == background:
        return "background"
    return "foreground" if not classes or name in classes else None


def _coco_images(data, path):
    """`{image id: (file_name, (height, width))}` of a COCO file's `images`."""
    images = {}
    for index, image in enumerate(_get(data, "images", list, path, "a list")):
        where = f"{path}: images[{index}]"
        image_id = _get(image, "id", (int, str), where, "a number or string")
        name = _get(image, "file_name", str, where, "a string")
        if image_id in images:
            raise DataError(f"{where}: image id {image_id!r} is given twice")
        images[image_id] = (name, (_side(image, "height", where), _side(image, "width", where)))
    return images


def _coco(data, path, classes, background):
    """The images of a parsed COCO file and its category names."""
    images = _coco_images(data, path)
    names = {}
    for index, category in enumerate(_get(data, "categories", list, path, "a list")):
        where = f"{path}: categories[{index}]"
        names[_get(category, "id", (int, str), where, "a number or string")] = _get(
            category, "name", str, where, "a string")
    drawings = {image_id: ([], []) for image_id in images}
    for index, annotation in enumerate(_get(data, "annotations", list, path, "a list")):
        where = f"{path}: annotations[{index}]"
        image_id = _get(annotation, "image_id", (int, str), where, "a number or string")
        category = _get(annotation, "category_id", (int, str), where, "a number or string")
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id!r} is not among the images")
        if category not in names:
            raise DataError(f"{where}: category_id {category!r} is not among the categories")
        role = _role(names[category], classes, background)
        if role is not None:
            shape = images[image_id][1]
            drawings[image_id][role == "background"].extend(
                _coco_segmentation(annotation, shape, where))
    records = [AnnotatedImage(name, shape, tuple(drawings[image_id][0]),
                              tuple(drawings[image_id][1]), Path(path), "coco")
               for image_id, (name, shape) in images.items()]
    return records, set(names.values())


def _labelme_shape(kind, shape, size, where):
    """The drawing of one LabelMe shape of a drawn `kind`."""
    if "points" not in shape:
        raise DataError(f"{where}: missing key 'points'")
    needed = {"polygon": 3, "rectangle": 2, "circle": 2}[kind]
    points = _points(shape["points"], size, f"{where}: points", needed)
    if kind == "circle" and len(points) != 2:
        raise DataError(f"{where}: a circle needs 2 points (centre, one on the circle), "
                        f"got {len(points)}")
    return kind, points


def _labelme(data, path, classes, background, skipped):
    """The image of a parsed LabelMe file and its labels."""
    # LabelMe on Windows writes imagePath with backslashes.
    name = _get(data, "imagePath", str, path, "a string").replace("\\", "/")
    size = (_side(data, "imageHeight", path), _side(data, "imageWidth", path))
    image_data = data.get("imageData")
    if image_data is not None and not isinstance(image_data, str):
        raise DataError(f"{path}: 'imageData' should be a base64 string or null")
    drawings, labels = ([], []), set()
    for index, shape in enumerate(_get(data, "shapes", list, path, "a list")):
        where = f"{path}: shapes[{index}]"
        label = _get(shape, "label", str, where, "a string")
        labels.add(label)
        role = _role(label, classes, background)
        kind = shape.get("shape_type") or "polygon"  # older files leave it out
        if role is None:
            continue
        if kind not in SHAPE_TYPES:
            if skipped is not None:
                skipped[str(kind)] += 1
            continue
        drawings[role == "background"].append(_labelme_shape(kind, shape, size, where))
    record = AnnotatedImage(name, size, tuple(drawings[0]), tuple(drawings[1]), Path(path),
                            "labelme", image_data)
    return record, labels


def _load(path):
    """The parsed JSON of `path`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})"
                        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def annotation_format(data):
    """"coco", "labelme" or None for a parsed JSON file: COCO is an object with `images` and
    `annotations`, LabelMe one with `shapes`."""
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    if isinstance(data, dict) and "shapes" in data:
        return "labelme"
    return None


def _parse(path, kind, classes, background, skipped):
    data = _load(path)
    found = annotation_format(data)
    if found is None:
        raise DataError(f"{path}: neither a COCO export (an object with 'images' and "
                        "'annotations') nor a LabelMe file (an object with 'shapes')")
    if kind is not None and found != kind:
        raise DataError(f"{path}: a {found} file, not {kind}")
    if found == "coco":
        return _coco(data, path, classes, background)
    record, labels = _labelme(data, path, classes, background, skipped)
    return [record], labels


def _check_classes(classes, names, where):
    unknown = [name for name in classes or () if name not in names]
    if unknown:
        present = ", ".join(sorted(names)) or "none"
        raise DataError(f"{where}: no category or label named {', '.join(unknown)}; "
                        f"present: {present}")


def read_coco(path, classes=None, background=None):
    """The images of a COCO instances file, with what to draw on their masks.

    Args:
        path: the JSON file.
        classes: category names to keep as foreground; None or empty: every category.
        background: a category name whose annotations cut holes. Defaults to None.

    Returns:
        One `AnnotatedImage` per entry of `images`, with or without annotations.

    Raises:
        DataError: unreadable or malformed file, bad geometry, or a class not among the
            category names (the message lists them).
    """
    records, names = _parse(path, "coco", classes, background, None)
    _check_classes(classes, names, path)
    return records


def read_labelme(path, classes=None, background=None, skipped=None):
    """The image of a LabelMe file, with what to draw on its mask.

    Args:
        path: the JSON file.
        classes: labels to keep as foreground; None or empty: every label.
        background: a label whose shapes cut holes. Defaults to None.
        skipped: a `collections.Counter` that counts the kept shapes left out, by shape type
            (only polygons, rectangles and circles are drawn). Defaults to None.

    Returns:
        An `AnnotatedImage`.

    Raises:
        DataError: unreadable or malformed file, or bad geometry.
    """
    return _parse(path, "labelme", classes, background, skipped)[0][0]


def annotation_files(inputs):
    """The JSON files of `inputs`, files or folders (every `*.json` inside), without repeats.

    Raises:
        DataError: a missing path or a folder without JSON files.
    """
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.json"))
            if not found:
                raise DataError(f"{item}: no .json files in the folder")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return list(dict.fromkeys(files))


def _check_stems(records):
    by_stem = {}
    for record in records:
        by_stem.setdefault(record.stem, []).append(record)
    for stem, shared in by_stem.items():
        if len(shared) > 1:
            names = ", ".join(f"{record.file_name} in {record.source}" for record in shared[:3])
            raise DataError(f"{shared[0].source}: several images have the stem {stem!r}, so "
                            f"they would share masks/{stem}.png: {names}")


def read_annotations(inputs, classes=None, background=None, skipped=None):
    """The images of COCO and LabelMe files, each format told from the file's content.

    Args:
        inputs: JSON files and folders of them (every `*.json` inside).
        classes: category names or labels to keep as foreground; None or empty: all.
        background: a category name or label whose annotations cut holes. Defaults to None.
        skipped: a `collections.Counter` of LabelMe shapes left out, by type (`read_labelme`).

    Returns:
        A list of `AnnotatedImage`, in file order.

    Raises:
        DataError: any bad file, a class found in none of them (the message lists the
            names present) or two images with one stem.
    """
    inputs = list(inputs)
    records, names = [], set()
    skipped = Counter() if skipped is None else skipped
    for path in annotation_files(inputs):
        found, present = _parse(path, None, classes, background, skipped)
        records += found
        names |= present
    where = inputs[0] if len(inputs) == 1 else f"{inputs[0]} and the other inputs"
    _check_classes(classes, names, where)
    _check_stems(records)
    return records
