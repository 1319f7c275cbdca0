"""Choices made on a few validation groups: kept only when clearly better."""

import json
import math

import keras
import numpy as np
import pytest

from segment.training.callbacks import KeepEpoch
from segment.training.selection import clearly_worse, group_means


def test_group_means_by_hand():
    assert group_means([1, 3, 5, 7], ["a", "b", "a", "b"]).tolist() == [3, 5]
    assert group_means([1, 3]).tolist() == [1, 3]


def test_clearly_worse_by_hand():
    best = [0.6, 0.6, 0.7, 0.7, 0.5, 0.5]
    groups = ["a", "a", "b", "b", "c", "c"]
    # Shortfalls per group 0.1, 0, 0.05: mean 0.05, spread 0.05, standard error 0.05 / sqrt(3)
    # = 0.029: clearly worse.
    assert clearly_worse([0.5, 0.5, 0.7, 0.7, 0.45, 0.45], best, groups)
    # Shortfalls 0.1, -0.05, 0: mean 0.017, spread 0.076, standard error 0.044: not.
    shortfalls = np.array([0.1, -0.05, 0.0])
    assert shortfalls.mean() < shortfalls.std(ddof=1) / math.sqrt(3)
    assert not clearly_worse([0.5, 0.5, 0.75, 0.75, 0.5, 0.5], best, groups)
    # The same shortfalls counted per image (no groups): six of them, a smaller error.
    assert clearly_worse([0.5, 0.5, 0.7, 0.7, 0.45, 0.45], best)
    # One group: any shortfall counts, none does not.
    assert clearly_worse([0.59, 0.6], [0.6, 0.6], ["a", "a"])
    assert not clearly_worse([0.6, 0.6], [0.6, 0.6], ["a", "a"])


class _Scores:
    scores = None


def _marked_model(value):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.full((1, 1), value, np.float32), np.zeros(1, np.float32)])
    return model


def _saved_mark(path):
    return float(keras.saving.load_model(path, safe_mode=True).get_weights()[0][0, 0])


@pytest.mark.parametrize("last_scores, kept", [
    # Two groups; epoch 1 is the best. Epoch 2 falls short by 0.02 and -0.005 (mean 0.0075,
    # standard error 0.0125): within one standard error, the later epoch is kept.
    ([0.58, 0.58, 0.405, 0.405], 2.0),
    # By 0.10 and 0.08 (mean 0.09, standard error 0.01): clearly worse, epoch 1 stays.
    ([0.50, 0.50, 0.32, 0.32], 1.0),
])
def test_the_latest_epoch_within_one_standard_error_of_the_best_is_kept(
        tmp_path, last_scores, kept):
    validating, path = _Scores(), tmp_path / "model.keras"
    record = tmp_path / "backup" / "best_epoch.json"
    keep = KeepEpoch(path, validating, groups=["a", "a", "b", "b"], record=record)
    for epoch, scores in enumerate([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.4, 0.4], last_scores]):
        keep.set_model(_marked_model(float(epoch)))
        validating.scores = scores
        keep.on_epoch_end(epoch, {})
    assert _saved_mark(path) == kept
    assert json.loads(record.read_text()) == {"epoch": 1, "scores": [0.6, 0.6, 0.4, 0.4]}
    # A resumed run compares with the best epoch's scores it recorded.
    resumed = KeepEpoch(path, validating, groups=["a", "a", "b", "b"], record=record)
    resumed.set_model(_marked_model(3.0))
    validating.scores = [0.5, 0.5, 0.3, 0.3]
    resumed.on_epoch_end(3, {})
    assert _saved_mark(path) == kept


def test_without_a_record_a_resumed_run_compares_with_the_best_mean(tmp_path):
    validating, path = _Scores(), tmp_path / "model.keras"
    keep = KeepEpoch(path, validating, groups=None, record=tmp_path / "none.json", best=0.5)
    keep.set_model(_marked_model(1.0))
    validating.scores = [0.4, 0.5]
    keep.on_epoch_end(4, {})
    assert not path.exists()
    validating.scores = [0.6, 0.5]
    keep.on_epoch_end(5, {})
    assert _saved_mark(path) == 1.0
