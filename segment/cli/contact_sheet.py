"""Draw a contact sheet of synthetic samples: one row per difficulty, each image beside its mask.

Example:
    python scripts/make_contact_sheet.py --out docs/samples.png
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import skimage.util

from segment import data
from segment.imageio import write_png

LABEL_WIDTH = 64  # pixels left of each row for its difficulty name


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/make_contact_sheet.py --out docs/samples.png",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/samples.png"), help="PNG to write")
    parser.add_argument("--per-row", type=int, default=4, help="samples per difficulty")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the first row (next rows: +1, +2)"
    )
    return parser


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)

    rows = []
    for row_index, difficulty in enumerate(data.PRESETS):
        # A seed per row, so that the rows do not share their first random draws.
        images, masks = data.synthetic_arrays(
            args.per_row, size=args.size, difficulty=difficulty, seed=args.seed + row_index
        )
        tiles = [
            tile
            for image, mask in zip(images, masks)
            for tile in (image, np.repeat(mask, 3, axis=2))
        ]
        row = skimage.util.montage(
            np.stack(tiles),
            grid_shape=(1, len(tiles)),
            padding_width=2,
            fill=(1, 1, 1),
            channel_axis=-1,
        )
        row = np.round(row * 255).astype(np.uint8)  # cv2.putText draws on 8-bit images only
        label = np.full((row.shape[0], LABEL_WIDTH, 3), 255, dtype=np.uint8)
        cv2.putText(
            label,
            difficulty,
            (4, row.shape[0] // 2 + 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        rows.append(np.concatenate([label, row], axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0

