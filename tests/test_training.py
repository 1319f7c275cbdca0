"""The training application end to end, on tiny models and images."""

import csv
import dataclasses
import importlib
import json
import time

import cv2
import keras
import numpy as np
import pytest

from segment import data, metrics
from segment.inference import (
    InferenceSettings,
    load_click_network,
    load_segmenter,
    predict_mask,
    predict_probability,
)
from segment.model import build_model
from segment.optimizers import StepHalvingSGD
from segment.training import (
    STRAY_PART_PRICE,
    TrainConfig,
    budget,
    budget_working_size,
    choose_mask_settings,
    choose_working_size,
    mask_settings,
    plan_budget,
    replan_epochs,
    resolve_config,
    train,
)
from segment.training.budget import Budget, Deadline, time_finishing
from segment.training.recipe import build_network

TINY = ["--size", "32", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
        "--val-count", "4", "--base-filters", "4", "--depth", "2"]


@pytest.fixture(scope="module")
def train_script():
    return importlib.import_module("segment.cli.train")


def test_train_writes_a_complete_run_folder(train_script, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(TINY + ["--out", str(out)]) == 0
    assert "model.keras" in capsys.readouterr().out
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((1, 40, 24, 3), "float32"), verbose=0).shape == (1, 40, 24, 1)
    # A synthetic model keeps each image at its own scale and averages the four flips.
    assert model.inference["working_size"] is None and model.inference["scales"] == [1.0]
    assert model.inference["tta"] is True
    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert {"epoch", "loss", "iou", "val_iou", "lr"} <= set(rows[0])
    results = json.loads((out / "metrics.json").read_text())
    assert {"iou", "dice", "spurious", "b0_error", "train_seconds"} <= set(results)
    assert 0.0 <= results["iou"] <= 1.0
    assert TrainConfig.from_json(out / "config.json").size == 32
    assert TrainConfig.from_json(out / "config.json").lr == 0.5  # SYNTHETIC_LR
    assert any((out / "logs").iterdir())
    assert not (out / "backup").exists()  # removed once training completes


def test_train_warns_when_the_run_collapsed_to_an_empty_mask(train_script, tmp_path, monkeypatch, capsys):
    # A run whose validation masks come out empty (IoU 0: momentum SGD at too high a rate)
    # says so and names the rate to lower; a working run does not.
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.5}))
    results = {"iou": 0.0, "dice": 0.0, "spurious": 0.0, "b0_error": 1.0, "train_seconds": 1.0,
               "min_part": 0.0, "min_hole": 0.0, "refine": False, "stopped_early": False}
    monkeypatch.setattr(train_script, "train", lambda config, **kwargs: (tmp_path, dict(results)))
    assert train_script.main(["--epochs", "1"]) == 0
    error = capsys.readouterr().err
    assert "training collapsed" in error and "lower --lr than this run's 0.5" in error
    results["iou"] = 0.4
    assert train_script.main(["--epochs", "1"]) == 0
    assert "collapsed" not in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_an_image_mask_folder_reports_what_prediction_delivers(train_script, tmp_path):
    # Images of several sizes and shapes, none of them the working size.
    for index, size in enumerate([(40, 56), (48, 36), (60, 60), (36, 52), (44, 44), (52, 40)]):
        images, masks = data.synthetic_arrays(1, size=size, difficulty="easy", seed=index)
        data.write_folder(tmp_path / "shapes", images, masks, stems=[f"{index:02d}"])
    out = tmp_path / "run"
    args = TINY + ["--data", str(tmp_path / "shapes"), "--out", str(out), "--val-fraction", "0.5",
                   "--click-steps", "3"]
    assert train_script.main(args) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["validation_images"] == 3
    # Then the click network, for the steps asked, kept beside the model where the simulated
    # annotator needed fewer clicks with it.
    assert results["click_steps"] == 3 and results["click_seconds"] > 0
    assert 0 <= results["click_noc90"] <= 20 and 0 <= results["click_noc90_without"] <= 20
    kept = results["click_network"]
    assert results["click_noc90"] < results["click_noc90_without"] or not kept
    assert (load_click_network(out / "model.keras") is not None) == kept

    # The model carries the working size; segmenting the validation images through the
    # public prediction path at their own size gives exactly the figures in metrics.json.
    config = TrainConfig.from_json(out / "config.json")
    assert config.size == 32 and config.lr == 0.25  # DATA_LR
    assert config.click_steps == 3
    # The output bias starts at the logit of the training masks' foreground share.
    train_pairs, val_pairs = data.split_pairs(
        data.find_pairs(tmp_path / "shapes"), val_fraction=0.5, seed=0
    )
    share = np.mean([cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).mean() / 255
                     for _, mask in train_pairs])
    assert config.foreground_prior == pytest.approx(share, abs=1e-4)
    model = load_segmenter(out / "model.keras")
    assert model.inference == {"working_size": 32, "threshold": 0.5, "tta": True,
                               "scales": [0.75, 0.875, 1.0, 1.125, 1.25],  # DATA_SCALES
                               "min_part": results["min_part"], "refine": results["refine"],
                               "min_hole": results["min_hole"]}
    scores, at_working_size = [], []
    for image_path, mask_path in val_pairs:
        image, truth = data.read_pair(image_path, mask_path)
        scores.append(metrics.evaluate_masks(predict_mask(model, image), truth))
        # as each epoch's validation ran it: the mask settings are chosen after training
        at_working_size.append(
            metrics.iou(predict_mask(model, image, scales=[1], refine=False), truth)
        )
    for name in ("iou", "dice", "spurious", "b1_error"):
        assert results[name] == pytest.approx(np.mean([row[name] for row in scores]), abs=1e-9)
    ious = [row["iou"] for row in scores]
    assert results["iou_standard_error"] == pytest.approx(
        np.std(ious, ddof=1) / np.sqrt(len(ious)), abs=1e-9)
    # Each epoch's validation, which picks the saved epoch, runs at the working size alone.
    history = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    best = max(float(row["val_iou"]) for row in history)
    assert best == pytest.approx(np.mean(at_working_size), abs=1e-9)


def _saved_tiny_model(path):
    """A tiny compiled segmenter, one training step in, saved to `path`."""
    keras.utils.set_random_seed(0)
    model = build_model(depth=2, base_filters=4)
    model.compile(optimizer=StepHalvingSGD(0.1, halve_every=5), loss="mse")
    model.fit(np.zeros((2, 16, 16, 3)), np.zeros((2, 16, 16, 1)), epochs=1, verbose=0)
    model.save(path)
    return model


@pytest.mark.parametrize("workers, chunk", [(1, 8), (2, 3)])
def test_the_standard_error_is_taken_over_groups_of_validation_images(
    tmp_path, monkeypatch, workers, chunk
):
    # Four images in two groups: IoU 1 and 1 in the first, 0.5 and 0.5 in the second. Over
    # groups the standard error is std(1, 0.5) / sqrt(2) = 0.25; over images it would be
    # std(1, 1, 0.5, 0.5) / sqrt(4) = 0.144. Finished on two threads in chunks of three, the
    # images keep their order (and so their groups).
    monkeypatch.setattr(mask_settings, "FINISHING_WORKERS", workers)
    monkeypatch.setattr(mask_settings, "FINISHING_CHUNK", chunk)
    truth = np.zeros((100, 100), bool)
    truth[20:60, 20:60] = True
    half = truth.copy()
    half[20:60, 40:60] = False
    images = [np.full((100, 100, 3), value, np.float32) for value in (0.0, 0.2, 0.4, 0.6)]
    predicted = {0.0: truth, 0.2: truth, 0.4: half, 0.6: half}
    monkeypatch.setattr(mask_settings, "predict_probability",
                        lambda model, image: predicted[round(float(image[0, 0, 0]), 1)]
                        .astype(np.float32))
    path = tmp_path / "model.keras"
    _saved_tiny_model(path)
    samples = [(f"{index}", image, truth) for index, image in enumerate(images)]
    results = choose_mask_settings(path, samples, groups=["a", "a", "b", "b"])
    assert results["iou"] == pytest.approx(0.75)
    assert results["iou_standard_error"] == pytest.approx(0.25)
    assert results["iou_standard_error_groups"] == 2
    results = choose_mask_settings(path, samples)
    assert results["iou_standard_error"] == pytest.approx(np.std([1, 1, 0.5, 0.5], ddof=1) / 2)
    assert results["iou_standard_error_groups"] is None


@pytest.mark.slow
def test_training_keeps_the_part_size_worth_most_in_iou_and_stray_parts(
    tmp_path, monkeypatch
):
    # 100 x 100 images, so the shares 0.25%, 0.5%, 1% and 2% are 25, 50, 100 and 200 pixels.
    square = np.zeros((100, 100), bool)
    square[20:60, 20:60] = True  # 1600 pixels
    two_parts = square.copy()
    two_parts[80:92, 80:92] = True  # and a true part of 144 pixels (1.44%)
    with_stray = square.copy()
    with_stray[80:88, 80:88] = True  # a predicted stray part of 64 pixels (0.64%)
    images = [np.full((100, 100, 3), value, np.float32) for value in (0.0, 1.0)]
    samples = [("a", images[0], square), ("b", images[1], two_parts)]
    predicted = {0.0: with_stray, 1.0: two_parts}
    # Probabilities of 0 and 1 only: every pixel is sure, and GrabCut refinement changes
    # nothing, so the mask is never refined here (the first of equal settings).
    monkeypatch.setattr(mask_settings, "predict_probability",
                        lambda model, image: predicted[float(image[0, 0, 0])].astype(np.float32))
    path = tmp_path / "model.keras"
    trained = _saved_tiny_model(path)

    # 1% drops the stray part and keeps the true one (IoU 1 on both); 2% drops the true part
    # too (image b: IoU 1600 / 1744), so 1% is kept.
    results = choose_mask_settings(path, samples)
    assert results["min_part"] == 0.01
    assert results["iou"] == 1.0 and results["spurious"] == 0.0
    assert results["without_min_part"]["iou"] == pytest.approx((1600 / 1664 + 1) / 2)
    assert results["without_min_part"]["spurious"] == 0.5
    assert results["refine"] is False
    saved = keras.saving.load_model(path, safe_mode=True)
    assert saved.inference["min_part"] == 0.01 and saved.inference["refine"] is False
    assert int(saved.optimizer.iterations) == 1  # compiled, optimizer state and all
    for a, b in zip(saved.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [file.name for file in tmp_path.iterdir()] == ["model.keras"]

    # Nothing stray on the validation images: nothing is dropped, and the file is untouched.
    predicted[0.0] = square
    fresh = tmp_path / "fresh.keras"
    _saved_tiny_model(fresh)
    before = fresh.read_bytes()
    results = choose_mask_settings(fresh, samples)
    assert results["min_part"] == 0.0 and results["iou"] == 1.0
    assert fresh.read_bytes() == before

    # Dropping may cost a little IoU where it removes enough stray parts: each is worth
    # STRAY_PART_PRICE IoU. Image a: a 4000-pixel object and stray parts of 4 pixels; image b:
    # a 1600-pixel object and a true part of 20 pixels, which 0.25% (25 pixels) drops too.
    big = np.zeros((100, 100), bool)
    big[10:60, 10:90] = True  # 4000 pixels
    small_true = square.copy()
    small_true[90:94, 90:95] = True  # 20 pixels
    samples = [("a", images[0], big), ("b", images[1], small_true)]
    predicted[1.0] = small_true
    for strays, kept in ((3, 0.0025), (1, 0.0)):
        predicted[0.0] = big.copy()
        for index in range(strays):
            predicted[0.0][70:72, 10 + 10 * index : 12 + 10 * index] = True
        kept_iou = (4000 / (4000 + 4 * strays) + 1) / 2
        dropped_iou = (1 + 1600 / 1620) / 2
        # 3 strays: 0.9985 - 0.005 * 1.5 < 0.9938; 1 stray: 0.9995 - 0.005 * 0.5 > 0.9938.
        assert (kept_iou - STRAY_PART_PRICE * strays / 2 < dropped_iou) == (strays == 3)
        path = tmp_path / f"strays{strays}.keras"
        _saved_tiny_model(path)
        results = choose_mask_settings(path, samples)
        assert results["min_part"] == kept
        assert results["iou"] == pytest.approx(dropped_iou if kept else kept_iou)
        assert results["without_min_part"]["spurious"] == strays / 2


@pytest.mark.slow
def test_training_fills_the_holes_validation_shows_are_pinholes(tmp_path, monkeypatch):
    # Image a: predicted with two 4-pixel pinholes its truth lacks; image b: a true hole of
    # 36 pixels (0.36% of the image), predicted as it is. Filling holes below 0.25% (25
    # pixels) mends a and leaves b; below 1% would fill b's true hole too.
    square = np.zeros((100, 100), bool)
    square[20:60, 20:60] = True
    pierced = square.copy()
    pierced[30:32, 30:32] = pierced[40:42, 45:47] = False
    ring = square.copy()
    ring[37:43, 37:43] = False
    images = [np.full((100, 100, 3), value, np.float32) for value in (0.0, 1.0)]
    predicted = {0.0: pierced, 1.0: ring}
    monkeypatch.setattr(mask_settings, "predict_probability",
                        lambda model, image: predicted[float(image[0, 0, 0])].astype(np.float32))
    path = tmp_path / "model.keras"
    _saved_tiny_model(path)

    results = choose_mask_settings(path, [("a", images[0], square), ("b", images[1], ring)])
    assert results["min_hole"] == 0.0025 and results["min_part"] == 0.0
    assert results["iou"] == 1.0 and results["b1_error"] == 0.0
    assert results["without_min_hole"]["iou"] == pytest.approx((1592 / 1600 + 1) / 2)
    assert results["without_min_hole"]["b1_error"] == 1.0  # two wrong holes over two images
    assert keras.saving.load_model(path, safe_mode=True).inference["min_hole"] == 0.0025


@pytest.mark.slow
def test_training_refines_masks_with_grabcut_where_validation_gains(tmp_path, monkeypatch):
    # A bright square on a dark ground, predicted soft: sure of a core 5 pixels inside the
    # outline (900 of its 1600 pixels), unsure (0.3) of a band reaching 5 pixels past it.
    truth = np.zeros((100, 100), bool)
    truth[20:60, 20:60] = True
    image = np.where(truth[..., None], 0.85, 0.15).astype(np.float32) * np.ones(3, np.float32)
    soft = np.zeros((100, 100), np.float32)
    soft[15:65, 15:65] = 0.3
    soft[25:55, 25:55] = 1.0
    monkeypatch.setattr(mask_settings, "predict_probability", lambda model, image: soft)
    path = tmp_path / "model.keras"
    _saved_tiny_model(path)

    results = choose_mask_settings(path, [("a", image, truth), ("b", image, truth)])
    assert results["refine"] is True and results["min_part"] == 0.0
    assert results["iou"] == 1.0  # GrabCut finds the square's edge in the image
    assert results["without_refine"]["iou"] == pytest.approx(900 / 1600)
    assert keras.saving.load_model(path, safe_mode=True).inference["refine"] is True


def test_working_size_is_the_median_longer_side_capped_and_rounded(tmp_path):
    pairs = []
    for index, (height, width) in enumerate([(30, 50), (70, 20), (41, 41)]):
        images, masks = data.synthetic_arrays(1, size=(height, width), seed=index)
        pairs += data.write_folder(tmp_path / f"f{index}", images, masks)
    assert choose_working_size(pairs, multiple=4) == 48  # median 50 -> nearest multiple of 4
    assert choose_working_size(pairs, multiple=4, largest=40) == 40
    assert choose_working_size(pairs, multiple=32) == 64


def test_a_budget_of_few_steps_works_at_three_quarters_of_the_size():
    assert budget_working_size(128, 500, multiple=16) == 96
    assert budget_working_size(128, 1499, multiple=16) == 96
    assert budget_working_size(128, 1500, multiple=16) == 128
    assert budget_working_size(112, 100, multiple=16) == 96  # 84 -> 80, but not below 96
    assert budget_working_size(96, 100, multiple=16) == 96
    assert budget_working_size(64, 100, multiple=4) == 64  # already below the smallest
    assert budget_working_size(64, 100, multiple=4, smallest=16) == 48
    assert budget_working_size(100, 10, multiple=8, smallest=16) == 72  # 75 -> nearest 8


@pytest.mark.slow
@pytest.mark.parametrize("size", [None, 64])
def test_a_data_budget_of_few_steps_plans_again_at_the_smaller_size(tmp_path, monkeypatch, size):
    # Images 64 px on their longer side: the working size chosen from them is 64. A budget
    # that buys fewer than FEW_STEPS steps there is timed again at 3/4 of it, which the run
    # folder and the saved model then carry; a size the user gave is kept.
    images, masks = data.synthetic_arrays(6, size=(48, 64), difficulty="easy", seed=3)
    data.write_folder(tmp_path / "shapes", images, masks)
    monkeypatch.setattr(budget, "SMALLEST_WORKING_SIZE", 16)
    timed_at = []

    def fit_budget(config, *args):
        timed_at.append(config.size)
        return 2, 2, 0.05, 0.0, 1.0

    monkeypatch.setattr(budget, "fit_budget", fit_budget)
    config = _tiny_config(tmp_path / "run", data=str(tmp_path / "shapes"), minutes=0.5)
    folder, _ = train(dataclasses.replace(config, size=size), verbose=0)
    expected = [64, 48] if size is None else [64]
    assert timed_at == expected
    assert TrainConfig.from_json(folder / "config.json").size == expected[-1]
    assert InferenceSettings.of(load_segmenter(folder / "model.keras")).working_size == expected[-1]


def _tiny_config(folder, **settings):
    """A tiny synthetic run's settings, for the tests of budgeted runs (with `data`, no click
    network)."""
    settings.setdefault("click_minutes", 0.0)
    return TrainConfig(out=str(folder), size=32, batch_size=4, val_count=4, base_filters=4,
                       depth=2, **settings)


def test_training_builds_the_light_network_and_old_run_folders_the_residual_one(tmp_path):
    # Training builds the network config.json names: today's default has one convolution at
    # full resolution on the way up. A config.json written before `full_resolution` existed
    # reads as the residual network its checkpoint holds, so its run resumes with that one.
    layers = {layer.name for layer in build_network(_tiny_config(tmp_path)).layers}
    assert "up0_conv" in layers and "up0_block0_conv1" not in layers
    settings = dataclasses.asdict(_tiny_config(tmp_path))
    del settings["full_resolution"]
    (tmp_path / "config.json").write_text(json.dumps(settings))
    old = TrainConfig.from_json(tmp_path / "config.json")
    assert old.full_resolution == "residual"
    layers = {layer.name for layer in build_network(old).layers}
    assert "up0_block0_conv1" in layers and "up0_conv" not in layers
    with pytest.raises(ValueError, match="unknown full-resolution level 'none'"):
        train(_tiny_config(tmp_path / "run", full_resolution="none"), verbose=0)
    assert not (tmp_path / "run").exists()


def test_the_default_run_is_a_budget_inside_ten_minutes(train_script):
    # A fixed number of epochs takes twice as long on one 2-core machine as on another; the
    # default run (no --epochs, no --minutes) is a wall-clock budget on synthetic shapes too.
    options = {k: v for k, v in vars(train_script.build_parser().parse_args([])).items()
               if k not in ("resume", "overwrite")}
    resolved = resolve_config(TrainConfig(**options), None)
    assert resolved.epochs is None
    assert 5 <= resolved.minutes < 10
    assert resolve_config(TrainConfig(epochs=3), None).minutes is None


@pytest.mark.slow
def test_a_time_budget_fixes_epochs_that_repeat_exactly(tmp_path, monkeypatch):
    # Equal to --epochs N unless the machine slows down past the plan: this test's epochs are
    # too short for their pace to mean anything, so the deadline's guard is off.
    monkeypatch.setattr(budget, "DEADLINE_SLACK", float("inf"))
    budgeted = _FinalWeights()
    # 30 seconds: the throwaway model's calibration alone can take 10 of them on a slow,
    # shared 2-core machine, and at least two epochs must be left for the test to mean anything.
    folder, results = train(_tiny_config(tmp_path / "budget", steps_per_epoch=2, minutes=0.5),
                            callbacks=[budgeted], verbose=0)
    epochs = TrainConfig.from_json(folder / "config.json").epochs
    assert epochs >= 2
    fixed = _FinalWeights()
    train(_tiny_config(tmp_path / "fixed", steps_per_epoch=2, epochs=epochs),
          callbacks=[fixed], verbose=0)
    for a, b in zip(budgeted.weights, fixed.weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_budget_planned_too_short_is_planned_again_after_the_first_epoch(tmp_path, monkeypatch):
    # The throwaway steps said 6 epochs fit 45 seconds; the first real epoch shows that many
    # more do (at least 10, for the second re-plan, even on a busy machine where each tiny
    # epoch's validation and two checkpoints take 3 seconds). The run takes them, and still repeats `epochs=N` exactly.
    # It is planned once more after the last epoch before the first halving, timed warm.
    monkeypatch.setattr(budget, "fit_budget", lambda *args: (6, 2, 0.05, 0.0, 1.0))
    monkeypatch.setattr(budget, "DEADLINE_SLACK", float("inf"))  # as above
    plans, finishing_seconds = [], []
    plan_again = Budget.plan_again

    def recorded_plan_again(self, model, config, pace, *, done):
        plans.append((done, config.epochs))
        finishing_seconds.append(self.finishing_seconds)
        return plan_again(self, model, config, pace, done=done)

    monkeypatch.setattr(Budget, "plan_again", recorded_plan_again)
    budgeted = _FinalWeights()
    folder, _ = train(_tiny_config(tmp_path / "budget", minutes=0.75), callbacks=[budgeted],
                      verbose=0)
    recorded = TrainConfig.from_json(folder / "config.json")
    assert recorded.epochs > 6 and recorded.steps_per_epoch == 2
    assert len(plans) == 2 and plans[0] == (1, 6)
    assert plans[1][0] == plans[1][1] // 5 > 1  # after the epochs before the first halving
    # The finishing's reserve: the calibration's at first, then timed on the network's own
    # predictions.
    assert finishing_seconds[0] == 0.0 and finishing_seconds[1] > 0.0
    with (folder / "history.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(recorded.epochs))
    fixed = _FinalWeights()
    train(_tiny_config(tmp_path / "fixed", epochs=recorded.epochs, steps_per_epoch=2),
          callbacks=[fixed], verbose=0)
    for a, b in zip(budgeted.weights, fixed.weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_budgeted_run_stopped_in_its_first_epoch_stops_there(tmp_path, monkeypatch):
    # A caller's callback (or TerminateOnNaN) stops the run in the epoch the budget is
    # planned again from: no second fit, no backup left behind.
    monkeypatch.setattr(budget, "fit_budget", lambda *args: (6, 2, 0.05, 0.0, 1.0))

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    folder, results = train(_tiny_config(tmp_path / "run", minutes=0.25),
                            callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert results["stopped_early"] is True
    with (folder / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1
    assert not (folder / "backup").exists()


def test_the_finishing_is_timed_on_a_made_up_prediction_then_the_network_s_own(monkeypatch):
    images, masks = data.synthetic_arrays(4, size=32, difficulty="easy", seed=3)
    validation = [(f"{index}", image, mask)
                  for index, (image, mask) in enumerate(zip(images, masks))]
    finished = []

    def finish_mask(model, image, probability, **options):
        finished.append((probability, options["refine"]))
        return probability > 0.5

    monkeypatch.setattr(mask_settings, "finish_mask", finish_mask)
    model = build_model(base_filters=4, depth=2, inference={"tta": True})
    assert time_finishing(validation, model, trained=False, timed=2) > 0.0
    # Each image is finished as choose_mask_settings finishes it, without and with refining
    # (on threads: in any order).
    assert sorted(refine for _, refine in finished) == [False, False, True, True]
    made_up = finished[0][0]  # a disk, sure at its centre and in the corners, unsure around it
    assert made_up[16, 16] == 1.0 and made_up[0, 0] == 0.0 and 0.0 < made_up[16, 8] < 1.0
    finished.clear()
    time_finishing(validation, model, timed=3)
    assert len(finished) == 6
    for _, image, _ in validation[:3]:
        predicted = predict_probability(model, image)
        assert sum(np.array_equal(probability, predicted) for probability, _ in finished) == 2


def test_the_deadline_stops_a_run_whose_epochs_slowed_down():
    clock = [0.0]
    guard = Deadline(deadline=100.0, final_seconds=5.0, clock=lambda: clock[0])
    model = keras.Sequential()
    model.stop_training = False  # as fit sets it
    guard.set_model(model)
    guard.set_params({"epochs": 12})
    guard.on_train_begin()
    # Epochs of 10 s: after the 8th (80 s) the 9th would end at 90 and the scoring at 95.
    for epoch, end in enumerate((10, 20, 30, 40, 50, 60, 70, 80)):
        clock[0] = end
        guard.on_epoch_end(epoch)
        assert not model.stop_training, epoch
    # The 9th took 20 s (ends at 100): the next, at the median 10 s, and the scoring would
    # end at 115, 15 s past the deadline, more than half an epoch: stop after 9.
    clock[0] = 100
    guard.on_epoch_end(8)
    assert model.stop_training and guard.stopped_after == 9
    # On pace, a plan that ends within half an epoch of the deadline is never cut: 10
    # epochs of 10 s and 3 s of scoring end 3 s past it.
    model.stop_training = False
    on_pace = Deadline(deadline=100.0, final_seconds=3.0, clock=lambda: clock[0])
    on_pace.set_model(model)
    on_pace.set_params({"epochs": 10})
    clock[0] = 0.0
    on_pace.on_train_begin()
    for epoch in range(9):
        clock[0] = 10.0 * (epoch + 1)
        on_pace.on_epoch_end(epoch)
    assert not model.stop_training and on_pace.stopped_after is None


@pytest.mark.slow
def test_a_budgeted_run_planned_too_long_stops_at_its_deadline(tmp_path, monkeypatch):
    # A plan of 2000 epochs for 15 seconds that is never planned again: the deadline's guard
    # stops it, history and checkpoint are consistent, and the run is not "stopped early".
    monkeypatch.setattr(budget, "fit_budget", lambda *args: (2000, 2, 0.05, 0.0, 1.0))
    monkeypatch.setattr(Budget, "plan_again", lambda *args, **kwargs: False)
    started = time.perf_counter()
    folder, results = train(_tiny_config(tmp_path / "run", minutes=0.25), verbose=0)
    assert time.perf_counter() - started < 60  # 2000 epochs would take several minutes
    epochs_run = results["stopped_at_deadline"]
    assert epochs_run is not None and 3 <= epochs_run < 2000
    assert results["stopped_early"] is False
    with (folder / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == epochs_run
    assert not (folder / "backup").exists()
    assert (folder / "model.keras").exists()


def test_replanning_keeps_the_first_epoch_before_the_first_halving():
    # 500 s left after the first epoch, 25 s per epoch: 1 + 20.
    assert replan_epochs(18, seconds=500, epoch_seconds=25) == 21
    assert replan_epochs(23, seconds=520, epoch_seconds=25) == 21
    # 3 epochs would put the first halving (at a fifth of the run) inside the first epoch,
    # which already ran at the full rate: the plan stays.
    assert replan_epochs(6, seconds=10, epoch_seconds=5) == 6
    assert replan_epochs(3, seconds=100, epoch_seconds=5) == 3
    # Halvings every N epochs do not move with the length of the run.
    assert replan_epochs(6, seconds=10, epoch_seconds=5, halve_every=1) == 3
    # Planned again after 4 epochs: 4 + 20, if the first halving stays past them in both
    # plans (at a fifth of the run: at least 20 epochs).
    assert replan_epochs(30, seconds=500, epoch_seconds=25, done=4) == 24
    assert replan_epochs(30, seconds=300, epoch_seconds=25, done=4) == 30
    assert replan_epochs(18, seconds=500, epoch_seconds=25, done=4) == 18


def test_a_budget_makes_epochs_long_enough_that_validation_takes_a_tenth():
    # 0.1 s steps, 4 s of validation and checkpoints after each epoch, 600 s: 4 * 0.9 / (0.1 *
    # 0.1) = 360 steps -> 400 (multiples of 50); an epoch is 44 s, so 13 fit.
    assert plan_budget(600, step_seconds=0.1, after_epoch_seconds=4) == (13, 400)
    # Validation that cheap needs no more than the usual 100 steps per epoch.
    assert plan_budget(600, step_seconds=0.1, after_epoch_seconds=0.5) == (57, 100)
    # A short budget keeps 8 epochs: 60 s / 0.1 s / 8 = 75 steps, raised to the 100 minimum.
    assert plan_budget(60, step_seconds=0.1, after_epoch_seconds=4) == (4, 100)
    # Steps per epoch given: kept; the epochs follow from it.
    assert plan_budget(600, step_seconds=0.1, after_epoch_seconds=4, steps_per_epoch=20) == (100, 20)
    assert plan_budget(1, step_seconds=0.1, after_epoch_seconds=4) == (1, 100)


@pytest.mark.slow
def test_the_rate_halves_evenly_over_the_whole_run(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), size=32, epochs=10, steps_per_epoch=2,
                         batch_size=4, val_count=2, base_filters=4, depth=2, lr=0.1)
    train(config, verbose=0)
    with (tmp_path / "run" / "history.csv").open() as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    # 20 steps, 4 halvings: every 4 steps, i.e. every 2 epochs; the last epoch at 0.1 / 16.
    np.testing.assert_allclose(rates, 0.1 * 0.5 ** np.repeat(np.arange(5), 2), rtol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    """Stands in for a killed process: stops everything after epoch `after` is saved."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt


class _FinalWeights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_weights(tmp_path):
    def config(name):
        return TrainConfig(out=str(tmp_path / name), size=32, epochs=3, steps_per_epoch=2,
                           batch_size=4, val_count=4, base_filters=4, depth=2, halve_every=1)

    uninterrupted = _FinalWeights()
    train(config("whole"), callbacks=[uninterrupted], verbose=0)

    with pytest.raises(KeyboardInterrupt):
        train(config("killed"), callbacks=[_Interrupt(after=1)], verbose=0)
    assert (tmp_path / "killed" / "backup").exists()
    # The run folder is moved before it is resumed: the backup is found where the folder is.
    (tmp_path / "killed").rename(tmp_path / "moved")
    resumed = _FinalWeights()
    train(None, resume=tmp_path / "moved", callbacks=[resumed], verbose=0)

    for a, b in zip(uninterrupted.weights, resumed.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with (tmp_path / "moved" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1", "2"]
    assert not (tmp_path / "killed").exists() and not (tmp_path / "moved" / "backup").exists()


@pytest.mark.slow
def test_a_resumed_budgeted_run_trains_the_epochs_it_planned(tmp_path, monkeypatch):
    # config.json records the planned epochs beside the budget; a killed run resumes them.
    monkeypatch.setattr(budget, "fit_budget", lambda *args: (3, 2, 0.05, 0.0, 1.0))
    monkeypatch.setattr(Budget, "plan_again", lambda *args, **kwargs: False)
    monkeypatch.setattr(budget, "DEADLINE_SLACK", float("inf"))
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_config(tmp_path / "killed", minutes=0.25), callbacks=[_Interrupt(after=1)],
              verbose=0)
    recorded = TrainConfig.from_json(tmp_path / "killed" / "config.json")
    assert (recorded.epochs, recorded.minutes) == (3, 0.25)
    resumed = _FinalWeights()
    train(None, resume=tmp_path / "killed", callbacks=[resumed], verbose=0)
    with (tmp_path / "killed" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1", "2"]
    assert not (tmp_path / "killed" / "backup").exists()
    fixed = _FinalWeights()
    train(_tiny_config(tmp_path / "fixed", epochs=3, steps_per_epoch=2), callbacks=[fixed],
          verbose=0)
    for a, b in zip(fixed.weights, resumed.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "30"], "multiple of 4"),
        (["--data", "no/such/folder"], "no/such/folder"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "0"], "--lr must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(train_script, tmp_path, capsys, extra, message):
    assert train_script.main(TINY + ["--out", str(tmp_path / "run")] + extra) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and message in error and "\n" not in error


def test_multiworker_without_a_shared_run_folder_is_refused(train_script, capsys):
    assert train_script.main(TINY + ["--strategy", "multiworker"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --strategy multiworker needs --out") and "\n" not in error


def test_unpaired_files_and_existing_out_are_refused(train_script, tmp_path, capsys):
    images, masks = data.synthetic_arrays(3, size=32, difficulty="easy", seed=1)
    data.write_folder(tmp_path / "shapes", images, masks)
    (tmp_path / "shapes" / "masks" / sorted((tmp_path / "shapes" / "masks").iterdir())[0].name).unlink()
    assert train_script.main(TINY + ["--data", str(tmp_path / "shapes"), "--out", str(tmp_path / "a")]) == 2
    assert "without" in capsys.readouterr().err

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    assert train_script.main(TINY + ["--out", str(tmp_path / "b")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_finished_run_is_not_resumed_over(train_script, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_script.main(TINY + ["--out", str(out)]) == 0
    before = (out / "history.csv").read_text()
    assert train_script.main(["--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert (out / "history.csv").read_text() == before


def test_a_dataset_without_training_images_leaves_no_run_folder(train_script, tmp_path, capsys):
    images, masks = data.synthetic_arrays(2, size=32, difficulty="easy", seed=1)
    data.write_folder(tmp_path / "shapes" / "test", images, masks)
    out = tmp_path / "run"
    assert train_script.main(TINY + ["--data", str(tmp_path / "shapes"), "--out", str(out)]) == 2
    assert "no training images" in capsys.readouterr().err
    assert not out.exists()
