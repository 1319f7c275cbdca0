"""How a trained model's masks are finished, chosen on the validation images."""

import math
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from segment.evaluation import summarize
from segment.inference import (
    clean_mask,
    finish_mask,
    predict_probability,
)
from segment.metrics import b1_error, evaluate_masks, iou, spurious
from segment.model import InferenceSettings
from segment.training.devices import usable_cores
from segment.training.run_folder import save_atomically
from segment.training.selection import clearly_worse, group_means, standard_error

__all__ = ["FINISHING_WORKERS", "MIN_HOLES", "MIN_PARTS", "STRAY_PART_PRICE",
           "choose_mask_settings", "finishing_seconds"]


# Shares of the image's pixels below which predicted foreground parts may be dropped
# (`clean_mask`); training keeps the one that scores best on the validation images as the
# model's `min_part` (docs/experiments.md, "The smallest part").
MIN_PARTS = (0.0025, 0.005, 0.01, 0.02)

# What one stray part (or wrong hole count) per image is worth in validation IoU when choosing
# the mask settings: a price, because "no IoU lost at all" kept parts that cost IoU elsewhere.
STRAY_PART_PRICE = 0.005

# Shares of the image's pixels below which holes in the masks may be filled (`clean_mask`),
# chosen with `min_part` (docs/experiments.md, "Small holes filled").
MIN_HOLES = (0.0025, 0.01)
_PARTS, _HOLES = (0.0, *MIN_PARTS), (0.0, *MIN_HOLES)  # the settings tried: none, or each

# Validation images are predicted FINISHING_CHUNK at a time (the predictions of a chunk are all
# that is held at once), then their masks finished and scored on FINISHING_WORKERS threads, one
# per core and no more than a chunk keeps busy (OpenCV releases Python's lock, and seeds
# GrabCut per thread); the budget times them there (`finishing_seconds`).
FINISHING_CHUNK = 8
FINISHING_WORKERS = min(usable_cores(), FINISHING_CHUNK)


def choose_mask_settings(model_path, samples, *, groups=None):
    """Per-image mean metrics of the saved model on the validation samples, as predicted,
    once the model's mask settings have been chosen on them and saved with it.

    The settings are whether to refine the mask with GrabCut (`refine_mask`), `min_part`, of
    0 and `MIN_PARTS`, and `min_hole`, of 0 and `MIN_HOLES`: those whose masks score best as
    mean IoU less `STRAY_PART_PRICE` times the mean stray parts (`segment.metrics.spurious`)
    and wrong hole counts (`b1_error`) per image; the first of equals, so no refinement and
    nothing dropped or filled unless the validation images gain from it. Refinement, whose
    gain varies most from one group of images to the next, is kept only where the best
    settings without it are clearly worse (`clearly_worse`, over `groups`). The network's
    prediction is made once per image, and every setting's mask is made from it; the chosen
    one's masks are then scored on every metric.

    `iou_standard_error` is how far the mean IoU could be from the same model's on more images
    drawn alike. Images of one group (`groups`, a label per sample: a video's frames) are not
    independent, so it is taken over the groups' mean IoUs, and `iou_standard_error_groups`
    says over how many; without `groups`, over the images.
    """
    # Loaded compiled, as the checkpoint was saved, so that it can be saved again as it was.
    model = keras.saving.load_model(model_path, safe_mode=True)
    options = [(refine, part, hole)
               for refine in (False, True) for part in _PARTS for hole in _HOLES]
    scores = {option: [] for option in options}
    kept = []  # per image, packed: its truth, and its masks (and seconds) without and with refining
    # The network predicts a few images at a time on every core; then their masks are finished
    # and scored on one core each, since GrabCut's refinement runs on one (`FINISHING_WORKERS`).
    with ThreadPoolExecutor(FINISHING_WORKERS) as pool:
        for chunk in _chunks(samples, FINISHING_CHUNK):
            predicted = []
            for name, image, truth in chunk:
                if not kept and not predicted:
                    predict_probability(model, image)  # traces the prediction graph, untimed
                started = time.perf_counter()
                probability = predict_probability(model, image)
                predicted.append((name, image, truth, probability,
                                  time.perf_counter() - started))
            finished = pool.map(lambda item: _finished(model, *item), predicted)
            for (name, _, truth, _, _), (made, image_scores) in zip(predicted, finished):
                for option, value in image_scores.items():
                    scores[option].append(value)
                kept.append((name, truth.shape, np.packbits(truth), made))
    means = {option: np.mean(scores[option], axis=0) for option in options}
    worth = {option: [iou_value - STRAY_PART_PRICE * (stray + holes_wrong)
                      for iou_value, stray, holes_wrong in scores[option]] for option in options}
    best = max(options, key=lambda option: np.mean(worth[option]))  # the first of equals
    plain = max((option for option in options if not option[0]),
                key=lambda option: np.mean(worth[option]))
    refine, part, hole = chosen = best if clearly_worse(worth[plain], worth[best], groups) else plain
    saved = InferenceSettings.of(model)
    if chosen != (saved.refine, saved.min_part, saved.min_hole):
        model.inference.update({"refine": refine, "min_part": part, "min_hole": hole})
        save_atomically(model, model_path)
    rows = []
    for name, shape, truth, made in kept:
        packed, seconds = made[refine]
        mask = clean_mask(_unpack(packed, shape), min_part=part, min_hole=hole)
        truth = _unpack(truth, shape)
        rows.append({"method": "model", "file": name, **evaluate_masks(mask, truth),
                     "seconds": seconds})
    results = summarize(rows)["model"]
    results.pop("count")
    results["seconds_per_image"] = results.pop("seconds")
    results["iou_standard_error"], results["iou_standard_error_groups"] = _standard_error(
        [row["iou"] for row in rows], groups)
    results.update(refine=refine, min_part=part, min_hole=hole)
    for name, option in (("without_min_part", (refine, 0.0, hole)),
                         ("without_min_hole", (refine, part, 0.0)),
                         ("without_refine", (False, part, hole))):
        results[name] = dict(zip(("iou", "spurious", "b1_error"), map(float, means[option])))
    return results


def finishing_seconds(model, samples, probabilities):
    """The seconds that `choose_mask_settings` takes to finish and score `samples` from their
    `probabilities` (in order), on its `FINISHING_WORKERS` threads: each image's masks with
    and without refining, and every setting's scores."""
    started = time.perf_counter()
    with ThreadPoolExecutor(FINISHING_WORKERS) as pool:
        list(pool.map(lambda item: _finished(model, *item[0], item[1], 0.0),
                      zip(samples, probabilities)))
    return time.perf_counter() - started


def _chunks(samples, size):
    """The samples in lists of `size` (the last may be shorter)."""
    chunk = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finished(model, name, image, truth, probability, predicted):
    """`(made, scores)` for one image: its mask without and with refining, packed, with the
    seconds each took (the prediction's included), and each setting's `[iou, spurious,
    b1_error]`."""
    made, scores = {}, {}
    for refine in (False, True):
        started = time.perf_counter()
        mask = finish_mask(model, image, probability, refine=refine, min_part=0.0, min_hole=0.0)
        made[refine] = (np.packbits(mask), predicted + time.perf_counter() - started)
        scored = {}  # the same mask from different settings is scored once
        for part in _PARTS:
            dropped = clean_mask(mask, min_part=part)  # as clean_mask does: parts, then holes
            for hole in _HOLES:
                cleaned = clean_mask(dropped, min_hole=hole)
                key = np.packbits(cleaned).tobytes()
                if key not in scored:
                    scored[key] = [score(cleaned, truth) for score in (iou, spurious, b1_error)]
                scores[(refine, part, hole)] = scored[key]
    return made, scores


def _standard_error(values, groups):
    """`(standard error of the mean, groups it was taken over or None)`: over the means of
    `groups` when given, else over `values`; None with fewer than two."""
    means = group_means(values, groups)
    return standard_error(means), None if groups is None else len(means)


def _unpack(packed, shape):
    """The bool array of `shape` that `np.packbits` packed."""
    return np.unpackbits(packed, count=math.prod(shape)).reshape(shape) > 0

