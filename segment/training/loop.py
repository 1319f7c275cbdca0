"""`train(config) -> (run folder, metrics)`: the whole training job, callable from a script
or a test."""

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from segment.imageio import DataError, keep_stored_orientation, write_text
from segment.inference.loading import CLICK_NETWORK
from segment.model import spans_workers
from segment.training.budget import Budget
from segment.training.callbacks import run_folder_callbacks
from segment.training.clicks import clicks_to_90, train_click_network
from segment.training.config import (
    TrainConfig,
    check_config,
    halve_every_steps,
    resolve_config,
)
from segment.training.devices import (
    LOST_PEER,
    is_chief,
    lost_worker,
    make_strategy,
    precision,
)
from segment.training.inputs import (
    distributed_stream,
    folder_pairs,
    training_stream,
    validation_samples,
)
from segment.training.mask_settings import choose_mask_settings
from segment.training.recipe import build_network, compile_network
from segment.training.run_folder import (
    BACKUP,
    history_best,
    prepare_run_folder,
    save_atomically,
    unfinished,
)
from segment.training.selection import clearly_worse

__all__ = ["train"]


def train(config, *, resume=None, overwrite=False, callbacks=(), verbose=None):
    """Train a segmenter and leave everything in a run folder.

    The run folder holds `config.json` (every setting, including those training chose),
    `model.keras` (the latest epoch within one standard error of the best validation IoU,
    `KeepEpoch`), `history.csv`, `metrics.json` (per-image mean validation metrics of
    `model.keras`, segmented as `predict.py` segments: at the images' own size), TensorBoard
    `logs/`, and while training `backup/`, from which a killed run continues with `resume`.

    With `config.minutes`, training first measures this machine's speed on a throwaway model,
    then fixes the number of epochs that fit the budget and, unless given, their length
    (both recorded in `config.json`) and trains exactly as `epochs=N` would, from the same
    initial weights. Once the first epoch has run, the epochs are planned again from its own
    time, and once more from whole warm epochs after the last epoch before the first halving
    (`replan_epochs`; the rate is the same in those epochs under either plan), so a burst of
    other work during the few timed steps does not shorten the whole run, and steps that
    speed up over the first epochs do not leave time unused. A run with early epochs is
    planned a last time after its first epoch at the full size, the halvings and early epochs
    kept where they were (`schedule_epochs`, recorded too).

    With `strategy="multiworker"` (one process per machine, each given its place by
    `TF_CONFIG`), each worker reads its own share of every batch and the gradients are summed
    across workers, so the run equals a single process's with the same batch size. Only the
    chief (the `chief` task, else worker 0) writes the run folder; the others write nothing.
    The run folder must be on storage every worker reads: after a failure, starting every
    worker again with the same command continues from the chief's last backup.

    Args:
        config: a `TrainConfig`. Ignored when `resume` is given (the run's own config is used).
        resume: a run folder to continue from its last completed epoch. Defaults to None.
        overwrite: replace the outputs of an existing non-empty `config.out`. Defaults to False.
        callbacks: extra Keras callbacks, run after the run folder's own. Defaults to none.
        verbose: Keras progress: 1 (bar), 2 (a line per epoch); defaults to 1 on a terminal.

    Returns:
        `(run_folder, metrics)`: the `Path` of the run folder and the dict in `metrics.json`;
        `(None, None)` on a worker that is not the chief.

    Raises:
        ValueError: a setting the network or data cannot take (including `DataError` for
            a missing or bad `--data` folder or an existing run folder).
    """
    started = time.perf_counter()
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    config = _config_to_run(config, resume)
    keep_stored_orientation(config.keep_orientation)
    strategy = make_strategy(config.strategy)  # first: before any other TensorFlow work
    config, resume = _continue_interrupted(config, resume, overwrite, strategy)
    split = None if config.data is None else folder_pairs(config)
    pairs = None if split is None else (split.train, split.val)
    if split is not None:
        print(split.describe(), flush=True)
    size_from_images = pairs is not None and config.size is None  # a budget may lower it
    config = resolve_config(config, pairs, grouped=split is not None and split.grouped)
    _check_settings(config, strategy)
    chief = is_chief(strategy)
    folder, created = (prepare_run_folder(config, resume=resume, overwrite=overwrite) if chief
                       else (None, False))  # another worker writes nothing; reads the backup
    budget = None if config.epochs is not None else Budget(started + config.minutes * 60)
    with precision(config.mixed_precision):
        with _removed_if_unstarted(folder, created):
            if budget is not None:
                budget.plan(config, pairs, strategy, size_from_images=size_from_images)
                config.to_json(folder / "config.json")
            run = _Run(config, pairs, strategy, folder or Path(config.out),
                       groups=None if split is None else split.val_labels)
        seconds = run.fit(budget, folder, callbacks, verbose)
    if not chief:
        return None, None
    results = _close(folder, run, budget, split, seconds=seconds, started=started)
    if config.click_steps or config.click_minutes:
        with precision(config.mixed_precision):
            results = _train_clicks(folder, config, pairs, run, results, started=started,
                                    verbose=verbose)
    return folder, results


class _Run:
    """A run's model, restored from its backup if it has one, and its data."""

    def __init__(self, config, pairs, strategy, folder, *, groups=None):
        self.config, self.pairs, self.strategy = config, pairs, strategy
        self.groups = groups  # a group label per validation sample, or None
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = build_network(config)
            compile_network(self.model, config, halve_every=halve_every_steps(config))
            if config.init is not None:
                start_from(self.model, config.init)
        # The chief's run folder holds the backup; every other worker reads it there.
        self.backup = keras.callbacks.BackupAndRestore(str(folder / BACKUP))
        # Restore now rather than inside fit: the data stream must resume where it stopped.
        self.backup.set_model(self.model)
        with strategy.scope():
            self.backup.on_train_begin()
        start = int(self.model.optimizer.iterations.numpy()) * config.batch_size
        self.initial_epoch = start // (config.batch_size * config.steps_per_epoch)
        if spans_workers(strategy):
            self.train_data = distributed_stream(config, pairs, start, strategy)
        else:
            self.train_data = training_stream(config, pairs, start)
        self.validation = validation_samples(config, pairs)

    def fit(self, budget, folder, callbacks, verbose):
        """Train to the end (or a stop); the seconds it took."""
        config, model = self.config, self.model
        across_workers = spans_workers(self.strategy)
        if folder is not None:
            own = run_folder_callbacks(
                folder, self.validation, self.backup,
                best=history_best(folder / "history.csv", self.initial_epoch),
                groups=self.groups,
                local_model=build_network(config) if across_workers else None,
            )
        else:
            own = [keras.callbacks.TerminateOnNaN()]

        def fit(train_data, initial_epoch, extra_callbacks=()):
            model.fit(train_data, epochs=config.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=config.steps_per_epoch,
                      shuffle=False,  # the streams are already in their seeded order
                      callbacks=[*own, *callbacks, *extra_callbacks], verbose=verbose)

        started = time.perf_counter()
        try:
            if budget is not None and config.epochs > 1:
                budget.fit(fit, model, config, train_data=self.train_data,
                           first_epoch=self.initial_epoch,
                           stream=lambda start: training_stream(config, self.pairs, start),
                           validating=own[0], validation=self.validation, backup=self.backup,
                           config_path=folder / "config.json")
            else:
                fit(self.train_data, self.initial_epoch)
        except LOST_PEER as error:
            if not across_workers:
                raise
            raise lost_worker(error) from None
        return time.perf_counter() - started


def start_from(model, path):
    """Gives `model` the weights of the model saved at `path` (loaded with `safe_mode`); the
    optimizer starts afresh. A later backup, when resuming, replaces them."""
    try:
        saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises many kinds for a file it cannot read
        raise DataError(f"--init {path}: cannot load the model ({error})") from None
    shapes = [weight.shape for weight in saved.get_weights()]
    if shapes != [weight.shape for weight in model.get_weights()]:
        raise DataError(f"--init {path}: its network differs from the one its config.json "
                        "describes")
    model.set_weights(saved.get_weights())


def _close(folder, run, budget, split, *, seconds, started):
    """Choose the saved model's mask settings, score it as predicted, write metrics.json."""
    config = run.config
    stopped_at_deadline = budget.stopped_after if budget else None
    # TerminateOnNaN, or a caller's callback
    stopped_early = bool(run.model.stop_training) and stopped_at_deadline is None
    if not (folder / "model.keras").exists():
        raise RuntimeError("training stopped early (NaN loss?) before any epoch produced a model")
    results = choose_mask_settings(folder / "model.keras", run.validation, groups=run.groups)
    epochs_run = stopped_at_deadline or config.epochs
    trained_images = (epochs_run - run.initial_epoch) * config.steps_per_epoch * config.batch_size
    results.update(
        {
            "validation_images": len(run.validation),
            "validation_split": None if split is None else split.summary(),
            "stopped_early": stopped_early,
            "stopped_at_deadline": stopped_at_deadline,
            "train_seconds": round(seconds, 1),
            "train_images_per_second": round(trained_images / seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
        }
    )
    write_text(folder / "metrics.json", json.dumps(results, indent=2) + "\n")
    return results


def _train_clicks(folder, config, pairs, run, results, *, started, verbose):
    """Train the click network for the saved model (`segment.training.clicks`) and keep it
    beside it (`CLICK_NETWORK`) where the simulated annotator on the validation images needs
    clearly fewer clicks to IoU 0.90 with it than without (by more than the standard error
    of the difference, over the validation groups: `clearly_worse`); record its steps in
    config.json, the check in metrics.json."""
    validation = run.validation
    began = time.perf_counter()
    segmenter = keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)
    if config.click_steps:
        length, deadline = f"{config.click_steps} steps", None
    else:
        length = f"{config.click_minutes:g} minutes"
        deadline = began + config.click_minutes * 60
    print(f"training the click network for {length} (--click-minutes 0 for none), then "
          f"checking it on the {len(validation)} validation images", flush=True)
    initial = None if config.init is None else Path(config.init).with_name(CLICK_NETWORK)
    network, steps = train_click_network(
        config, pairs, segmenter, steps=config.click_steps, deadline=deadline,
        initial=initial if initial is not None and initial.is_file() else None,
        verbose=verbose)
    counts = clicks_to_90(segmenter, network, validation)
    kept = clearly_worse(np.negative(counts["without"]), np.negative(counts["with"]),
                         run.groups)
    scores = {name: float(np.mean(values)) for name, values in counts.items()}
    if kept:
        save_atomically(network, folder / CLICK_NETWORK)
    else:  # nor one from an earlier try of this run
        (folder / CLICK_NETWORK).unlink(missing_ok=True)
    print(f"validation: {scores['with']:.2f} clicks to IoU 0.90 with the click network, "
          f"{scores['without']:.2f} without: "
          + (f"saved as {CLICK_NETWORK}" if kept else "not clearly fewer, not kept"), flush=True)
    if not config.click_steps:  # recorded: a resumed or repeated run trains as many
        config.click_steps = steps
        config.to_json(folder / "config.json")
    results = {**results, "click_network": kept, "click_steps": steps,
               "click_noc90": scores["with"], "click_noc90_without": scores["without"],
               "click_seconds": round(time.perf_counter() - began, 1),
               "total_seconds": round(time.perf_counter() - started, 1)}
    write_text(folder / "metrics.json", json.dumps(results, indent=2) + "\n")
    return results


def _config_to_run(config, resume):
    """`config`, or a resumed run's own; checked."""
    if resume:
        config = TrainConfig.from_json(Path(resume) / "config.json")
    # A budgeted run's config.json holds the epochs it planned beside its budget: resumed, it
    # trains the rest of those epochs.
    check_config(dataclasses.replace(config, minutes=None) if resume and config.epochs else config)
    return config


def _continue_interrupted(config, resume, overwrite, strategy):
    """Across workers, every worker started again with the same command continues the
    interrupted run in `config.out`."""
    if spans_workers(strategy) and not resume and not overwrite and unfinished(config.out):
        resume = config.out
        config = TrainConfig.from_json(Path(resume) / "config.json")
        print(f"continuing the interrupted run in {resume} from its last backup", flush=True)
    return config, resume


def _check_settings(config, strategy):
    check_config(dataclasses.replace(config, minutes=None))
    if spans_workers(strategy) and config.epochs is None:
        raise ValueError(
            "--strategy multiworker needs --epochs: every worker must run the same number of "
            "epochs, and a --minutes budget would be measured on each machine apart"
        )


@contextlib.contextmanager
def _removed_if_unstarted(folder, created):
    """Removes a run folder this run created if its data or settings fail before training."""
    try:
        yield
    except (DataError, ValueError):
        if created:  # an unreadable file: leave nothing behind for a run that never started
            shutil.rmtree(folder)
        raise
