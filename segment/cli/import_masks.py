"""Masks from polygon annotation exports: a COCO instances file or LabelMe files.

Writes OUT/masks/<stem>.png (0 background, 255 foreground, the image's own size) for each
annotated image and copies the photographs to OUT/images/, so that OUT is ready for
`train.py --data OUT`; OUT/preview.png shows up to 16 of them with their masks' outlines.
The format is told from each file's content; a folder means every *.json inside.
"""

import argparse
import base64
import binascii
import io
import shutil
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segment.cli.common import HelpFormatter, fail
from segment.data.polygons import SHAPE_TYPES, read_annotations
from segment.imageio import (
    IMAGE_EXTENSIONS,
    DataError,
    decode_image,
    is_image_file,
    read_image,
    scale_image,
    scaled_shape,
    write_png,
)

__all__ = ["build_parser", "main", "preview_sheet"]

EPILOG = """\
examples:
  python scripts/import_masks.py instances.json --images photos/ --out data/mine
  python scripts/import_masks.py labelme/ --out data/mine --class cat --class dog
  python scripts/import_masks.py instances.json --images photos/ --out data/mine --background hole

Every annotation (COCO) or shape (LabelMe) is foreground unless --class names the category
names or labels to keep; those of the --background category or label are drawn as background
after the others, so they cut holes. COCO polygons and RLE (plain or compressed) are read;
LabelMe polygons, rectangles and circles (other shapes are skipped with a warning). LabelMe
photographs are found beside each JSON file (its imagePath) or taken from its imageData when
there is no --images. Everything is checked before anything is written.
"""

PREVIEW_COUNT = 16
EXIF_ORIENTATION = 0x0112  # the EXIF tag
OUTLINE = (255, 0, 255)  # magenta stands out on most photographs


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, metavar="JSON",
                        help="a COCO instances file, LabelMe files, or folders of them")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write masks/, images/ and preview.png into")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="folder of the annotated photographs, copied into OUT/images/ "
                             "(default for LabelMe: beside each JSON file; for COCO: none)")
    parser.add_argument("--class", dest="classes", action="append", default=None,
                        metavar="NAME", help="keep only this category name or label as "
                                             "foreground (repeatable; default: every one)")
    parser.add_argument("--background", default=None, metavar="LABEL",
                        help="category name or label drawn as background after the "
                             "foreground, cutting holes")
    parser.add_argument("--skip-empty", action="store_true",
                        help="leave out images with no annotation of the kept classes (by "
                             "default they get an all-background mask)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace masks and images that OUT already holds")
    return parser


def _name_list(names, limit=5):
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _embedded(record):
    """The bytes of a LabelMe file's embedded image."""
    try:
        data = base64.b64decode(record.image_data, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{record.source}: imageData is not base64") from None
    decode_image(data, name=f"{record.source}: imageData")  # refused now, not while writing
    return data


def _find_image(record, images):
    """Where `record`'s photograph is: a file, the bytes embedded in a LabelMe file, or None."""
    if images is not None:
        candidates = [images / record.file_name, images / Path(record.file_name).name]
    elif record.kind == "labelme":
        candidates = [record.source.parent / record.file_name]
    else:
        return None
    found = next((path for path in candidates if path.is_file()), None)
    if found is None and images is None and record.image_data:
        return _embedded(record)
    return found


def _image_sizes(source, name):
    """The `(height, width)` an image file (from its header) or encoded bytes may be shown at:
    as stored and, where its EXIF orientation turns it a quarter, turned."""
    if isinstance(source, Path) and not is_image_file(source):
        raise DataError(f"{source}: not a supported image type ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except (OSError, ValueError) as error:
        raise DataError(f"{name}: cannot read the image size ({error})") from None
    # Annotation tools differ in whether they show a photo upright; either size is accepted.
    return [(height, width), (width, height)] if turned else [(height, width)]


def _image_sources(records, images):
    """Each record's photograph (`_find_image`), checked to exist and to have its size."""
    if images is not None and not images.is_dir():
        raise DataError(f"{images}: no such folder")
    sources = [_find_image(record, images) for record in records]
    missing = [record.file_name for record, source in zip(records, sources) if source is None]
    if images is not None and missing:
        raise DataError(f"{images}: {len(missing)} annotated image(s) not found: "
                        f"{_name_list(missing)}")
    for record, source in zip(records, sources):
        name = f"{record.source}: imageData" if isinstance(source, bytes) else source
        sizes = [tuple(record.shape)] if source is None else _image_sizes(source, name)
        if tuple(record.shape) not in sizes:
            height, width = sizes[0]
            raise DataError(f"{name} is {width}x{height} but {record.source} annotates it as "
                            f"{record.shape[1]}x{record.shape[0]} (width x height)")
    return sources


def _image_target(out, record, source):
    suffix = ".png" if isinstance(source, bytes) else source.suffix
    return out / "images" / f"{record.stem}{suffix}"


def _same_stem(folder, stem):
    """The images in `folder` with this stem, whatever their extension."""
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir()
            if path.stem == stem and path.is_file() and is_image_file(path)]


def _check_out(out, records, sources, overwrite):
    """Refuse an `out` that is a file, or that holds a mask or image this would replace."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if overwrite:
        return
    for record, source in zip(records, sources):
        existing = [out / "masks" / f"{record.stem}.png"]
        existing = [path for path in existing if path.exists()]
        if source is not None:
            existing += [path for path in _same_stem(out / "images", record.stem)
                         if isinstance(source, bytes) or not path.samefile(source)]
        if existing:
            raise DataError(f"{existing[0]}: exists; pass --overwrite to replace it")


def _copy_image(out, record, source):
    """Copy (or decode, for embedded bytes) the photograph to OUT/images/<stem>.<ext>."""
    target = _image_target(out, record, source)
    # Another image with this stem would make the pairing ambiguous; --overwrite replaces it.
    for path in _same_stem(out / "images", record.stem):
        if path != target and (isinstance(source, bytes) or not path.samefile(source)):
            path.unlink()
    if isinstance(source, bytes):
        write_png(target, decode_image(source, name=f"{record.source}: imageData"))
    elif not (target.exists() and target.samefile(source)):
        shutil.copy2(source, target)
    return target


def _write(out, records, sources):
    """Write every mask and copy every found photograph; `(no-foreground masks, images)`."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if any(source is not None for source in sources):
        (out / "images").mkdir(exist_ok=True)
    empty, targets = 0, []
    pairs = tqdm(list(zip(records, sources)), desc="writing", unit="mask", disable=None)
    for record, source in pairs:
        mask = record.mask
        empty += not mask.any()
        write_png(out / "masks" / f"{record.stem}.png", mask)
        targets.append(None if source is None else _copy_image(out, record, source))
    return empty, targets


def _tile(image, mask, cell):
    """An image scaled to fit `cell` with its mask's outline, or the mask alone."""
    shape = scaled_shape(mask.shape, cell)
    small = scale_image(mask.astype(np.uint8), shape, mask=True)
    if image is None:
        return np.repeat(small[..., None] * 255, 3, axis=2)
    tile = np.round(scale_image(image, shape) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(small, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(np.ascontiguousarray(tile), contours, -1, OUTLINE, 2)


def preview_sheet(items, *, cell=192, columns=4):
    """A uint8 RGB grid of tiles with captions: for each `(image or None, mask, caption)`, the
    float RGB image with its bool mask's outline, or the mask alone."""
    rows = -(-len(items) // columns)
    caption_height, gap = 18, 6
    step_x, step_y = cell + gap, cell + caption_height + gap
    sheet = np.full((rows * step_y + gap, min(len(items), columns) * step_x + gap, 3), 240,
                    np.uint8)
    for index, (image, mask, caption) in enumerate(items):
        x, y = gap + index % columns * step_x, gap + index // columns * step_y
        tile = _tile(image, mask, cell)
        sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        cv2.putText(sheet, caption[:28], (x, y + cell + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def _write_preview(out, records, targets):
    items = []
    for record, target in list(zip(records, targets))[:PREVIEW_COUNT]:
        image = None
        if target is not None:
            try:
                image = read_image(target)
            except DataError as error:  # a header that reads but pixels that do not
                print(f"warning: {error}; the preview shows its mask alone", file=sys.stderr)
        items.append((image, record.mask, record.stem))
    path = out / "preview.png"
    write_png(path, preview_sheet(items))
    return path


def _warn(skipped, records, sources):
    if skipped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        print(f"warning: skipped shapes other than {', '.join(SHAPE_TYPES)}: {counts}",
              file=sys.stderr)
    missing = [record.file_name for record, source in zip(records, sources)
               if source is None and record.kind == "labelme"]
    if missing:  # only without --images, which refuses missing photographs
        print(f"warning: {len(missing)} image(s) not found beside their LabelMe files, so "
              f"only their masks are written: {_name_list(missing)}; pass --images DIR",
              file=sys.stderr)


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    skipped = Counter()
    try:
        records = read_annotations(args.inputs, classes=args.classes,
                                   background=args.background, skipped=skipped)
        left_out = sum(record.empty for record in records) if args.skip_empty else 0
        records = [record for record in records if not (args.skip_empty and record.empty)]
        if not records:
            raise DataError(f"{args.inputs[0]}: no images to write" + (
                "; none has an annotation of the kept classes" if left_out else ""))
        sources = _image_sources(records, args.images)
        _check_out(args.out, records, sources, args.overwrite)
    except DataError as error:
        return fail(error)
    _warn(skipped, records, sources)
    try:
        empty, targets = _write(args.out, records, sources)
        preview = _write_preview(args.out, records, targets)
    except OSError as error:
        return fail(f"cannot write {args.out}: {error.strerror or error}")
    copied = sum(target is not None for target in targets)
    left = f", {left_out} without annotations left out" if left_out else ""
    images = f"; {copied} images copied to {args.out / 'images'}" if copied else ""
    print(f"{len(records)} masks written to {args.out / 'masks'} ({empty} with no "
          f"foreground{left}){images}; preview {preview}")
    return 0
