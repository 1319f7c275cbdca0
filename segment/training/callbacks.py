"""What runs after each epoch: validation as prediction runs, the rate, the run folder's writers."""

import json
import time

import keras
import numpy as np

from segment.evaluation import image_ious, model_method
from segment.imageio import write_text
from segment.training.run_folder import BACKUP, save_atomically
from segment.training.selection import clearly_worse


def epoch_method(model):
    """The model as each epoch's validation runs it: as `predict.py` does
    (`segment.evaluation.model_method`), but at the working size alone."""
    return model_method(model, scales=(1.0,), refine=False)


# The best epoch's validation IoUs, kept beside the backup for a resumed run.
BEST_EPOCH = "best_epoch.json"


class Validation(keras.callbacks.Callback):
    """Adds `val_iou` to each epoch's logs: the per-image mean IoU of the model on the
    validation samples, segmented as `predict.py` segments them at the working size alone
    (`epoch_method`); the per-image IoUs are kept in `scores`."""

    def __init__(self, samples, local_model=None):
        super().__init__()
        self.samples = samples
        # Across workers, Keras's prediction gathers every worker's outputs: validation then
        # runs on a copy of the model that lives outside the strategy.
        self.local_model = local_model
        self.first_seconds = None  # the first pass, which traced the prediction graph
        self.scores = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            started = time.perf_counter()
            model = self.model
            if self.local_model is not None:
                self.local_model.set_weights(model.get_weights())
                model = self.local_model
            self.scores = image_ious(epoch_method(model), self.samples)
            logs["val_iou"] = float(np.mean(self.scores))
            if self.first_seconds is None:
                self.first_seconds = time.perf_counter() - started


class LearningRate(keras.callbacks.Callback):
    """Adds `lr` to each epoch's logs: the rate StepHalvingSGD used last, halvings included."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            step = optimizer.iterations - 1
            logs["lr"] = float(optimizer.learning_rate * optimizer.halving_factor(step))


class KeepEpoch(keras.callbacks.Callback):
    """Saves the model after an epoch unless its validation IoUs are clearly worse than the best
    epoch's so far (`clearly_worse`, over the validation groups): the latest epoch within one
    standard error of the best is kept, not whichever one a few groups' noise put on top.

    The best epoch's IoUs are kept in `record` (a JSON file), so a resumed run goes on
    comparing with them; without it, the run compares with `best`, a mean IoU, alone."""

    def __init__(self, path, validation, *, groups, record, best=None):
        super().__init__()
        self.path, self.validation, self.groups, self.record = path, validation, groups, record
        self.best, self.best_mean = None, best
        if record.exists():
            kept = json.loads(record.read_text())
            self.best, self.best_mean = kept["scores"], float(np.mean(kept["scores"]))

    def on_epoch_end(self, epoch, logs=None):
        scores = self.validation.scores
        if self.best is not None:
            keep = not clearly_worse(scores, self.best, self.groups)
        else:
            keep = self.best_mean is None or np.mean(scores) > self.best_mean
        if keep:
            save_atomically(self.model, self.path)
        if self.best_mean is None or np.mean(scores) > self.best_mean:
            self.best, self.best_mean = list(map(float, scores)), float(np.mean(scores))
            self.record.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.record, json.dumps({"epoch": epoch, "scores": self.best}))


def run_folder_callbacks(folder, validation, backup, *, best, groups, local_model):
    """What the chief runs after each epoch: validation, then everything it writes."""
    validating = Validation(validation, local_model)
    keep = KeepEpoch(folder / "model.keras", validating, groups=groups,
                     record=folder / BACKUP / BEST_EPOCH, best=best)
    return [
        validating,  # first: the callbacks below read its val_iou
        LearningRate(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(folder / "history.csv"), append=True),
        keep,
        keras.callbacks.TensorBoard(str(folder / "logs"), write_graph=False, profile_batch=0),
        backup,  # last: an epoch counts as done only once everything above has seen it
    ]
