"""`train(config) -> run folder`: the whole training job, callable from a script or a test."""

import csv
import dataclasses
import functools
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from segment import data
from segment.config import TrainConfig
from segment.evaluation import mean_iou, model_method, summarize
from segment.imageio import DataError, write_text
from segment.inference import (
    clean_mask,
    finish_mask,
    model_min_hole,
    model_min_part,
    model_refine,
    model_scales,
    predict_probability,
    refine_mask,
)
from segment.losses import LOSSES
from segment.metrics import b1_error, evaluate_masks, iou, spurious
from segment.model import FULL_RESOLUTION_CHOICES, build_model, spans_workers
from segment.optimizers import StepHalvingSGD

__all__ = [
    "DATA_LR",
    "DATA_MINUTES",
    "HALVINGS",
    "MAX_WORKING_SIZE",
    "MIN_PARTS",
    "STEPS_PER_EPOCH",
    "STRAY_PART_PRICE",
    "SYNTHETIC_LR",
    "SYNTHETIC_MINUTES",
    "SYNTHETIC_SIZE",
    "budget_working_size",
    "choose_working_size",
    "native_half_precision",
    "plan_budget",
    "replan_epochs",
    "train",
]

_BACKUP = "backup"
_VALIDATION_SEED_OFFSET = 1_000_003  # the validation set is drawn from its own stream

# Wall-clock budgets when neither --epochs nor --minutes is given. A fixed number of epochs
# takes twice as long on one 2-core machine as on another (40 epochs of the synthetic default:
# 8 minutes on an AMD EPYC, 18 on an Intel Xeon at 2.1 GHz), so the default run is a budget:
# 9 minutes of synthetic shapes leave the whole command inside 10 on any machine.
SYNTHETIC_MINUTES = 9.0
DATA_MINUTES = 10.0
HALVINGS = 4  # rate halvings spread evenly over the run when --halve-every is not given
STEPS_PER_EPOCH = 100  # batches per epoch when --steps-per-epoch is not given, but:
# Under a --minutes budget, without --steps-per-epoch, epochs are made long enough that the
# validation pass and the checkpoints after each take at most this share of the run: at 100
# steps they took a quarter of a 10-minute Kvasir-SEG run (4 s of validation per 13 s epoch).
VALIDATION_SHARE = 0.1
# A budgeted run whose epochs slow down after its last re-plan (a shared machine) stops once
# its next epoch, then the final scoring, would end more than this share of an epoch past the
# budget: the budget is kept to within half an epoch, and a run on pace is never cut.
DEADLINE_SLACK = 0.5
# StepHalvingSGD's initial rate when --lr is not given. MSE-based losses have small gradients,
# so the rates are high. Synthetic shapes: 4 epochs of a sweep gave 0.05 -> IoU 0.83, 0.15 ->
# 0.89, 0.4 -> 0.93, 1.0 diverged. --data: on Kvasir-SEG (the same 10-minute run, seed 0),
# 0.25 led 0.5 in validation IoU at every epoch and ended at 0.784 against 0.774 (README).
SYNTHETIC_LR = 0.5
DATA_LR = 0.25
SYNTHETIC_SIZE = 128  # synthetic crop side when --size is not given
# --data working size when --size is not given: the images' own longer side (median over the
# training set), at most this.
MAX_WORKING_SIZE = 128
# A --data budget that buys fewer than FEW_STEPS steps at the working size chosen from the
# images works at 3/4 of it instead (`budget_working_size`), down to SMALLEST_WORKING_SIZE. On
# a 2-core machine without AVX-512, where 10 minutes bought 400-500 steps at 128 on
# Kvasir-SEG, `--size 96` fitted 750 (steps 1.47x faster) and scored 0.566 on the test split
# against 0.470 and 0.444 (validation 0.639 against 0.570 and 0.576); this rule, which times
# the machine again at 96, fitted 600 and scored 0.501; on ECSSD 0.599 -> 0.624. Where 128
# bought 2500 steps (ECSSD, a faster machine), 96 scored level with it (README).
FEW_STEPS = 1500
SMALLEST_WORKING_SIZE = 96
# A --data model's prediction averages these factors of the working size: the scale range
# training augments over (0.75-1.25) in steps of 1/8. On Kvasir-SEG (five models) and Oxford
# flowers, against the working size alone: validation IoU +0.006 and +0.002, stray parts and
# wrong hole counts about halved on Kvasir (README). Each epoch's validation uses the working
# size alone (a fifth of the cost); `metrics.json` scores the saved model with all of them.
DATA_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)
# Shares of the image's pixels below which predicted foreground parts may be dropped
# (`clean_mask`): after training, the model keeps the one that scores best on the validation
# images, IoU less STRAY_PART_PRICE per stray part per image, saved as its `min_part`. On
# Kvasir-SEG (five models) and Oxford flowers, the parts below 1% were nearly all stray: stray
# parts per test image 0.18 -> 0.06 and 0.47 -> 0.09, IoU +0.001 and +0.002 (README).
MIN_PARTS = (0.0025, 0.005, 0.01, 0.02)
# What one stray part per image is worth in validation IoU when choosing `min_part`. Under the
# earlier rule, "the fewest stray parts without lowering IoU", a synthetic default model (seed
# 1) kept every part: dropping those below 0.25% cost its 64 validation images 0.0007 IoU and
# removed 0.9 of 1.05 stray parts per image; kept, it left 2.8 stray parts per `hard` image
# and 5.0 on a separately written generator's noisy scenes (with them dropped, 0.37 and 0.40,
# at IoU +0.001 and -0.007). Where there are few stray parts to drop, the price can cost little
# IoU: at most STRAY_PART_PRICE times the stray parts per image.
STRAY_PART_PRICE = 0.005
# Shares of the image's pixels below which holes in the masks may be filled (`clean_mask`),
# chosen with `min_part`, a wrong hole count priced as a stray part. On ECSSD, refined masks
# had twice the unrefined ones' wrong hole counts (0.76 -> 1.51 per test image); filling
# those below 0.25% of the image left 0.61, at equal IoU (README).
MIN_HOLES = (0.0025, 0.01)


def _check(config):
    multiple = 2**config.depth
    if config.size is not None and (config.size < multiple or config.size % multiple):
        raise ValueError(
            f"--size {config.size} cannot be taken by the network: use a multiple of {multiple} "
            f"(2 ** depth, depth={config.depth})"
        )
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose from {', '.join(LOSSES)}")
    if config.full_resolution not in FULL_RESOLUTION_CHOICES:
        raise ValueError(
            f"unknown full-resolution level {config.full_resolution!r}; use "
            f"{' or '.join(FULL_RESOLUTION_CHOICES)}"
        )
    if config.strategy not in ("default", "mirrored", "multiworker"):
        raise ValueError(f"unknown strategy {config.strategy!r}; use default, mirrored or multiworker")
    for name in ("epochs", "steps_per_epoch", "batch_size", "halve_every"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if config.lr is not None and not config.lr > 0:
        raise ValueError(f"--lr must be positive, got {config.lr}")
    if config.minutes is not None and config.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {config.minutes}")
    if config.epochs is not None and config.minutes is not None:
        raise ValueError("give --epochs or --minutes, not both")
    if config.strategy == "multiworker" and config.out is None:
        raise ValueError(
            "--strategy multiworker needs --out: the same run folder for every worker, on "
            "storage they share (the chief writes it, every worker resumes from its backup)"
        )


def choose_working_size(pairs, *, multiple, largest=MAX_WORKING_SIZE):
    """The working size for a folder of images: their median longer side, at most `largest`,
    rounded to a multiple of `multiple` (the network's size multiple).

    Images are read for their size only (the file header), so this is fast on any folder.
    """
    longer_sides = []
    for image_path, _ in pairs:
        try:
            with Image.open(image_path) as image:
                longer_sides.append(max(image.size))
        except (OSError, ValueError) as error:
            raise DataError(f"{image_path}: cannot read the image size ({error})") from None
    side = min(float(np.median(longer_sides)), largest)
    return max(multiple, round(side / multiple) * multiple)


def budget_working_size(size, steps, *, multiple, few=FEW_STEPS,
                        smallest=SMALLEST_WORKING_SIZE):
    """The working size for a budget that buys `steps` training steps at working size `size`:
    `size` itself, or, when that is fewer than `few` steps, 3/4 of it rounded to a multiple of
    `multiple` and at least `smallest` (a size already at or below `smallest` stays)."""
    if steps >= few:
        return size
    smaller = max(smallest, round(size * 3 / 4 / multiple) * multiple)
    return min(size, smaller)


def _resolve(config, pairs):
    """A copy of `config` with the settings left open filled in (all but a budget's epochs)."""
    config = dataclasses.replace(config)
    if config.size is None:
        multiple = 2**config.depth
        config.size = (
            SYNTHETIC_SIZE if pairs is None
            else choose_working_size(pairs[0], multiple=multiple)
        )
    if config.lr is None:
        config.lr = SYNTHETIC_LR if pairs is None else DATA_LR
    if config.foreground_prior is None:
        if pairs is None:
            _, masks = data.synthetic_arrays(
                64, size=config.size, difficulty=config.difficulty, seed=config.seed
            )
            fraction = float(masks.mean())
        else:
            fraction = data.foreground_fraction(pairs[0], threshold=config.threshold)
        config.foreground_prior = round(min(max(fraction, 0.01), 0.99), 4)
    if config.mixed_precision is None:
        # Across machines every worker must compute alike: float32 unless asked otherwise.
        config.mixed_precision = config.strategy != "multiworker" and native_half_precision()
    if config.epochs is None and config.minutes is None:
        config.minutes = SYNTHETIC_MINUTES if pairs is None else DATA_MINUTES
    if config.steps_per_epoch is None and config.epochs is not None:
        config.steps_per_epoch = STEPS_PER_EPOCH  # a budget chooses its own (_fit_budget)
    return config


def _halve_every_steps(config):
    """Steps between rate halvings: `halve_every` epochs, or HALVINGS spread over the run."""
    if config.halve_every is not None:
        return config.halve_every * config.steps_per_epoch
    return max(1, math.ceil(config.epochs * config.steps_per_epoch / (HALVINGS + 1)))


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


# How a collective operation ends when another worker has gone away.
_LOST_PEER = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


def _is_chief(strategy):
    """Whether this process writes the run folder: the only process, the `chief` task, or
    worker 0 of a cluster without one (TF_CONFIG)."""
    if not spans_workers(strategy):
        return True
    resolver = strategy.cluster_resolver
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def _unfinished(folder):
    """Whether `folder` holds a run that stopped before its end (it has a backup)."""
    return folder is not None and (Path(folder) / _BACKUP).exists()


def _mixed_precision_policy():
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def native_half_precision():
    """Whether this machine computes half precision natively: a GPU, or a CPU whose flags
    (Linux /proc/cpuinfo) show bfloat16 instructions (AVX512-BF16, AMX, Arm BF16). Elsewhere
    bfloat16 is emulated and slower than float32."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    flags = set(match.group(1).split()) if match else set()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


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
    train_pairs, val_pairs = data.split_pairs(
        train_pairs, val_fraction=config.val_fraction, seed=config.seed
    )
    if not val_pairs:
        raise DataError(
            f"{config.data}: one image is not enough to train and validate; add images or a "
            "val/ folder"
        )
    return train_pairs, val_pairs


class _FolderSamples:
    """Validation samples `(name, image, truth)` read from their files on every pass, so
    memory does not grow with the validation set (the files were checked at start-up)."""

    def __init__(self, pairs, threshold):
        self.pairs, self.threshold = pairs, threshold

    def __len__(self):
        return len(self.pairs)

    def __iter__(self):
        for image_path, mask_path in self.pairs:
            image, mask = data.read_pair(image_path, mask_path, threshold=self.threshold)
            yield Path(image_path).name, image, mask


def _training_stream(config, pairs, start, shard=None):
    """The training stream, resumed at sample `start`.

    `pairs` is `_folder_pairs(config)` for `--data`, None for the synthetic stream; `shard`
    is `(worker, workers)` for one worker's share of each batch.
    """
    if pairs is None:
        return data.synthetic_dataset(
            size=config.size,
            batch_size=config.batch_size,
            difficulty=config.difficulty,
            seed=config.seed,
            start=start,
            shard=shard,
        )
    return data.folder_dataset(
        pairs[0],
        size=config.size,
        batch_size=config.batch_size,
        augment=True,
        seed=config.seed,
        threshold=config.threshold,
        start=start,
        shard=shard,
    )


def _validation_samples(config, pairs):
    """The validation samples `(name, image, truth)` at the images' own size: validation runs
    the model as prediction does. `pairs` as for `_training_stream`."""
    if pairs is not None:
        return _FolderSamples(pairs[1], config.threshold)
    images, masks = data.synthetic_arrays(
        config.val_count,
        size=config.size,
        difficulty=config.difficulty,
        seed=config.seed + _VALIDATION_SEED_OFFSET,
    )
    return [
        (f"{index:05d}", image, mask[..., 0] > 0.5)
        for index, (image, mask) in enumerate(zip(images, masks))
    ]


def _distributed_stream(config, pairs, start, strategy):
    """Each worker's share of the training stream, as a distributed dataset: worker `i` of
    `n` reads rows `i * b` to `(i + 1) * b - 1` of every batch, `b = batch_size / n`."""

    def worker_stream(context):
        if context.num_replicas_in_sync != context.num_input_pipelines:
            raise ValueError(
                f"--strategy multiworker takes one device per worker; this cluster has "
                f"{context.num_replicas_in_sync} devices on {context.num_input_pipelines} workers"
            )
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        return _training_stream(config, pairs, start, shard=shard)

    return strategy.distribute_datasets_from_function(worker_stream)


def _build(config):
    return build_model(
        base_filters=config.base_filters,
        depth=config.depth,
        full_resolution=config.full_resolution,
        context=config.context,
        foreground_prior=config.foreground_prior,
        # A --data model works on images scaled to the working size; prediction does the same,
        # and averages the four flips and DATA_SCALES, which at that size costs little (README).
        # A synthetic model keeps each image at its own scale and averages the flips: on the
        # default model's held-out and development sets, IoU +0.002 to +0.010 and fewer
        # stray parts on all eight; its five scales cost `hard` (small objects) 0.03.
        inference=(
            {"working_size": config.size, "tta": True, "scales": list(DATA_SCALES)}
            if config.data is not None else {"tta": True}
        ),
    )


def _compile(model, config, *, halve_every):
    model.compile(
        optimizer=StepHalvingSGD(
            learning_rate=config.lr, momentum=config.momentum, halve_every=halve_every
        ),
        loss=LOSSES[config.loss](),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
        jit_compile=config.jit_compile,
    )


def _epoch_method(model):
    """The model as each epoch's validation runs it: as `predict.py` does
    (`segment.evaluation.model_method`), but at the working size alone."""
    return model_method(model, scales=(1.0,), refine=False)


def _final_passes(model):
    """Validation passes that scoring the saved model in full costs, in units of one pass at
    the working size: loading it, then one pass per scale."""
    return 1 + len(model_scales(model))


class _Validation(keras.callbacks.Callback):
    """Adds `val_iou` to each epoch's logs: the per-image mean IoU of the model on the
    validation samples, segmented as `predict.py` segments them at the working size alone
    (`_epoch_method`)."""

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
            logs["val_iou"] = mean_iou(_epoch_method(model), self.samples)
            if self.first_seconds is None:
                self.first_seconds = time.perf_counter() - started


class _LearningRate(keras.callbacks.Callback):
    """Adds `lr` to each epoch's logs: the rate StepHalvingSGD used last, halvings included."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            step = optimizer.iterations - 1
            logs["lr"] = float(optimizer.learning_rate * optimizer.halving_factor(step))


class _StepTimes(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def on_train_begin(self, logs=None):
        self.times = []


class _Pace(_StepTimes):
    """Times a budgeted run's epochs until epoch `stop_after` has run, then stops `fit` so
    the budget can be planned again from them (`_replan`). Runs after every other callback.

    From a run's first epoch it keeps the pace of its steps (the epoch's second half: the
    first steps of a run are slower, while the graph is traced and the input pipeline and the
    kernels warm up), the time the first step took beyond it (`trace_seconds`), and what
    followed the last step (`after_seconds`: validation, checkpoints, logs). From later
    epochs it keeps the median whole epoch, from its end back to the end of the one before,
    leaving out the first epoch of this `fit` (`epoch_seconds`).
    """

    def __init__(self, stop_after):
        super().__init__()
        self.stop_after = stop_after

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.begun = time.perf_counter()
        self.epoch_ends = []
        self.stopped_by_another = True  # unless this fit reaches `stop_after`

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())
        if epoch < self.stop_after:
            return
        times = self.times
        half = len(times) // 2 if len(times) >= 4 else 0
        self.step_seconds = (times[-1] - times[half]) / max(1, len(times) - 1 - half)
        self.trace_seconds = max(0.0, times[0] - self.begun - self.step_seconds)
        self.after_seconds = self.epoch_ends[-1] - times[-1]
        ends = [self.begun, *self.epoch_ends]
        self.epoch_seconds = float(np.median(np.diff(ends[1:] if len(ends) > 2 else ends)))
        self.stopped_by_another = bool(self.model.stop_training)  # TerminateOnNaN, a caller's
        self.model.stop_training = True


class _Deadline(keras.callbacks.Callback):
    """Stops a budgeted run at its deadline if its epochs have slowed since it was planned.

    After each epoch (from the third of this `fit`: the first includes tracing), the next is
    taken to last as long as the median of the last three, and training stops when that
    epoch and then `final_seconds` (the final scoring) would end more than `DEADLINE_SLACK`
    of it past `deadline`. `stopped_after` is then the number of epochs run, else None.
    """

    def __init__(self, deadline, final_seconds, clock=time.perf_counter):
        super().__init__()
        self.deadline, self.final_seconds, self.clock = deadline, final_seconds, clock
        self.stopped_after = None

    def on_train_begin(self, logs=None):
        self.ends = [self.clock()]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(self.clock())
        if len(self.ends) < 4 or epoch + 1 >= self.params["epochs"]:
            return
        epoch_seconds = float(np.median(np.diff(self.ends[-4:])))
        late = self.ends[-1] + epoch_seconds + self.final_seconds - self.deadline
        if late > DEADLINE_SLACK * epoch_seconds:
            self.model.stop_training = True
            self.stopped_after = epoch + 1


def _fit_budget(config, pairs, strategy, deadline):
    """`(epochs, steps_per_epoch, validation_seconds, refine_seconds)`: the epochs that fit
    before `deadline` (a `time.perf_counter()` value) and their length, measured on a
    throwaway model: 30 training steps and a validation pass, each timed once warm
    (`plan_budget` does the arithmetic); that warm validation pass's time, and what refining
    the validation masks will cost in the final scoring (`_refine_seconds`)."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = _build(config)
        _compile(model, config, halve_every=1)
    train_data, validation = _training_stream(config, pairs, 0), _validation_samples(config, pairs)
    steps = _StepTimes()
    # The first steps trace the graph and warm up the kernels (longer in bfloat16): time the
    # steps after them, by the median, which an odd slow step does not move.
    fit_started = time.perf_counter()
    model.fit(train_data, epochs=1, steps_per_epoch=30, callbacks=[steps], shuffle=False, verbose=0)
    step_seconds = float(np.median(np.diff(steps.times[10:])))
    trace_seconds = steps.times[0] - fit_started
    mean_iou(_epoch_method(model), validation)  # traces the prediction graph
    started = time.perf_counter()
    mean_iou(_epoch_method(model), validation)
    validation_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:  # the checkpoint and the backup, per epoch
        started = time.perf_counter()
        model.save(Path(folder) / "model.keras")
        save_seconds = time.perf_counter() - started
    refine_seconds = _refine_seconds(validation)
    # What follows the last epoch: loading the best model, scoring it in full
    # (`_final_passes`) and saving it with its mask settings; and the real run traces the
    # training graph once more.
    epochs, steps_per_epoch = plan_budget(
        deadline - time.perf_counter() - _final_passes(model) * validation_seconds
        - refine_seconds - save_seconds - trace_seconds,
        step_seconds=step_seconds,
        after_epoch_seconds=validation_seconds + 2 * save_seconds,
        steps_per_epoch=config.steps_per_epoch,
    )
    return epochs, steps_per_epoch, validation_seconds, refine_seconds


def _refine_seconds(validation, model=None, timed=3):
    """What refining every validation mask with GrabCut costs (`_validation_metrics`), timed
    on the first `timed` images.

    GrabCut's time grows with the pixels a prediction leaves unsure, which differs by
    dataset: the same made-up prediction took half what refining trained networks' real
    predictions took on ECSSD photographs, and 2.75x on Kvasir-SEG's (README). So before
    training it is timed on a made-up prediction (a centred disk, sure inside and outside,
    unsure across a band of a tenth of the shorter side around its outline), and once a
    `model` has trained, on that model's own predictions (the predicting itself untimed).
    """
    samples = [sample for sample, _ in zip(validation, range(timed))]
    seconds = 0.0
    for _, image, _ in samples:
        if model is None:
            height, width = image.shape[:2]
            rows, columns = np.ogrid[:height, :width]
            distance = np.hypot(rows - height / 2, columns - width / 2) - min(height, width) / 4
            probability = np.clip(0.5 - 10 * distance / min(height, width), 0, 1)
        else:
            probability = predict_probability(model, image)
        started = time.perf_counter()
        refine_mask(image, probability)
        seconds += time.perf_counter() - started
    return seconds / max(1, len(samples)) * len(validation)


def plan_budget(seconds, *, step_seconds, after_epoch_seconds, steps_per_epoch=None):
    """`(epochs, steps_per_epoch)` for `seconds` of training.

    Each epoch costs `steps_per_epoch * step_seconds` plus `after_epoch_seconds` (validation
    and checkpoints). `steps_per_epoch` is kept when given; else epochs are made long enough
    that what follows each takes at most `VALIDATION_SHARE` of it, in multiples of 50 steps,
    at least `STEPS_PER_EPOCH`, and short enough for 8 epochs where the budget allows it.
    """
    if steps_per_epoch is None:
        share = VALIDATION_SHARE
        wanted = after_epoch_seconds * (1 - share) / (share * step_seconds)
        at_most = seconds / step_seconds / 8
        steps_per_epoch = max(STEPS_PER_EPOCH, 50 * math.ceil(min(wanted, at_most) / 50))
    epochs = max(1, int(seconds / (steps_per_epoch * step_seconds + after_epoch_seconds)))
    return epochs, steps_per_epoch


def replan_epochs(planned, *, seconds, epoch_seconds, done=1, halve_every=None):
    """The epochs of a budgeted run, planned again once `done` epochs have been timed.

    `seconds` is what is left of the budget after them (less what follows the last epoch);
    every further epoch costs `epoch_seconds`. The rate is constant until the first halving,
    so changing the epochs repeats `epochs=N` exactly as long as the first halving (at a fifth
    of the run, or every `halve_every` steps when given) stays past the `done` epochs under
    both plans; otherwise `planned` is kept.
    """
    epochs = done + max(0, int(seconds / epoch_seconds))
    if halve_every is None and min(epochs, planned) < (HALVINGS + 1) * done:
        return planned
    return epochs


def _next_replan(config, done):
    """The epoch after which a budgeted run, planned again after `done` epochs, plans once
    more, timed on warm epochs: the last before its first halving (at a fifth of the run);
    None when that is not later."""
    last = config.epochs // (HALVINGS + 1) - 1
    return last if last >= done else None


def _replan(model, config, pace, *, done, deadline, trace_seconds, save_seconds,
            first_validation, warm_validation, refine_seconds):
    """`config` with its epochs planned again after `done` epochs (timed by `_Pace`), the
    optimizer's halvings moved to match; whether anything changed.

    After the first epoch, an epoch is its steps at the pace of the first epoch's second
    half plus what follows them, whose validation pass traced the prediction graph for
    every image shape (`first_validation` seconds; later passes take `warm_validation`, as
    calibration timed them). Later, an epoch is what whole warm epochs took. What follows
    the last epoch, loading the best model and scoring it in full, costs a first pass and a
    warm pass per further scale (`_final_passes`), refining its masks (`refine_seconds`), and
    saving it again with its mask settings about what the first epoch's checkpoints took
    (`save_seconds`); changed halvings trace the training graph again (`trace_seconds`).
    """
    final = _final_seconds(model, first_validation, warm_validation, save_seconds, refine_seconds)
    if done == 1:
        after_epoch = max(0.0, pace.after_seconds - first_validation) + warm_validation
        epoch_seconds = config.steps_per_epoch * pace.step_seconds + after_epoch
    else:
        epoch_seconds = pace.epoch_seconds
    epochs = replan_epochs(
        config.epochs,
        seconds=deadline - time.perf_counter() - final - trace_seconds,
        epoch_seconds=epoch_seconds,
        done=done,
        halve_every=config.halve_every,
    )
    if epochs == config.epochs:
        return False
    config.epochs = epochs
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
    optimizer.halve_every = _halve_every_steps(config)
    model.make_train_function(force=True)  # the halving step is traced into the graph
    return True


def _final_seconds(model, first_validation, warm_validation, save_seconds, refine_seconds):
    """What follows a budgeted run's last epoch: scoring the best model in full, a first
    validation pass and a warm one per further scale, refining its masks, and saving it with
    its mask settings."""
    return (first_validation + (_final_passes(model) - 1) * warm_validation + refine_seconds
            + save_seconds)


def _history_best(path, initial_epoch):
    """Keep the history of completed epochs only; return the best val_iou in it."""
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
    scores = [float(row["val_iou"]) for row in rows if row.get("val_iou")]
    return max(scores) if scores else None


def _validation_metrics(model_path, samples):
    """Per-image mean metrics of the saved model on the validation samples, as predicted,
    once the model's mask settings have been chosen on them and saved with it.

    The settings are whether to refine the mask with GrabCut (`refine_mask`), `min_part`, of
    0 and `MIN_PARTS`, and `min_hole`, of 0 and `MIN_HOLES`: those whose masks score best as
    mean IoU less `STRAY_PART_PRICE` times the mean stray parts (`segment.metrics.spurious`)
    and wrong hole counts (`b1_error`) per image; the first of equals, so no refinement and
    nothing dropped or filled unless the validation images gain from it. The network's
    prediction is made once per image, and every setting's mask is made from it; the chosen
    one's masks are then scored on every metric.
    """
    # Loaded compiled, as the checkpoint was saved, so that it can be saved again as it was.
    model = keras.saving.load_model(model_path, safe_mode=True)
    parts, holes = (0.0, *MIN_PARTS), (0.0, *MIN_HOLES)
    options = [(refine, part, hole) for refine in (False, True) for part in parts for hole in holes]
    scores = {option: [] for option in options}
    kept = []  # per image, packed: its truth, and its masks (and seconds) without and with refining
    for index, (name, image, truth) in enumerate(samples):
        if index == 0:
            predict_probability(model, image)  # traces the prediction graph, untimed
        started = time.perf_counter()
        probability = predict_probability(model, image)
        predicted = time.perf_counter() - started
        made = {}
        for refine in (False, True):
            started = time.perf_counter()
            mask = finish_mask(model, image, probability, refine=refine, min_part=0.0,
                               min_hole=0.0)
            made[refine] = (np.packbits(mask), predicted + time.perf_counter() - started)
            scored = {}  # the same mask from different settings is scored once
            for part in parts:
                dropped = clean_mask(mask, min_part=part)  # as clean_mask does: parts, then holes
                for hole in holes:
                    cleaned = clean_mask(dropped, min_hole=hole)
                    key = np.packbits(cleaned).tobytes()
                    if key not in scored:
                        scored[key] = [score(cleaned, truth) for score in (iou, spurious, b1_error)]
                    scores[(refine, part, hole)].append(scored[key])
        kept.append((name, truth.shape, np.packbits(truth), made))
    means = {option: np.mean(scores[option], axis=0) for option in options}
    worth = {option: iou_mean - STRAY_PART_PRICE * (spurious_mean + holes_mean)
             for option, (iou_mean, spurious_mean, holes_mean) in means.items()}
    refine, part, hole = chosen = max(options, key=worth.get)  # the first of equals
    if chosen != (model_refine(model), model_min_part(model), model_min_hole(model)):
        model.inference.update({"refine": refine, "min_part": part, "min_hole": hole})
        _save_atomically(model, model_path)
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
    # How far the mean could be from the same model's on more images drawn alike. One image's
    # IoU spreads by 0.2-0.25 on photographs: 0.049 over 28 ECSSD images, 0.020 over 88 of
    # Kvasir-SEG's (README).
    ious = np.array([row["iou"] for row in rows])
    results["iou_standard_error"] = (
        float(ious.std(ddof=1) / math.sqrt(len(ious))) if len(ious) > 1 else None
    )
    results.update(refine=refine, min_part=part, min_hole=hole)
    for name, option in (("without_min_part", (refine, 0.0, hole)),
                         ("without_min_hole", (refine, part, 0.0)),
                         ("without_refine", (False, part, hole))):
        results[name] = dict(zip(("iou", "spurious", "b1_error"), map(float, means[option])))
    return results


def _unpack(packed, shape):
    """The bool array of `shape` that `np.packbits` packed."""
    return np.unpackbits(packed, count=math.prod(shape)).reshape(shape) > 0


def _save_atomically(model, model_path):
    """Save `model` (compiled, optimizer state and all) over `model_path`, atomically."""
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".model.") as scratch:
        staged = Path(scratch) / model_path.name
        model.save(staged)
        staged.replace(model_path)


def train(config, *, resume=None, overwrite=False, callbacks=(), verbose=None):
    """Train a segmenter and leave everything in a run folder.

    The run folder holds `config.json` (every setting, including those training chose),
    `model.keras` (the epoch with the best validation IoU), `history.csv`, `metrics.json`
    (per-image mean validation metrics of `model.keras`, segmented as `predict.py` segments:
    at the images' own size), TensorBoard `logs/`, and while training `backup/`, from which a
    killed run continues with `resume`.

    With `config.minutes`, training first measures this machine's speed on a throwaway model,
    then fixes the number of epochs that fit the budget and, unless given, their length
    (both recorded in `config.json`) and trains exactly as `epochs=N` would, from the same
    initial weights. Once the first epoch has run, the epochs are planned again from its own
    time, and once more from whole warm epochs after the last epoch before the first halving
    (`replan_epochs`; the rate is the same in those epochs under either plan), so a burst of
    other work during the few timed steps does not shorten the whole run, and steps that
    speed up over the first epochs do not leave time unused.

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
    if resume:
        config = TrainConfig.from_json(Path(resume) / "config.json")
    # A budgeted run's config.json holds the epochs it planned beside its budget: resumed, it
    # trains the rest of those epochs.
    _check(dataclasses.replace(config, minutes=None) if resume and config.epochs else config)
    # First: a multi-worker strategy must exist before any other TensorFlow work.
    strategy = _strategy(config.strategy)
    across_workers = spans_workers(strategy)
    chief = _is_chief(strategy)
    if across_workers and not resume and not overwrite and _unfinished(config.out):
        # Every worker started again with the same command continues the interrupted run.
        resume = config.out
        config = TrainConfig.from_json(Path(resume) / "config.json")
        print(f"continuing the interrupted run in {resume} from its last backup", flush=True)
    pairs = None if config.data is None else _folder_pairs(config)
    size_from_images = pairs is not None and config.size is None  # a budget may lower it
    config = _resolve(config, pairs)
    _check(dataclasses.replace(config, minutes=None))
    if across_workers and config.epochs is None:
        raise ValueError(
            "--strategy multiworker needs --epochs: every worker must run the same number of "
            "epochs, and a --minutes budget would be measured on each machine apart"
        )
    if chief:
        folder, created = _prepare_run_folder(config, resume=resume, overwrite=overwrite)
    else:  # writes nothing; reads the chief's backup
        folder, created = None, False
    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(_mixed_precision_policy())
    replan = False  # a budget planned here is planned again after its first epoch
    deadline_guard = None
    try:
        try:
            if config.epochs is None:
                replan = True
                deadline = started + config.minutes * 60
                config.epochs, config.steps_per_epoch, warm_validation, refine_seconds = (
                    _fit_budget(config, pairs, strategy, deadline)
                )
                steps = config.epochs * config.steps_per_epoch
                smaller = (
                    budget_working_size(config.size, steps, multiple=2**config.depth,
                                        few=FEW_STEPS, smallest=SMALLEST_WORKING_SIZE)
                    if size_from_images else config.size
                )
                if smaller != config.size:  # timed again at the smaller size
                    print(f"{steps} steps fit the budget at working size {config.size}: "
                          f"working at {smaller}", flush=True)
                    config.size = smaller
                    config.epochs, config.steps_per_epoch, warm_validation, refine_seconds = (
                        _fit_budget(config, pairs, strategy, deadline)
                    )
                print(
                    f"{config.minutes:g}-minute budget: {config.epochs} epochs of "
                    f"{config.steps_per_epoch} steps on this machine",
                    flush=True,
                )
                config.to_json(folder / "config.json")
            keras.utils.set_random_seed(config.seed)
            with strategy.scope():
                model = _build(config)
                _compile(model, config, halve_every=_halve_every_steps(config))
            # The chief's run folder holds the backup; every other worker reads it there.
            backup_dir = (folder if chief else Path(config.out)) / _BACKUP
            backup = keras.callbacks.BackupAndRestore(str(backup_dir))
            # Restore now rather than inside fit: the data stream must resume where it stopped.
            backup.set_model(model)
            with strategy.scope():
                backup.on_train_begin()
            start = int(model.optimizer.iterations.numpy()) * config.batch_size
            initial_epoch = start // (config.batch_size * config.steps_per_epoch)
            if across_workers:
                train_data = _distributed_stream(config, pairs, start, strategy)
            else:
                train_data = _training_stream(config, pairs, start)
            validation = _validation_samples(config, pairs)
        except (DataError, ValueError):
            if created:  # an unreadable file: leave nothing behind for a run that never started
                shutil.rmtree(folder)
            raise
        if chief:
            own_callbacks = _run_folder_callbacks(
                folder,
                validation,
                backup,
                best=_history_best(folder / "history.csv", initial_epoch),
                local_model=_build(config) if across_workers else None,
            )
        else:
            own_callbacks = [keras.callbacks.TerminateOnNaN()]
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        all_callbacks = own_callbacks + list(callbacks)
        fit = functools.partial(
            model.fit,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            shuffle=False,  # the streams are already in their seeded order
            callbacks=all_callbacks,
            verbose=verbose,
        )
        fit_started = time.perf_counter()
        try:
            first_epoch = initial_epoch
            # A budget is planned again after the first epoch (250-odd steps time this
            # machine far better than the throwaway's 20 did), then once more on warm epochs.
            stop_after = 0 if replan and config.epochs > 1 else None
            guard = []  # the deadline's guard, once the budget's first epoch is timed
            while stop_after is not None:
                pace = _Pace(stop_after)
                backup.delete_checkpoint = False  # the next fit continues from it
                fit(train_data, epochs=config.epochs, initial_epoch=first_epoch,
                    callbacks=all_callbacks + guard + [pace])
                backup.delete_checkpoint = True
                model.stop_training = pace.stopped_by_another
                if model.stop_training:  # a NaN loss, the deadline: no further fit to remove the backup
                    backup.on_train_end()
                    break
                done = stop_after + 1
                first_validation = own_callbacks[0].first_seconds
                if done == 1:  # the first epoch's trace and checkpoints
                    trace_seconds = pace.trace_seconds
                    save_seconds = max(0.0, pace.after_seconds - first_validation)
                    deadline_guard = _Deadline(deadline, 0.0)
                    guard = [deadline_guard]
                else:  # a network that has trained a fifth of the run: its own predictions
                    refine_seconds = _refine_seconds(validation, model)
                deadline_guard.final_seconds = _final_seconds(
                    model, first_validation, warm_validation, save_seconds, refine_seconds)
                if _replan(model, config, pace, done=done, deadline=deadline,
                           trace_seconds=trace_seconds, save_seconds=save_seconds,
                           first_validation=first_validation, warm_validation=warm_validation,
                           refine_seconds=refine_seconds):
                    print(f"after {done} epoch{'s' if done > 1 else ''}: {config.epochs} "
                          "epochs fit the budget", flush=True)
                    config.to_json(folder / "config.json")
                first_epoch = done
                train_data = _training_stream(config, pairs, done * config.steps_per_epoch
                                              * config.batch_size)
                stop_after = _next_replan(config, done) if done == 1 else None
            if not model.stop_training:
                fit(train_data, epochs=config.epochs, initial_epoch=first_epoch,
                    callbacks=all_callbacks + guard)
        except _LOST_PEER as error:
            if not across_workers:
                raise
            reason = re.sub(r"\{\{.*?\}\}\s*", "", str(error.message)).strip().splitlines()[0]
            raise RuntimeError(
                f"lost another worker ({reason}); start every worker again with the same "
                "command to continue from the last completed epoch"
            ) from None
        seconds = time.perf_counter() - fit_started
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if not chief:
        return None, None

    stopped_at_deadline = deadline_guard.stopped_after if deadline_guard else None
    # TerminateOnNaN, or a caller's callback
    stopped_early = bool(model.stop_training) and stopped_at_deadline is None
    if not (folder / "model.keras").exists():
        raise RuntimeError("training stopped early (NaN loss?) before any epoch produced a model")
    results = _validation_metrics(folder / "model.keras", validation)
    epochs_run = stopped_at_deadline or config.epochs
    trained_images = (epochs_run - initial_epoch) * config.steps_per_epoch * config.batch_size
    results.update(
        {
            "validation_images": len(validation),
            "stopped_early": stopped_early,
            "stopped_at_deadline": stopped_at_deadline,
            "train_seconds": round(seconds, 1),
            "train_images_per_second": round(trained_images / seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
        }
    )
    write_text(folder / "metrics.json", json.dumps(results, indent=2) + "\n")
    return folder, results


def _run_folder_callbacks(folder, validation, backup, *, best, local_model):
    """What the chief runs after each epoch: validation, then everything it writes."""
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(folder / "model.keras"),
        monitor="val_iou",
        mode="max",
        save_best_only=True,
        initial_value_threshold=best,
    )
    return [
        _Validation(validation, local_model),  # first: the callbacks below read its val_iou
        _LearningRate(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(folder / "history.csv"), append=True),
        checkpoint,
        keras.callbacks.TensorBoard(str(folder / "logs"), write_graph=False, profile_batch=0),
        backup,  # last: an epoch counts as done only once everything above has seen it
    ]
