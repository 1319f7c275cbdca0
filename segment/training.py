"""`train(config) -> run folder`: the whole training job, callable from a script or a test."""

import csv
import io
import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import keras
import tensorflow as tf

from segment import data, metrics
from segment.config import TrainConfig
from segment.imageio import DataError, write_text
from segment.losses import LOSSES
from segment.model import build_model
from segment.optimizers import StepHalvingSGD

__all__ = ["train"]

_BACKUP = "backup"
_VALIDATION_SEED_OFFSET = 1_000_003  # the validation set is drawn from its own stream


def _check(config):
    multiple = 2**config.depth
    if config.size < multiple or config.size % multiple:
        raise ValueError(
            f"--size {config.size} cannot be taken by the network: use a multiple of {multiple} "
            f"(2 ** depth, depth={config.depth})"
        )
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose from {', '.join(LOSSES)}")
    if config.strategy not in ("default", "mirrored", "multiworker"):
        raise ValueError(f"unknown strategy {config.strategy!r}; use default, mirrored or multiworker")
    for name in ("epochs", "steps_per_epoch", "batch_size", "halve_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")


def _prepare_run_folder(config, *, resume, overwrite):
    """The run folder, checked and created; also whether this call created it."""
    if resume:
        folder = Path(resume)
        if not (folder / "config.json").is_file():
            raise DataError(f"{folder}: not a run folder (no config.json) to resume")
        if not (folder / _BACKUP).exists() and (folder / "model.keras").exists():
            raise DataError(f"{folder}: this run already finished; start a new one with --out")
        return folder, False
    folder = Path(config.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise DataError(
            f"{folder}: already exists and is not empty; pass --resume {folder} to continue it "
            "or --overwrite to replace it"
        )
    created = not folder.exists()
    if overwrite and folder.exists():
        for name in ("model.keras", "history.csv", "metrics.json"):
            (folder / name).unlink(missing_ok=True)
        for name in (_BACKUP, "logs"):
            if (folder / name).exists():
                shutil.rmtree(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    config.out = str(folder)
    config.to_json(folder / "config.json")
    return folder, created


def _strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _mixed_precision_policy():
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def _folder_pairs(config):
    """`(train_pairs, val_pairs)` of `--data`, paired and checked before any output is written."""
    splits = data.dataset_splits(config.data)
    if "train" not in splits and "all" not in splits:
        raise DataError(
            f"{config.data}: no training images: expected {config.data}/images or "
            f"{config.data}/train (found only {', '.join(sorted(splits))})"
        )
    train_pairs = data.find_pairs(splits.get("train", splits.get("all")))
    if "val" in splits:
        return train_pairs, data.find_pairs(splits["val"])
    return data.split_pairs(train_pairs, val_fraction=config.val_fraction, seed=config.seed)


def _datasets(config, pairs, start):
    """The training stream (resumed at sample `start`) and fixed validation arrays.

    `pairs` is `_folder_pairs(config)` for `--data`, None for the synthetic stream.
    """
    if pairs is None:
        train = data.synthetic_dataset(
            size=config.size,
            batch_size=config.batch_size,
            difficulty=config.difficulty,
            seed=config.seed,
            start=start,
        )
        validation = data.synthetic_arrays(
            config.val_count,
            size=config.size,
            difficulty=config.difficulty,
            seed=config.seed + _VALIDATION_SEED_OFFSET,
        )
        return train, validation
    train_pairs, val_pairs = pairs
    validation = data.load_pairs(val_pairs, size=config.size, threshold=config.threshold)
    train = data.folder_dataset(
        train_pairs,
        size=config.size,
        batch_size=config.batch_size,
        augment=True,
        seed=config.seed,
        threshold=config.threshold,
        start=start,
    )
    return train, validation


def _compile(model, config):
    model.compile(
        optimizer=StepHalvingSGD(
            learning_rate=config.lr,
            momentum=config.momentum,
            halve_every=config.halve_every * config.steps_per_epoch,
        ),
        loss=LOSSES[config.loss](),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
        jit_compile=config.jit_compile,
    )


def _history_best(path, initial_epoch):
    """Keep the history of completed epochs only; return the best val_loss in it."""
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < initial_epoch]
    if rows:
        kept = io.StringIO(newline="")
        writer = csv.DictWriter(kept, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, kept.getvalue())
    else:
        path.unlink()
    losses = [float(row["val_loss"]) for row in rows if row.get("val_loss")]
    return min(losses) if losses else None


def _validation_metrics(model_path, images, masks, batch_size):
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)[..., 0]
    return metrics.mean_metrics(probabilities > 0.5, masks[..., 0] > 0.5)


def train(config, *, resume=None, overwrite=False, callbacks=(), verbose=None):
    """Train a segmenter and leave everything in a run folder.

    The run folder holds `config.json`, `model.keras` (best validation loss), `history.csv`,
    `metrics.json` (per-image mean validation metrics of `model.keras`), TensorBoard `logs/`,
    and while training `backup/`, from which a killed run continues with `resume`.

    Args:
        config: a `TrainConfig`. Ignored when `resume` is given (the run's own config is used).
        resume: a run folder to continue from its last completed epoch. Defaults to None.
        overwrite: replace the outputs of an existing non-empty `config.out`. Defaults to False.
        callbacks: extra Keras callbacks, run after the run folder's own. Defaults to none.
        verbose: Keras progress: 1 (bar), 2 (a line per epoch); defaults to 1 on a terminal.

    Returns:
        `(run_folder, metrics)`: the `Path` of the run folder and the dict in `metrics.json`.

    Raises:
        ValueError: a setting the network or data cannot take (including `DataError` for
            a missing or bad `--data` folder or an existing run folder).
    """
    if resume:
        config = TrainConfig.from_json(Path(resume) / "config.json")
    _check(config)
    pairs = None if config.data is None else _folder_pairs(config)
    folder, created = _prepare_run_folder(config, resume=resume, overwrite=overwrite)
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(_mixed_precision_policy())
    try:
        strategy = _strategy(config.strategy)
        with strategy.scope():
            model = build_model(
                base_filters=config.base_filters, depth=config.depth, context=config.context
            )
            _compile(model, config)
        backup = keras.callbacks.BackupAndRestore(str(folder / _BACKUP))
        # Restore now rather than inside fit: the data stream must resume where it stopped.
        backup.set_model(model)
        backup.on_train_begin()
        start = int(model.optimizer.iterations.numpy()) * config.batch_size
        initial_epoch = start // (config.batch_size * config.steps_per_epoch)
        try:
            train_data, (val_images, val_masks) = _datasets(config, pairs, start)
        except (DataError, ValueError):
            if created:  # an unreadable file: leave nothing behind for a run that never started
                shutil.rmtree(folder)
            raise
        best = _history_best(folder / "history.csv", initial_epoch)

        checkpoint = keras.callbacks.ModelCheckpoint(
            str(folder / "model.keras"),
            monitor="val_loss",
            save_best_only=True,
            initial_value_threshold=best,
        )
        own_callbacks = [
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(str(folder / "history.csv"), append=True),
            checkpoint,
            keras.callbacks.TensorBoard(
                str(folder / "logs"), write_graph=False, profile_batch=0
            ),
            backup,  # last: an epoch counts as done only once everything above has seen it
        ]
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        started = time.perf_counter()
        model.fit(
            train_data,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            validation_data=(val_images, val_masks),
            validation_batch_size=config.batch_size,
            shuffle=False,  # the streams are already in their seeded order
            callbacks=own_callbacks + list(callbacks),
            verbose=verbose,
        )
        seconds = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    stopped_early = bool(model.stop_training)  # TerminateOnNaN, or a caller's callback
    if not (folder / "model.keras").exists():
        raise RuntimeError("training stopped early (NaN loss?) before any epoch produced a model")
    results = _validation_metrics(folder / "model.keras", val_images, val_masks, config.batch_size)
    trained_images = (config.epochs - initial_epoch) * config.steps_per_epoch * config.batch_size
    results.update(
        {
            "validation_images": int(len(val_images)),
            "stopped_early": stopped_early,
            "train_seconds": round(seconds, 1),
            "train_images_per_second": round(trained_images / seconds, 1),
        }
    )
    write_text(folder / "metrics.json", json.dumps(results, indent=2) + "\n")
    return folder, results
