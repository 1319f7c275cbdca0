"""Wall-clock budgets: timing this machine, planning the epochs, planning again, the deadline."""

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from segment.evaluation import mean_iou
from segment.inference import predict_probability
from segment.model import InferenceSettings
from segment.training.callbacks import epoch_method
from segment.training.config import (
    EARLY_SHARE,
    HALVINGS,
    STEPS_PER_EPOCH,
    early_epochs,
    early_size,
    halve_every_steps,
    schedule_epochs,
)
from segment.training.inputs import training_stream, validation_samples
from segment.training.mask_settings import FINISHING_WORKERS, finishing_seconds
from segment.training.recipe import build_network, compile_network

__all__ = [
    "Budget", "Deadline", "FEW_STEPS", "Pace", "SMALLEST_WORKING_SIZE", "budget_working_size",
    "fit_budget", "plan_budget", "plan_early_budget", "replan_epochs", "time_finishing",
]


# Under a --minutes budget, without --steps-per-epoch, epochs are made long enough that the
# validation pass and the checkpoints after each take at most this share of the run.
VALIDATION_SHARE = 0.1

# A budgeted run whose epochs slow down after its last re-plan (a shared machine) stops once
# its next epoch, then the final scoring, would end more than this share of an epoch past the
# budget: the budget is kept to within half an epoch, and a run on pace is never cut.
DEADLINE_SLACK = 0.5

# A --data budget that buys fewer than FEW_STEPS steps at the working size chosen from the
# images works at 3/4 of it instead, not below SMALLEST_WORKING_SIZE: on slow machines more
# steps at a smaller size learnt more (docs/experiments.md, "Budgets and time").
FEW_STEPS = 1500
SMALLEST_WORKING_SIZE = 96


def budget_working_size(size, steps, *, multiple, few=FEW_STEPS,
                        smallest=SMALLEST_WORKING_SIZE):
    """The working size for a budget that buys `steps` training steps at working size `size`:
    `size` itself, or, when that is fewer than `few` steps, 3/4 of it rounded to a multiple of
    `multiple` and at least `smallest` (a size already at or below `smallest` stays)."""
    if steps >= few:
        return size
    smaller = max(smallest, round(size * 3 / 4 / multiple) * multiple)
    return min(size, smaller)


def final_passes(model):
    """Validation passes that scoring the saved model in full costs, in units of one pass at
    the working size: loading it, then one pass per scale."""
    return 1 + len(InferenceSettings.of(model).scales)


class StepTimes(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def on_train_begin(self, logs=None):
        self.times = []


class Pace(StepTimes):
    """Times a budgeted run's epochs until epoch `stop_after` has run, then stops `fit` so
    the budget can be planned again from them (`plan_again`). Runs after every other callback.

    It keeps the pace of that epoch's steps (its second half: the first steps of a run are
    slower, while the graph is traced and the input pipeline and the kernels warm up), the
    time the first step of this `fit` took beyond it (`trace_seconds`), what followed the
    last step (`after_seconds`: validation, checkpoints, logs), and the median whole epoch,
    from its end back to the end of the one before, leaving out the first epoch of this `fit`
    (`epoch_seconds`).
    """

    def __init__(self, stop_after):
        super().__init__()
        self.stop_after = stop_after

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.begun = time.perf_counter()
        self.epoch_ends = []
        self.stopped_by_another = True  # unless this fit reaches `stop_after`

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_steps = len(self.times)  # where this epoch's step times begin

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())
        if epoch < self.stop_after:
            return
        times = self.times[self.epoch_steps:]
        half = len(times) // 2 if len(times) >= 4 else 0
        self.step_seconds = (times[-1] - times[half]) / max(1, len(times) - 1 - half)
        self.trace_seconds = max(0.0, self.times[0] - self.begun - self.step_seconds)
        self.after_seconds = self.epoch_ends[-1] - times[-1]
        ends = [self.begun, *self.epoch_ends]
        self.epoch_seconds = float(np.median(np.diff(ends[1:] if len(ends) > 2 else ends)))
        self.stopped_by_another = bool(self.model.stop_training)  # TerminateOnNaN, a caller's
        self.model.stop_training = True


class Deadline(keras.callbacks.Callback):
    """Stops a budgeted run at its deadline if its epochs have slowed since it was planned.

    After each epoch (from the third of this `fit`: the first includes tracing), the next is
    taken to last as long as the median of the last three, each weighed by `cost(epoch)`
    (an early epoch's time relative to a full-size one's), and training stops when that
    epoch and then `final_seconds` (the final scoring) would end more than `DEADLINE_SLACK`
    of it past `deadline`. `stopped_after` is then the number of epochs run, else None.
    """

    def __init__(self, deadline, final_seconds, clock=time.perf_counter):
        super().__init__()
        self.deadline, self.final_seconds, self.clock = deadline, final_seconds, clock
        self.stopped_after = None
        self.cost = lambda epoch: 1.0  # an epoch's time relative to a full-size one's

    def on_train_begin(self, logs=None):
        self.ends = [self.clock()]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(self.clock())
        if len(self.ends) < 4 or epoch + 1 >= self.params["epochs"]:
            return
        recent = np.diff(self.ends[-4:]) / [self.cost(e) for e in range(epoch - 2, epoch + 1)]
        epoch_seconds = float(np.median(recent)) * self.cost(epoch + 1)
        late = self.ends[-1] + epoch_seconds + self.final_seconds - self.deadline
        if late > DEADLINE_SLACK * epoch_seconds:
            self.model.stop_training = True
            self.stopped_after = epoch + 1


class Budget:
    """A run's wall-clock budget, from its first plan to its deadline.

    `plan` fixes the epochs that fit before `deadline` (a `time.perf_counter()` value) and
    their length, timed on a throwaway model (`fit_budget`). `fit` then trains in stages and
    plans the epochs again from the run's own epochs (`plan_again`): after the first, whose
    250-odd steps time this machine far better than the throwaway's 20, and after the last
    before the first halving, from whole warm epochs. So a burst of other work during the
    few timed steps does not shorten the whole run, and steps that speed up over the first
    epochs do not leave time unused. A run with early epochs plans a last time after its first
    epoch at the full size, timed at that size, keeping its halvings and early epochs where
    they are (`TrainConfig.schedule_epochs`): its early epochs, timed while they warm up, only
    guessed the full-size ones. From the first re-plan on, a `Deadline` stops a run whose
    epochs slow down.
    """

    def __init__(self, deadline):
        self.deadline = deadline
        self.guard = None  # the Deadline, once the first epoch is timed
        # What the closing scoring costs, in seconds: set by `plan`, then by the run itself.
        self.warm_validation = self.finishing_seconds = None
        self.first_validation = self.save_seconds = self.trace_seconds = None
        self.early_cost = 1.0  # an early epoch's step over a full-size one's, as timed

    @property
    def stopped_after(self):
        """The epochs run when the deadline stopped the run, else None."""
        return self.guard.stopped_after if self.guard else None

    def plan(self, config, pairs, strategy, *, size_from_images):
        """Set `config.epochs` and `config.steps_per_epoch` to what fits; a working size chosen
        from the images (`size_from_images`) becomes 3/4 of it where that buys too few steps
        (`budget_working_size`), timed again there."""
        self._time(config, pairs, strategy)
        if size_from_images:  # the steps bought at the full size decide
            steps = round(config.epochs * config.steps_per_epoch * mean_step(self.early_cost))
            smaller = budget_working_size(config.size, steps, multiple=2**config.depth,
                                          few=FEW_STEPS, smallest=SMALLEST_WORKING_SIZE)
            if smaller != config.size:
                print(f"{steps} steps fit the budget at working size {config.size}: "
                      f"working at {smaller}", flush=True)
                config.size = smaller
                self._time(config, pairs, strategy)
        early = early_epochs(config)
        print(f"{config.minutes:g}-minute budget: {config.epochs} epochs of "
              f"{config.steps_per_epoch} steps on this machine"
              + (f", the first {early} at {early_size(config)} px" if early else ""), flush=True)

    def _time(self, config, pairs, strategy):
        (config.epochs, config.steps_per_epoch, self.warm_validation, self.finishing_seconds,
         self.early_cost) = fit_budget(config, pairs, strategy, self.deadline)

    def fit(self, fit, model, config, *, train_data, first_epoch, stream, validating,
            validation, backup, config_path):
        """Train `model` to `config.epochs` in stages, planning the epochs again between them
        (each re-plan written to `config_path`).

        `fit(train_data, initial_epoch, extra_callbacks)` runs Keras's fit; `train_data` is the
        training stream from `first_epoch` on, `stream(start)` the same stream from sample
        `start`; `validating` is the run's `Validation` callback, `validation` its samples,
        `backup` its `BackupAndRestore`.
        """
        guard, stop_after = [], first_epoch
        while stop_after is not None:
            pace = Pace(stop_after)
            backup.delete_checkpoint = False  # the next fit continues from it
            fit(train_data, first_epoch, guard + [pace])
            backup.delete_checkpoint = True
            model.stop_training = pace.stopped_by_another
            if model.stop_training:  # a NaN loss, the deadline: no further fit removes the backup
                backup.on_train_end()
                return
            done = stop_after + 1
            self._after_stage(model, config, pace, done, validating.first_seconds, validation,
                              config_path)
            first_epoch, guard = done, [self.guard]
            train_data = stream(done * config.steps_per_epoch * config.batch_size)
            stop_after = next_replan(config, done)
        fit(train_data, first_epoch, guard)

    def _after_stage(self, model, config, pace, done, first_validation, validation, config_path):
        self.first_validation = first_validation
        if done == 1:  # the first epoch's trace and checkpoints
            self.trace_seconds = pace.trace_seconds
            self.save_seconds = max(0.0, pace.after_seconds - first_validation)
            self.guard = Deadline(self.deadline, 0.0)
            self.guard.cost = lambda epoch: (self.early_cost if epoch < early_epochs(config)
                                             else 1.0)
        else:  # a network that has trained a fifth of the run: its own predictions
            self.finishing_seconds = time_finishing(validation, model)
        self.guard.final_seconds = self.closing_seconds(model)
        if self.plan_again(model, config, pace, done=done):
            kept = config.schedule_epochs
            print(f"after {done} epoch{'s' if done > 1 else ''}: {config.epochs} epochs fit "
                  "the budget" + (f", the rate and sizes still scheduled over {kept}" if kept
                                  else ""), flush=True)
            config.to_json(config_path)

    def plan_again(self, model, config, pace, *, done):
        """`config` with its epochs planned again after `done` epochs (timed by `Pace`), the
        optimizer's halvings moved to match; whether anything changed.

        After the first epoch, an epoch is its steps at the pace of the first epoch's second
        half plus what follows them, whose validation pass traced the prediction graph for
        every image shape (`first_validation` seconds; later passes take `warm_validation`,
        as calibration timed them). Later, an epoch is what whole warm epochs took. What
        follows the last epoch costs `closing_seconds`; changed halvings trace the training
        graph again (`trace_seconds`). After the early epochs, see `plan_after_switch`.
        """
        if done > early_epochs(config) > 0:
            return self.plan_after_switch(model, config, pace, done=done)
        if done == 1:
            after_epoch = max(0.0, pace.after_seconds - self.first_validation) + self.warm_validation
            steps_seconds = config.steps_per_epoch * pace.step_seconds
        else:
            after_epoch = pace.after_seconds
            steps_seconds = max(0.0, pace.epoch_seconds - after_epoch)
        if done <= early_epochs(config):  # timed at the early size
            steps_seconds /= self.early_cost
        seconds = (self.deadline - time.perf_counter() - self.closing_seconds(model)
                   - self.trace_seconds)
        epochs = config.epochs
        for _ in range(3):  # the epochs left mix the two sizes as the plan they make does
            epochs = replan_epochs(
                config.epochs, seconds=seconds, done=done, halve_every=config.halve_every,
                epoch_seconds=self._mean_epoch(dataclasses.replace(config, epochs=epochs), done,
                                               steps_seconds, after_epoch),
            )
        # The epochs run so far must be early in the new plan exactly where they were.
        new = dataclasses.replace(config, epochs=epochs)
        if min(done, early_epochs(new)) != min(done, early_epochs(config)):
            return False
        if epochs == config.epochs:
            return False
        config.epochs = epochs
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
        optimizer.halve_every = halve_every_steps(config)
        model.make_train_function(force=True)  # the halving step is traced into the graph
        return True

    def plan_after_switch(self, model, config, pace, *, done):
        """`plan_again` once the first `done` epochs include the first at the full size: every
        epoch left is its steps at the pace of that epoch's second half plus what followed
        them. The halvings and the early epochs stay spread over the epochs planned before
        (`schedule_epochs`), so nothing is traced again; at least one more epoch is run."""
        epoch_seconds = config.steps_per_epoch * pace.step_seconds + pace.after_seconds
        seconds = self.deadline - time.perf_counter() - self.closing_seconds(model)
        epochs = max(done + 1, done + int(seconds / epoch_seconds))
        if epochs == config.epochs:
            return False
        config.schedule_epochs = schedule_epochs(config)
        config.epochs = epochs
        return True

    def _mean_epoch(self, config, done, steps_seconds, after_epoch):
        """The seconds of an epoch after the first `done`, on average over the planned ones
        left: `steps_seconds` of steps at the full size (less at the early size), then
        `after_epoch`."""
        early = max(0, early_epochs(config) - done)
        left = max(1, config.epochs - done)
        cost = (early * self.early_cost + max(0, left - early)) / left
        return steps_seconds * cost + after_epoch

    def closing_seconds(self, model):
        """What follows a budgeted run's last epoch: loading the best model and scoring it in
        full (a first validation pass, then a warm one per further scale), finishing and
        scoring its masks with every mask setting (`time_finishing`), and saving it again with
        the settings chosen (about what the first epoch's checkpoints took)."""
        return (self.first_validation + (final_passes(model) - 1) * self.warm_validation
                + self.finishing_seconds + self.save_seconds)


def fit_budget(config, pairs, strategy, deadline):
    """`(epochs, steps_per_epoch, validation_seconds, finishing_seconds, early_cost)`: the
    epochs that fit before `deadline` (a `time.perf_counter()` value) and their length,
    measured on a throwaway model: 30 training steps at the full size (and 30 at the early
    size, whose step over the full one's is `early_cost`) and a validation pass, each timed
    once warm (`plan_budget` does the arithmetic); that warm validation pass's time, and what
    finishing the validation masks will cost in the final scoring (`time_finishing`)."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_network(config)
        compile_network(model, config, halve_every=1)
    fit_started = time.perf_counter()
    step_seconds, trace_seconds = _time_steps(model, config, pairs, fit_started)
    early_cost = 1.0
    if early_size(config):
        early = dataclasses.replace(config, size=early_size(config), early_size=0)
        early_cost = _time_steps(model, early, pairs, time.perf_counter())[0] / step_seconds
    validation = validation_samples(config, pairs)
    mean_iou(epoch_method(model), validation)  # traces the prediction graph
    started = time.perf_counter()
    mean_iou(epoch_method(model), validation)
    validation_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:  # the checkpoint and the backup, per epoch
        started = time.perf_counter()
        model.save(Path(folder) / "model.keras")
        save_seconds = time.perf_counter() - started
    finishing = time_finishing(validation, model, trained=False)
    # What follows the last epoch: loading the best model, scoring it in full
    # (`final_passes`) and saving it with its mask settings; and the real run traces the
    # training graph once more.
    seconds = (deadline - time.perf_counter() - final_passes(model) * validation_seconds
               - finishing - save_seconds - trace_seconds)
    epochs, steps_per_epoch = plan_early_budget(
        config, seconds, step_seconds=step_seconds,
        after_epoch_seconds=validation_seconds + 2 * save_seconds, early_cost=early_cost)
    return epochs, steps_per_epoch, validation_seconds, finishing, early_cost


def plan_early_budget(config, seconds, *, step_seconds, after_epoch_seconds, early_cost):
    """`plan_budget` for `config`'s run, whose early epochs' steps cost `early_cost` of a
    full-size one's `step_seconds`: planned at the mean step, then with as many fewer epochs as
    a short run needs, whose share of early epochs is smaller than EARLY_SHARE."""
    epochs, steps_per_epoch = plan_budget(
        seconds, step_seconds=step_seconds * mean_step(early_cost),
        after_epoch_seconds=after_epoch_seconds, steps_per_epoch=config.steps_per_epoch)

    def cost(epochs):
        early = early_epochs(dataclasses.replace(config, epochs=epochs))
        steps = step_seconds * steps_per_epoch * (early * early_cost + epochs - early)
        return steps + epochs * after_epoch_seconds

    while epochs > 1 and cost(epochs) > seconds:
        epochs -= 1
    return epochs, steps_per_epoch


def mean_step(early_cost):
    """A run's mean step over one at the full size, EARLY_SHARE of its steps at the early
    size costing `early_cost` each."""
    return 1 - EARLY_SHARE * (1 - early_cost)


def _time_steps(model, config, pairs, started):
    """`(step_seconds, trace_seconds)` of 30 training steps on `config`'s full-size stream.
    The first steps trace the graph and warm up the kernels (longer in bfloat16): the steps
    after them are timed, by the median, which an odd slow step does not move."""
    steps = StepTimes()
    model.fit(training_stream(config, pairs, 0, early=False), epochs=1, steps_per_epoch=30,
              callbacks=[steps], shuffle=False, verbose=0)
    return float(np.median(np.diff(steps.times[10:]))), steps.times[0] - started


def time_finishing(validation, model, *, trained=True, timed=None):
    """What finishing and scoring every validation mask costs in the final scoring
    (`choose_mask_settings`: refining with GrabCut or not, dropping parts and filling holes,
    scoring every setting, on `FINISHING_WORKERS` threads), timed as it runs there on the
    first `timed` images (by default two per thread, so the threads' contention is timed too).

    GrabCut's time grows with the pixels a prediction leaves unsure, which differs by
    dataset, so before training (`trained=False`) it is timed on a made-up prediction (a
    centred disk, sure inside and outside, unsure across a band of a tenth of the shorter
    side around its outline), and once `model` has trained, on its own predictions (the
    predicting itself untimed).
    """
    timed = 2 * FINISHING_WORKERS if timed is None else timed
    samples = [sample for sample, _ in zip(validation, range(timed))]
    probabilities = [
        predict_probability(model, image) if trained else _made_up_prediction(image.shape)
        for _, image, _ in samples
    ]
    seconds = finishing_seconds(model, samples, probabilities)
    return seconds / max(1, len(samples)) * len(validation)


def _made_up_prediction(shape):
    height, width = shape[:2]
    rows, columns = np.ogrid[:height, :width]
    distance = np.hypot(rows - height / 2, columns - width / 2) - min(height, width) / 4
    return np.clip(0.5 - 10 * distance / min(height, width), 0, 1).astype(np.float32)


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


def next_replan(config, done):
    """The epoch after which a budgeted run, planned again after `done` epochs, plans once
    more: the last before its first halving (at a fifth of the run), timed on warm epochs;
    then the first at the full size after early epochs, unless that is the last; None when
    neither is still to come."""
    last = config.epochs // (HALVINGS + 1) - 1
    if done == 1 and last >= done:
        return last
    switch = early_epochs(config)
    return switch if done <= switch < config.epochs - 1 else None
