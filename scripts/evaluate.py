"""Mask-quality report: a trained model and classical baselines on the same image/mask folder."""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from segment.baselines import BASELINES  # noqa: E402
from segment.cli import HelpFormatter, choice_list, non_negative, probability  # noqa: E402
from segment.data import dataset_splits, find_pairs, read_pair  # noqa: E402
from segment.imageio import DataError, write_png  # noqa: E402
from segment.inference import error_picture, load_segmenter, predict_mask  # noqa: E402
from segment.metrics import METRIC_NAMES, evaluate_masks  # noqa: E402

EPILOG = """\
examples:
  python scripts/evaluate.py --model runs/shapes/model.keras --data data/shapes --out eval/
  python scripts/evaluate.py --model none --data my_photos/ --out eval_baselines/ --baselines otsu
  python scripts/evaluate.py --model runs/shapes/model.keras --data data/shapes --out eval/ \\
      --baselines none --worst 12 --overwrite

A dataset with a test/ split is evaluated on that split; otherwise DIR itself must hold
images/ and masks/. Every image is segmented at its own size.
"""

# Report column headings and number formats, in METRIC_NAMES order, then seconds per image.
COLUMNS = {
    "iou": ("IoU", "{:.3f}"),
    "dice": ("Dice", "{:.3f}"),
    "precision": ("precision", "{:.3f}"),
    "recall": ("recall", "{:.3f}"),
    "pixel_accuracy": ("accuracy", "{:.3f}"),
    "boundary_f1": ("boundary F1", "{:.3f}"),
    "hd95": ("HD95 px", "{:.2f}"),
    "b0_error": ("B0 err", "{:.2f}"),
    "b1_error": ("B1 err", "{:.2f}"),
    "spurious": ("spurious", "{:.2f}"),
    "seconds": ("s/image", "{:.3f}"),
}

LEGEND = """\
Mean ± standard deviation over images; higher is better for the first six columns, lower for
the rest.

- IoU, Dice: overlap of predicted (P) and true (T) foreground, |P∩T| / |P∪T| and
  2|P∩T| / (|P|+|T|).
- precision: share of predicted foreground that is true; recall: share of true foreground found.
- accuracy: share of all pixels labelled correctly.
- boundary F1: DAVIS boundary F-measure, outlines matched within ceil(0.008 × diagonal) px.
- HD95 px: 95th-percentile distance between the outlines, in pixels (the image diagonal when
  exactly one mask is empty).
- B0 err: |objects predicted − true objects| (8-connected); B1 err: |holes predicted − true holes|.
- spurious: predicted specks that touch no true foreground pixel.
- s/image: seconds to segment one image (after one untimed warm-up call).

`worst.png` shows the images with the lowest IoU: image | truth | each method's prediction,
with correct foreground white, false foreground red and missed foreground blue.
"""

_CELL = 160  # contact-sheet cell side in pixels
_HEADER = 22  # contact-sheet title row height in pixels





def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    # Required options default to SUPPRESS so that the help does not list "(default: None)".
    required = dict(required=True, default=argparse.SUPPRESS)
    parser.add_argument("--model", metavar="PATH", **required,
                        help="model file (.keras), or 'none' to evaluate baselines alone")
    parser.add_argument("--data", type=Path, metavar="DIR", **required,
                        help="dataset folder (with test/) or an images/ + masks/ folder")
    parser.add_argument("--out", type=Path, metavar="DIR", **required,
                        help="folder for per_image.csv, summary.json, report.md, worst.png")
    parser.add_argument("--baselines", type=choice_list(BASELINES, what="baseline(s)", allow_none=True), default=",".join(BASELINES),
                        metavar="NAMES",
                        help=f"comma-separated, from {', '.join(BASELINES)}; '' or none for "
                             "the model alone")
    parser.add_argument("--threshold", type=probability, default=0.5, metavar="P",
                        help="model probability above which a pixel is foreground")
    parser.add_argument("--worst", type=non_negative, default=6, metavar="N",
                        help="rows of worst.png: images with the lowest IoU (0: no sheet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing earlier outputs")
    return parser


# --------------------------------------------------------------------------------------------
# Evaluation


def evaluation_folder(root):
    """The folder to evaluate: `root/test` when the dataset has one, else `root` itself."""
    splits = dataset_splits(root)
    folder = splits.get("test", splits.get("all"))
    if folder is None:
        raise DataError(
            f"{root}: has {', '.join(f'{name}/' for name in splits)} but no test/ split; "
            "pass one of those folders as --data to evaluate it"
        )
    return folder


def load_methods(model_path, baselines, *, threshold=0.5):
    """Segmenters by name, each `image -> bool mask`: "model" first (unless `model_path` is
    None), then the named baselines."""
    methods = {}
    if model_path is not None:
        model = load_segmenter(model_path)
        methods["model"] = lambda image: predict_mask(model, image, threshold=threshold)
    methods.update((name, BASELINES[name]) for name in baselines)
    return methods


def evaluate_folder(pairs, methods, *, warm_up=True):
    """Segment every pair with every method at native size; score and time each call.

    Args:
        pairs: `(image_path, mask_path)` tuples, e.g. from `segment.data.find_pairs`.
        methods: name -> callable taking a float RGB image `(height, width, 3)` in [0, 1] and
            returning a bool mask `(height, width)`.
        warm_up: call every method once on the first image before timing, so one-off costs
            (graph tracing, lazy imports) do not land on the first image. Defaults to True.

    Returns:
        One dict per (image, method), image by image: `method`, `file` (the image's name),
        every metric of `segment.metrics.METRIC_NAMES` and `seconds`.
    """
    rows = []
    for index, (image_path, mask_path) in enumerate(tqdm(pairs, desc="evaluating", disable=None)):
        image, truth = read_pair(image_path, mask_path)
        for name, method in methods.items():
            if warm_up and index == 0:
                method(image)
            start = time.perf_counter()
            predicted = method(image)
            seconds = time.perf_counter() - start
            rows.append({"method": name, "file": Path(image_path).name,
                         **evaluate_masks(predicted, truth), "seconds": seconds})
    return rows


def _values(rows, method, column):
    return np.array([row[column] for row in rows if row["method"] == method], dtype=np.float64)


def summarize(rows):
    """`{method: {metric: mean, ..., "seconds": mean, "count": images}}`, methods in row order."""
    methods = dict.fromkeys(row["method"] for row in rows)
    return {
        method: {
            **{column: float(_values(rows, method, column).mean()) for column in COLUMNS},
            "count": int(_values(rows, method, "seconds").size),
        }
        for method in methods
    }


# --------------------------------------------------------------------------------------------
# Outputs


def write_per_image_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "file", *METRIC_NAMES, "seconds"])
        writer.writeheader()
        writer.writerows(rows)


def _mean_std(values, number_format):
    mean = values.mean()
    return f"{number_format.format(mean)} ± {number_format.format(values.std())}"


def report_table(rows):
    """Markdown table of mean ± std per method (rows) and metric (columns)."""
    headings = [heading for heading, _ in COLUMNS.values()]
    lines = ["| method | " + " | ".join(headings) + " |", "|---" * (len(headings) + 1) + "|"]
    for method in dict.fromkeys(row["method"] for row in rows):
        cells = [_mean_std(_values(rows, method, column), number_format)
                 for column, (_, number_format) in COLUMNS.items()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path, rows, *, data_folder, image_count):
    text = (
        "# Mask-quality evaluation\n\n"
        f"{image_count} images from `{data_folder}`, each segmented at its own size.\n\n"
        f"{report_table(rows)}\n\n{LEGEND}"
    )
    Path(path).write_text(text, encoding="utf-8")


def _fit(picture, *, nearest):
    """`picture` (uint8 RGB) scaled to fit a square cell, centred on dark gray."""
    height, width = picture.shape[:2]
    scale = _CELL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Masks and enlarged images keep hard pixel edges; shrunk images are area-averaged.
    interpolation = cv2.INTER_NEAREST if nearest or scale > 1 else cv2.INTER_AREA
    picture = cv2.resize(picture, size, interpolation=interpolation)
    cell = np.full((_CELL, _CELL, 3), 40, np.uint8)
    top, left = (_CELL - size[1]) // 2, (_CELL - size[0]) // 2
    cell[top : top + size[1], left : left + size[0]] = picture
    return cell


def _label(cell, text, *, bottom=False):
    """Small white text with a dark outline, readable on any background."""
    origin = (4, _CELL - 6 if bottom else 14)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(cell, text, origin, font, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(cell, text, origin, font, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return cell


def worst_sheet(pairs, methods, rows, *, count):
    """Contact sheet of the `count` images with the lowest IoU, as a uint8 RGB array.

    Ranked by the model's IoU when a model was evaluated, else by the first method's. The
    rows are `image | truth | prediction per method`. Predictions are recomputed for these few
    images rather than kept for all of them, which keeps memory flat on large folders.
    """
    ranking_method = "model" if "model" in methods else next(iter(methods))
    ranked = sorted((row["iou"], row["file"]) for row in rows if row["method"] == ranking_method)
    by_file = {Path(image_path).name: (image_path, mask_path) for image_path, mask_path in pairs}
    iou_of = {(row["method"], row["file"]): row["iou"] for row in rows}

    titles = ["image", "truth", *methods]
    header = np.zeros((_HEADER, _CELL * len(titles), 3), np.uint8)
    for column, title in enumerate(titles):
        cv2.putText(header, title, (column * _CELL + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    sheet_rows = [header]
    for _, file in ranked[:count]:
        image, truth = read_pair(*by_file[file])
        cells = [
            _label(_fit(np.round(image * 255).astype(np.uint8), nearest=False), file),
            _fit(np.repeat(truth[..., None].astype(np.uint8) * 255, 3, axis=2), nearest=True),
        ]
        for name, method in methods.items():
            cell = _fit(error_picture(method(image), truth), nearest=True)
            cells.append(_label(cell, f"IoU {iou_of[name, file]:.3f}", bottom=True))
        sheet_rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(sheet_rows, axis=0)


# --------------------------------------------------------------------------------------------


def _check_out(out, overwrite):
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"--out {out} is not empty; pass --overwrite to write into it anyway")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model_path = None if args.model.strip().lower() == "none" else Path(args.model)
    if model_path is None and not args.baselines:
        parser.error("nothing to evaluate: --model none and no --baselines")

    try:
        _check_out(args.out, args.overwrite)
        folder = evaluation_folder(args.data)
        pairs = find_pairs(folder)
        methods = load_methods(model_path, args.baselines, threshold=args.threshold)
        print(f"evaluating {', '.join(methods)} on {len(pairs)} images in {folder}")
        rows = evaluate_folder(pairs, methods)
        args.out.mkdir(parents=True, exist_ok=True)
        write_per_image_csv(args.out / "per_image.csv", rows)
        with open(args.out / "summary.json", "w", encoding="utf-8") as handle:
            json.dump(summarize(rows), handle, indent=2)
        write_report(args.out / "report.md", rows, data_folder=folder, image_count=len(pairs))
        if args.worst > 0:
            write_png(args.out / "worst.png", worst_sheet(pairs, methods, rows, count=args.worst))
    except (DataError, ValueError) as error:  # DataError is a ValueError; named for the reader
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(report_table(rows))
    outputs = ["per_image.csv", "summary.json", "report.md"] + (["worst.png"] if args.worst else [])
    print(f"wrote {', '.join(outputs)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
