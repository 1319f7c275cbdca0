"""Evaluation reports: per-image CSV, the summary table, a contact sheet of the worst images."""

import csv
from pathlib import Path

import cv2
import numpy as np

from segment.data import read_pair
from segment.evaluation.scoring import COLUMNS, method_values
from segment.inference import error_picture
from segment.metrics import METRIC_NAMES

__all__ = ["LEGEND", "report_table", "worst_sheet", "write_per_image_csv", "write_report"]

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
        cells = [_mean_std(method_values(rows, method, column), number_format)
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

