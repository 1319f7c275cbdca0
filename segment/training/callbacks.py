"""What runs after each epoch: validation as prediction runs, the rate, the run folder's writers."""

import time

import keras

from segment.evaluation import mean_iou, model_method


def epoch_method(model):
    """The model as each epoch's validation runs it: as `predict.py` does
    (`segment.evaluation.model_method`), but at the working size alone."""
    return model_method(model, scales=(1.0,), refine=False)


class Validation(keras.callbacks.Callback):
    """Adds `val_iou` to each epoch's logs: the per-image mean IoU of the model on the
    validation samples, segmented as `predict.py` segments them at the working size alone
    (`epoch_method`)."""

    def __init__(self, samples, local_model=None):
        super().__init__()
        self.samples = samples
        # Across workers, Keras's prediction gathers every worker's outputs: validation then
        # runs on a copy of the model that lives outside the strategy.
        self.local_model = local_model
        self.first_seconds = None  # the first pass, which traced the prediction graph

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            started = time.perf_counter()
            model = self.model
            if self.local_model is not None:
                self.local_model.set_weights(model.get_weights())
                model = self.local_model
            logs["val_iou"] = mean_iou(epoch_method(model), self.samples)
            if self.first_seconds is None:
                self.first_seconds = time.perf_counter() - started


class LearningRate(keras.callbacks.Callback):
    """Adds `lr` to each epoch's logs: the rate StepHalvingSGD used last, halvings included."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            step = optimizer.iterations - 1
            logs["lr"] = float(optimizer.learning_rate * optimizer.halving_factor(step))


def run_folder_callbacks(folder, validation, backup, *, best, local_model):
    """What the chief runs after each epoch: validation, then everything it writes."""
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(folder / "model.keras"),
        monitor="val_iou",
        mode="max",
        save_best_only=True,
        initial_value_threshold=best,
    )
    return [
        Validation(validation, local_model),  # first: the callbacks below read its val_iou
        LearningRate(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(folder / "history.csv"), append=True),
        checkpoint,
        keras.callbacks.TensorBoard(str(folder / "logs"), write_graph=False, profile_batch=0),
        backup,  # last: an epoch counts as done only once everything above has seen it
    ]

