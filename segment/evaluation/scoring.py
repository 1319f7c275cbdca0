"""Scoring segmenters on images with known masks: one code path for training and evaluation.

Training validates with `evaluate_samples` on the model as `predict.py` would run it (the
image at its own size, brought to the model's working scale and back), so the validation
figures in a run folder are what a user will get; `scripts/evaluate.py` runs the same
functions on a test folder, beside the classical baselines.
"""

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segment.data import dataset_splits, read_pair
from segment.evaluation.baselines import BASELINES
from segment.imageio import DataError
from segment.inference import load_segmenter, predict_mask
from segment.metrics import evaluate_masks, iou
from segment.model import InferenceSettings

__all__ = [
    "COLUMNS", "evaluate_folder", "evaluate_samples", "evaluation_folder", "load_methods",
    "image_ious", "mean_iou", "method_values", "model_method", "summarize",
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
            (`segment.model.InferenceSettings.threshold`).
        **predict_options: passed to `segment.inference.predict_probability`.
    """
    threshold = InferenceSettings.of(model).replace(threshold=threshold).threshold
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


def _read_samples(pairs, threshold=None, void=None):
    for image_path, mask_path in pairs:
        yield (Path(image_path).name,
               *read_pair(image_path, mask_path, threshold=threshold, void=void))


def evaluate_folder(pairs, methods, *, warm_up=True, threshold=None, void=None, progress=True):
    """`evaluate_samples` on image/mask files, read one pair at a time (memory stays flat).

    Args:
        pairs: `(image_path, mask_path)` tuples, e.g. from `segment.data.find_pairs`.
        methods: name -> callable, as for `evaluate_samples`.
        warm_up: as for `evaluate_samples`. Defaults to True.
        threshold: passed to `segment.imageio.read_mask` for multi-valued masks. Defaults
            to None (strict binary masks).
        void: the masks' value for void pixels, which no metric counts
            (`segment.imageio.read_labels`). Defaults to None (found in VOC palettes only).
        progress: show a progress bar. Defaults to True.
    """
    return evaluate_samples(
        _read_samples(pairs, threshold, void), methods, warm_up=warm_up, progress=progress
    )


def image_ious(method, samples):
    """The IoU of one segmenter on each of `(name, image, truth)` samples (no timing)."""
    return [iou(method(image), truth) for _, image, truth in samples]


def mean_iou(method, samples):
    """Per-image mean IoU of one segmenter over `(name, image, truth)` samples (no timing)."""
    return float(np.mean(image_ious(method, samples)))


def method_values(rows, method, column):
    return np.array([row[column] for row in rows if row["method"] == method], dtype=np.float64)


def summarize(rows):
    """`{method: {metric: mean, ..., "seconds": mean, "count": images}}`, methods in row order."""
    methods = dict.fromkeys(row["method"] for row in rows)
    return {
        method: {
            **{column: float(method_values(rows, method, column).mean()) for column in COLUMNS},
            "count": int(method_values(rows, method, "seconds").size),
        }
        for method in methods
    }

