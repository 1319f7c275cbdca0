"""Mask-quality report: a trained model and classical baselines on the same image/mask folder."""

import argparse
import json
from pathlib import Path

from segment.cli.common import (
    HelpFormatter,
    add_inference_flags,
    add_orientation_flag,
    choice_list,
    fail,
    inference_options,
    non_negative,
)
from segment.data import find_pairs, lossy_mask_note, pairing_note
from segment.evaluation import (
    evaluate_folder,
    evaluation_folder,
    load_methods,
    report_table,
    summarize,
    worst_sheet,
    write_per_image_csv,
    write_report,
)
from segment.evaluation.baselines import BASELINES
from segment.imageio import DataError, keep_stored_orientation, write_png

EPILOG = """\
examples:
  python scripts/evaluate.py --model runs/shapes/model.keras --data data/shapes --out eval/
  python scripts/evaluate.py --model none --data my_photos/ --out eval_baselines/ --baselines otsu
  python scripts/evaluate.py --model runs/shapes/model.keras --data data/shapes --out eval/ \\
      --baselines none --worst 12 --overwrite

A dataset with a test/ split is evaluated on that split; otherwise DIR itself must hold
images/ and masks/. Every image is segmented at its own size.
"""

def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    # Required options default to SUPPRESS so that the help does not list "(default: None)".
    required = dict(required=True, default=argparse.SUPPRESS)
    parser.add_argument("--model", metavar="PATH", **required,
                        help="model file (.keras, or .onnx/.tflite/.xml from export.py), or 'none' to evaluate baselines alone")
    parser.add_argument("--data", type=Path, metavar="DIR", **required,
                        help="dataset folder (with test/) or an images/ + masks/ folder")
    parser.add_argument("--out", type=Path, metavar="DIR", **required,
                        help="folder for per_image.csv, summary.json, report.md, worst.png")
    parser.add_argument("--baselines", type=choice_list(BASELINES, what="baseline(s)", allow_none=True), default=",".join(BASELINES),
                        metavar="NAMES",
                        help=f"comma-separated, from {', '.join(BASELINES)}; '' or none for "
                             "the model alone")
    add_inference_flags(parser)
    parser.add_argument("--void", type=int, default=None, metavar="VALUE",
                        help="the masks' value for void pixels (a border nobody labelled, as "
                             "Pascal VOC's 255), which no score counts (default: found in VOC "
                             "palettes)")
    add_orientation_flag(parser)
    parser.add_argument("--worst", type=non_negative, default=6, metavar="N",
                        help="rows of worst.png: images with the lowest IoU (0: no sheet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing earlier outputs")
    return parser


# --------------------------------------------------------------------------------------------


def _check_out(out, overwrite):
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"--out {out} is not empty; pass --overwrite to write into it anyway")


def main(argv=None, prog=None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    model_path = None if args.model.strip().lower() == "none" else Path(args.model)
    if model_path is None and not args.baselines:
        parser.error("nothing to evaluate: --model none and no --baselines")

    keep_stored_orientation(args.keep_orientation)
    try:
        _check_out(args.out, args.overwrite)
        folder = evaluation_folder(args.data)
        pairs = find_pairs(folder)
        for note in (pairing_note(pairs), lossy_mask_note(pairs)):
            if note:
                print(note)
        methods = load_methods(model_path, args.baselines, **inference_options(args))
        print(f"evaluating {', '.join(methods)} on {len(pairs)} images in {folder}")
        rows = evaluate_folder(pairs, methods, void=args.void)
        args.out.mkdir(parents=True, exist_ok=True)
        write_per_image_csv(args.out / "per_image.csv", rows)
        with open(args.out / "summary.json", "w", encoding="utf-8") as handle:
            json.dump(summarize(rows), handle, indent=2)
        write_report(args.out / "report.md", rows, data_folder=folder, image_count=len(pairs))
        if args.worst > 0:
            write_png(args.out / "worst.png", worst_sheet(pairs, methods, rows, count=args.worst))
    except (DataError, ValueError) as error:  # DataError is a ValueError; named for the reader
        return fail(error)

    print(report_table(rows))
    outputs = ["per_image.csv", "summary.json", "report.md"] + (["worst.png"] if args.worst else [])
    print(f"wrote {', '.join(outputs)} to {args.out}")
    return 0

