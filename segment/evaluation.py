"""Scoring segmenters on images with known masks: one code path for training and evaluation.

Training validates with `evaluate_samples` on the model as `predict.py` would run it (the
image at its own size, brought to the model's working scale and back), so the validation
figures in a run folder are what a user will get; `scripts/evaluate.py` runs the same
functions on a test folder, beside the classical baselines.
"""

import csv
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segment.baselines import BASELINES
from segment.data import dataset_splits, read_pair
from segment.imageio import DataError
from segment.inference import error_picture, load_segmenter, model_threshold, predict_mask
from segment.metrics import METRIC_NAMES, evaluate_masks, iou

__all__ = [
    "COLUMNS",
    "LEGEND",
    "evaluate_folder",
    "evaluate_samples",
    "evaluation_folder",
    "load_methods",
    "mean_iou",
    "model_method",
    "report_table",
    "summarize",
    "worst_sheet",
    "write_per_image_csv",
    "write_report",
]

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


def model_method(model, *, threshold=None, **predict_options):
    """The model as a segmenter, `image -> bool mask`, run as `predict.py` runs it.

    Args:
        model: a `keras.Model`.
        threshold: foreground above this probability. Defaults to the model's own
            (`segment.inference.model_threshold`).
        **predict_options: passed to `segment.inference.predict_probability`.
    """
    threshold = model_threshold(model) if threshold is None else threshold
    return lambda image: predict_mask(model, image, threshold=threshold, **predict_options)


def load_methods(model_path, baselines, *, threshold=None, **predict_options):
    """Segmenters by name, each `image -> bool mask`: "model" first (unless `model_path` is
    None), then the named baselines. `threshold` and the `predict_probability` options
    (`resize`, `tta`, ...) default to the model's own."""
    methods = {}
    if model_path is not None:
        model = load_segmenter(model_path)
        methods["model"] = model_method(model, threshold=threshold, **predict_options)
    methods.update((name, BASELINES[name]) for name in baselines)
    return methods


def evaluate_samples(samples, methods, *, warm_up=True, progress=True):
    """Segment every sample with every method; score and time each call.

    Args:
        samples: iterable of `(name, image, truth)`: a float RGB image `(height, width, 3)` in
            [0, 1] and its bool mask `(height, width)`.
        methods: name -> callable taking an image and returning a bool mask of its size.
        warm_up: call every method once on the first image before timing, so one-off costs
            (graph tracing, lazy imports) do not land on the first image. Defaults to True.
        progress: show a progress bar (on a terminal). Defaults to True.

    Returns:
        One dict per (image, method), image by image: `method`, `file` (the sample's name),
        every metric of `segment.metrics.METRIC_NAMES` and `seconds`.
    """
    rows = []
    samples = tqdm(samples, desc="evaluating", disable=None if progress else True)
    for index, (name, image, truth) in enumerate(samples):
        for method_name, method in methods.items():
            if warm_up and index == 0:
                method(image)
            start = time.perf_counter()
            predicted = method(image)
            seconds = time.perf_counter() - start
            rows.append(
                {"method": method_name, "file": name, **evaluate_masks(predicted, truth),
                 "seconds": seconds}
            )
    return rows


def _read_samples(pairs, threshold=None):
    for image_path, mask_path in pairs:
        yield (Path(image_path).name, *read_pair(image_path, mask_path, threshold=threshold))


def evaluate_folder(pairs, methods, *, warm_up=True, threshold=None, progress=True):
    """`evaluate_samples` on image/mask files, read one pair at a time (memory stays flat).

    Args:
        pairs: `(image_path, mask_path)` tuples, e.g. from `segment.data.find_pairs`.
        methods: name -> callable, as for `evaluate_samples`.
        warm_up: as for `evaluate_samples`. Defaults to True.
        threshold: passed to `segment.imageio.read_mask` for multi-valued masks. Defaults
            to None (strict binary masks).
        progress: show a progress bar. Defaults to True.
    """
    return evaluate_samples(
        _read_samples(pairs, threshold), methods, warm_up=warm_up, progress=progress
    )


def mean_iou(method, samples):
    """Per-image mean IoU of one segmenter over `(name, image, truth)` samples (no timing)."""
    return float(np.mean([iou(method(image), truth) for _, image, truth in samples]))


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
# Reports


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
