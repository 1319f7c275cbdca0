"""Training's early epochs at a smaller size: the rule, the stream, and runs that repeat."""

import dataclasses
import os
import time

import keras
import numpy as np
import pytest

from segment import data
from segment.data import streams
from segment.training import (
    TrainConfig,
    budget,
    early_epochs,
    early_size,
    inputs,
    train,
)
from segment.training.budget import Budget, Deadline
from segment.training.config import halve_every_steps
from segment.training.recipe import compile_network


def test_the_early_size_is_half_the_size_rounded_and_at_least_64():
    def side(size, given=None, depth=4):
        return early_size(TrainConfig(size=size, early_size=given, depth=depth))

    assert (side(128), side(256), side(160), side(96)) == (64, 128, 80, 64)
    assert side(176, depth=3) == 88  # a multiple of 2 ** depth
    assert side(64) == 0  # nothing smaller is left
    assert side(128, depth=7) == 0  # 64 is no multiple of 128
    assert (side(128, given=0), side(128, given=96)) == (0, 96)
    assert side(96, given=112) == 0  # a size the budget lowered below the early size given


@pytest.mark.parametrize("epochs, early", [(20, 15), (9, 6), (2, 1), (1, 0), (None, 0)])
def test_three_quarters_of_the_epochs_are_early_and_never_the_last(epochs, early):
    assert early_epochs(TrainConfig(size=128, epochs=epochs)) == early
    assert early_epochs(TrainConfig(size=128, epochs=epochs, early_size=0)) == 0


def test_a_schedule_spread_over_other_epochs_keeps_its_halvings_and_early_epochs():
    # 20 epochs of 10 steps planned, 23 run: halvings every 200 / 5 = 40 steps, 15 early.
    config = TrainConfig(size=128, epochs=23, schedule_epochs=20, steps_per_epoch=10)
    assert (halve_every_steps(config), early_epochs(config)) == (40, 15)
    config.schedule_epochs = None
    assert (halve_every_steps(config), early_epochs(config)) == (46, 17)


def test_epochs_added_after_the_schedule_keep_its_last_rate():
    # Halvings every 40 steps, four of them: from step 160 on the rate is 1/16 of the first,
    # also in the epochs past the 200 steps it was spread over (a fifth would come at 200).
    config = TrainConfig(size=128, epochs=23, schedule_epochs=20, steps_per_epoch=10, lr=0.5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    compile_network(model, config, halve_every=halve_every_steps(config))
    factors = [float(model.optimizer.halving_factor(step)) for step in (0, 40, 159, 160, 229)]
    assert factors == [1.0, 0.5, 0.125, 0.0625, 0.0625]
    compile_network(model, dataclasses.replace(config, halve_every=4), halve_every=40)
    assert float(model.optimizer.halving_factor(229)) == 0.5**5  # --halve-every: no limit


@pytest.mark.parametrize("epochs, early_size, stops", [
    (20, None, [0, 3, 15]),  # the first epoch, the last before the first halving, the switch
    (20, 0, [0, 3]),  # no early epochs
    (10, None, [0, 1, 7]),
    (4, None, [0]),  # the switch is the last epoch
])
def test_a_budget_plans_again_after_the_first_epoch_at_the_full_size(epochs, early_size, stops):
    config = TrainConfig(size=128, epochs=epochs, early_size=early_size)
    stop_after, seen = 0, []
    while stop_after is not None:
        seen.append(stop_after)
        stop_after = budget.next_replan(config, stop_after + 1)
    assert seen == stops
    # Planned again to 16 after the first, the run plans on warm epochs after the second,
    # the last before its first halving, once: not again after the third, now that is.
    config.epochs = 16
    assert budget.next_replan(config, 2) == (12 if early_size is None else None)


def test_the_plan_after_the_switch_times_full_size_epochs_and_keeps_the_schedule(monkeypatch):
    # 20 epochs of 10 steps, 15 early; after 16, a full-size epoch's steps took 1 s each and
    # 2 s followed them: 12 s an epoch, and 6.5 of them are left before the deadline: 22.
    monkeypatch.setattr(Budget, "closing_seconds", lambda self, model: 3.0)
    planner = Budget(deadline=0.0)
    planner.early_cost = 0.5
    config = TrainConfig(size=128, epochs=20, steps_per_epoch=10)
    pace = type("Pace", (), {"step_seconds": 1.0, "after_seconds": 2.0,
                             "epoch_seconds": 7.0})()  # a whole-epoch median mixing the sizes
    for seconds_left, epochs in ((6.5 * 12, 22), (0.5 * 12, 17)):  # at least one more epoch
        config.epochs, config.schedule_epochs = 20, None
        planner.deadline = time.perf_counter() + 3.0 + seconds_left
        assert planner.plan_again(None, config, pace, done=16) is True  # no model to retrace
        assert (config.epochs, config.schedule_epochs) == (epochs, 20)
        assert (halve_every_steps(config), early_epochs(config)) == (40, 15)


def test_the_pace_is_the_last_epochs_steps(monkeypatch):
    # Three epochs of 6 steps, two early ones 0.5 s apart, then a full-size one 1 s apart,
    # 3 s after the last step of each: the pace after the third is 1 s a step, timed on its
    # second half; the median whole epoch after the first is (6 + 9) / 2 s.
    clock = [0.0]
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
    pace = budget.Pace(stop_after=2)
    pace.set_model(keras.Sequential())
    pace.model.stop_training = False
    pace.on_train_begin()
    for epoch, step in enumerate((0.5, 0.5, 1.0)):
        pace.on_epoch_begin(epoch)
        for batch in range(6):
            clock[0] += step
            pace.on_train_batch_end(batch)
        clock[0] += 3.0
        pace.on_epoch_end(epoch)
    assert (pace.step_seconds, pace.after_seconds, pace.epoch_seconds) == (1.0, 3.0, 7.5)
    assert pace.model.stop_training is True


def test_an_old_run_folder_trained_every_epoch_at_its_size(tmp_path):
    config = TrainConfig(size=128, epochs=8)
    config.to_json(tmp_path / "config.json")
    values = (tmp_path / "config.json").read_text().replace('  "early_size": null,\n', "")
    (tmp_path / "config.json").write_text(values)
    assert early_epochs(TrainConfig.from_json(tmp_path / "config.json")) == 0


def _stream_config(**settings):
    return TrainConfig(size=32, early_size=16, epochs=4, steps_per_epoch=2, batch_size=2,
                       depth=2, difficulty="easy", **settings)


def test_the_stream_draws_the_early_samples_small_then_the_same_stream_at_full_size():
    # 4 epochs: the first 3 early, 2 steps of 2 samples each: samples 0-11 at 16 px, then
    # samples 12 on at 32 px, each the sample `synthetic_arrays` draws at that position.
    config = _stream_config()
    batches = [images for images, _ in inputs.training_stream(config, None, 0).take(8)]
    assert [images.shape[1:3] for images in batches] == [(16, 16)] * 6 + [(32, 32)] * 2
    small, _ = data.synthetic_arrays(12, size=16, difficulty="easy", seed=0)
    full, _ = data.synthetic_arrays(16, size=32, difficulty="easy", seed=0)
    np.testing.assert_array_equal(np.concatenate(batches[:6]), small)
    np.testing.assert_array_equal(np.concatenate(batches[6:]), full[12:])
    resumed = [images for images, _ in inputs.training_stream(config, None, 8).take(4)]
    for a, b in zip(resumed, batches[4:]):
        np.testing.assert_array_equal(a, b)
    whole = inputs.training_stream(config, None, 0, early=False).take(1)
    np.testing.assert_array_equal(next(iter(whole))[0], full[:2])


def test_a_folder_stream_built_again_reads_no_file_again(tmp_path, monkeypatch):
    images, masks = data.synthetic_arrays(5, size=24, difficulty="easy", seed=1)
    data.write_folder(tmp_path / "shapes", images, masks)
    pairs = data.find_pairs(tmp_path / "shapes")
    read = []

    def counted(*args):
        read.append(args[0])
        return reading(*args)

    reading = streams.read_training_pair
    monkeypatch.setattr(streams, "read_training_pair", counted)
    config = _stream_config(data=str(tmp_path / "shapes"))
    for start in (0, 4, 12):  # a run's first stream, then the streams of its re-plans
        stream = inputs.training_stream(config, (pairs, pairs), start)
        next(iter(stream))
    # Once at the early size, once at the full size.
    assert sorted(read) == sorted([image for image, _ in pairs] * 2)
    changed = pairs[0][1]  # a mask corrected between two runs in one process: read afresh
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    next(iter(inputs.training_stream(config, (pairs, pairs), 12)))
    assert len(read) == 3 * len(pairs)


@pytest.mark.slow
def test_a_budgeted_run_with_early_epochs_repeats_epochs_n_exactly(tmp_path, monkeypatch):
    # The throwaway steps said 6 epochs fit and that an early step costs half a full one; the
    # run plans again from its own early epochs, taking the full-size ones at twice their
    # step, then once more after its first full-size epoch, there given time for two more
    # epochs than planned: it ends with the weights of `epochs=N` with the halvings and early
    # epochs spread over the epochs planned before.
    monkeypatch.setattr(budget, "fit_budget", lambda *args: (6, 2, 0.05, 0.0, 0.5))
    monkeypatch.setattr(budget, "DEADLINE_SLACK", float("inf"))
    requested, plans = [], []
    synthetic = inputs.data.synthetic_dataset

    def recorded(**settings):
        requested.append((settings["size"], settings["start"]))
        return synthetic(**settings)

    plan_after_switch = Budget.plan_after_switch

    def two_more(self, model, config, pace, *, done):
        plans.append((done, config.epochs))
        if len(plans) == 1:
            epoch_seconds = config.steps_per_epoch * pace.step_seconds + pace.after_seconds
            self.deadline = (time.perf_counter() + self.closing_seconds(model)
                             + (config.epochs - done + 2.5) * epoch_seconds)
        return plan_after_switch(self, model, config, pace, done=done)

    monkeypatch.setattr(inputs.data, "synthetic_dataset", recorded)
    monkeypatch.setattr(Budget, "plan_after_switch", two_more)
    config = TrainConfig(out=str(tmp_path / "budget"), minutes=0.75, size=32, early_size=16,
                         batch_size=4, val_count=4, base_filters=4, depth=2, click_minutes=0.0)
    budgeted = _FinalWeights()
    folder, _ = train(config, callbacks=[budgeted], verbose=0)
    planned = TrainConfig.from_json(folder / "config.json")
    early = early_epochs(planned)
    assert planned.schedule_epochs > 6 and early == int(0.75 * planned.schedule_epochs)
    assert plans == [(early + 1, planned.schedule_epochs)]
    assert planned.epochs == planned.schedule_epochs + 2
    requested.clear()
    fixed = _FinalWeights()
    train(dataclasses.replace(config, out=str(tmp_path / "fixed"), minutes=None,
                              epochs=planned.epochs, schedule_epochs=planned.schedule_epochs,
                              steps_per_epoch=2),
          callbacks=[fixed], verbose=0)
    # The fixed run's one stream: early samples from 0, full-size ones from the switch on.
    assert sorted(requested) == [(16, 0), (32, early * 2 * 4)]
    for a, b in zip(budgeted.weights, fixed.weights):
        np.testing.assert_array_equal(a, b)


class _FinalWeights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()


def test_an_epoch_left_is_planned_at_its_size():
    # 10 epochs, the first 7 early at half the cost: after 1, 6 early and 3 full are left,
    # on average (6 * 0.5 + 3) / 9 of a full epoch's steps, then what follows the epoch.
    planner = Budget(deadline=0.0)
    planner.early_cost = 0.5
    config = TrainConfig(size=128, epochs=10)
    assert planner._mean_epoch(config, 1, steps_seconds=9.0, after_epoch=1.0) == 7.0
    assert planner._mean_epoch(config, 8, steps_seconds=9.0, after_epoch=1.0) == 10.0


@pytest.mark.parametrize("early_cost, sizes", [(0.5, [128, 96]), (1.0, [128])])
def test_the_working_size_rule_counts_the_steps_bought_at_the_full_size(
        monkeypatch, early_cost, sizes):
    # 2000 steps, three quarters of them at half the cost: 1250 steps' worth at the full size,
    # fewer than the 1500 below which a --data run works at 3/4 of its size.
    timed = []

    def fit_budget(config, *args):
        timed.append(config.size)
        return 2000, 1, 0.05, 0.0, early_cost

    monkeypatch.setattr(budget, "fit_budget", fit_budget)
    Budget(deadline=0.0).plan(TrainConfig(size=128, minutes=1.0), None, None,
                              size_from_images=True)
    assert timed == sizes


@pytest.mark.parametrize("seconds, epochs", [(16.0, 2), (13.0, 1)])
def test_a_short_run_is_planned_at_the_share_of_early_epochs_it_has(seconds, epochs):
    # Epochs of 10 steps of 1 s at the full size, 0.5 s early. The mean step (three quarters
    # early) plans 2 epochs in 13 s or more; but a 2-epoch run has one early epoch, one full:
    # 5 + 10 = 15 s, which 16 s hold and 13 s do not.
    config = TrainConfig(size=128, steps_per_epoch=10)
    planned = budget.plan_early_budget(config, seconds, step_seconds=1.0,
                                       after_epoch_seconds=0.0, early_cost=0.5)
    assert planned == (epochs, 10)


def test_a_replan_that_would_turn_a_trained_early_epoch_full_size_is_not_taken(monkeypatch):
    # With --halve-every the first re-plan may shorten a run; 50 epochs have 37 early ones,
    # 12 only 9. Ten were trained early, so 12 would not repeat `epochs=12`: the plan stays.
    monkeypatch.setattr(Budget, "closing_seconds", lambda self, model: 0.0)
    planner = Budget(deadline=0.0)
    planner.trace_seconds, planner.early_cost = 0.0, 1.0
    config = TrainConfig(size=128, epochs=50, steps_per_epoch=10, halve_every=1)
    pace = type("Pace", (), {"epoch_seconds": 100.0, "after_seconds": 0.0})()
    planner.deadline = time.perf_counter() + 250.0  # two more epochs
    assert planner.plan_again(None, config, pace, done=10) is False
    assert config.epochs == 50


def test_the_deadline_takes_the_first_full_size_epoch_at_its_own_cost():
    # Early epochs of 10 s at half the cost of a full-size one: after the 7th (70 s) the
    # next, the first at the full size, takes 20 s and the scoring 5 more: 95 s, within a
    # deadline of 100; past a deadline of 80 by 15 s, more than half of that epoch (taken at
    # the early epochs' 10 s, it would be 5 s past, and the run would go on).
    for deadline, stops in ((100.0, False), (80.0, True)):
        clock = [0.0]
        guard = Deadline(deadline=deadline, final_seconds=5.0, clock=lambda: clock[0])
        guard.cost = lambda epoch: 0.5 if epoch < 7 else 1.0
        model = keras.Sequential()
        model.stop_training = False
        guard.set_model(model)
        guard.set_params({"epochs": 9})
        guard.on_train_begin()
        for epoch in range(7):
            clock[0] = 10.0 * (epoch + 1)
            guard.on_epoch_end(epoch)
        assert model.stop_training is stops
