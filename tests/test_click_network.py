"""The click network: built from the segmenter, its training clicks, its training, and its
use by `correct_mask`, the HTTP API and `train.py`."""

import dataclasses
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segment import data
from segment.inference import Click, correct_mask, load_click_network
from segment.inference import clicks as clicks_module
from segment.inference.clicks import GUIDANCE, NETWORK_CLICKS, guidance_radius
from segment.model import build_model
from segment.training import TrainConfig, check_config
from segment.training.clicks import (
    ClickTraining,
    click_network,
    first_guidance,
    train_click_network,
)

TINY = {"base_filters": 4, "depth": 2, "full_resolution": "light", "context": "none",
        "foreground_prior": 0.2}


def _config(**settings):
    return TrainConfig(size=32, batch_size=4, **TINY, **settings)


def _constant_network(logit):
    """A click network that answers `sigmoid(logit)` everywhere, whatever it is shown."""
    network = build_model(guidance=GUIDANCE, base_filters=4, depth=2,
                          inference={"working_size": 32, "tta": False})
    head = network.get_layer("probability")
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.array([logit], np.float32)])
    return network


def test_the_click_network_starts_as_the_segmenter():
    keras.utils.set_random_seed(0)
    segmenter = build_model(**TINY, inference={"working_size": 32})
    network = click_network(segmenter, _config())
    images = np.random.default_rng(0).random((2, 32, 48, 3)).astype(np.float32)
    no_guidance = np.zeros((2, 32, 48, GUIDANCE), np.float32)
    np.testing.assert_allclose(network.predict_on_batch([images, no_guidance]),
                               segmenter.predict_on_batch(images), atol=1e-5)
    assert network.inference == segmenter.inference
    # The guidance is an input it can learn from: its stem weights are there, at zero.
    stem = network.get_layer("stem_conv").get_weights()[0]
    assert stem.shape[2] == 3 + GUIDANCE and not stem[:, :, 3:].any()


def test_the_first_training_click_is_inside_the_missed_object():
    truth = np.zeros((1, 40, 40, 1), np.float32)
    truth[0, 10:21, 10:21] = 1  # an 11 x 11 square the empty starting mask misses
    starts = np.zeros_like(truth)
    guides = first_guidance(starts, truth, seed=0, step=0)
    assert guides.shape == (1, 40, 40, GUIDANCE)
    assert not guides[0, ..., 0].any() and not guides[0, ..., 2].any()  # no background click
    # One click corrects the whole square: one disc, centred on its middle pixel.
    rows, columns = np.nonzero(guides[0, ..., 1])
    radius = guidance_radius((40, 40))
    assert (rows.mean(), columns.mean()) == (15, 15) and rows.max() - rows.min() <= 2 * radius


def test_corrections_start_from_the_click_network_s_answer():
    image = np.full((60, 80, 3), 0.5, np.float32)
    probability = np.full((60, 80), 0.01, np.float32)  # the segmenter: nothing here
    clicks = [Click(10, 10, True), Click(70, 50, False)]
    alone = correct_mask(image, probability, clicks)
    sure = correct_mask(image, probability, clicks, network=_constant_network(6.0))
    assert alone[10, 10] and not alone[50, 70] and alone.mean() < 0.5
    # The click network finds foreground everywhere: the background click carves out its
    # surroundings only, and wins at its own pixel.
    assert sure[10, 10] and not sure[50, 70] and sure.mean() > 0.5
    assert sure[0, 0] and not sure[49:52, 69:72].any()
    # No clicks: the starting mask, the click network not asked.
    np.testing.assert_array_equal(
        correct_mask(image, probability, [], network=_constant_network(6.0)), probability > 0.5)


def test_the_click_network_answers_from_the_first_clicks_and_later_ones_still_win(
        monkeypatch):
    shown = []

    def everywhere(network, image, start, clicks):  # a click network sure of foreground
        shown.append(len(clicks))
        return np.full(image.shape[:2], 0.99, np.float32)

    monkeypatch.setattr(clicks_module, "network_correction", everywhere)
    image = np.full((60, 80, 3), 0.5, np.float32)
    probability = np.full((60, 80), 0.01, np.float32)
    clicks = [Click(4 + 8 * i, 5, True) for i in range(NETWORK_CLICKS)]
    clicks += [Click(20, 40, False), Click(60, 50, False)]
    mask = correct_mask(image, probability, clicks, network="a click network")
    assert shown == [NETWORK_CLICKS]
    assert mask[5, 4] and mask[0, 0] and not mask[40, 20] and not mask[50, 60]


def test_the_api_corrects_with_the_click_network():
    pytest.importorskip("fastapi", reason="the serve extra is part of [dev]")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient

    from segment.deploy.server import create_app

    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, inference={"threshold": 0.5, "tta": False})
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buffer, "PNG")
    clicks = json.dumps([{"x": 5, "y": 5, "foreground": True}])
    answers = {}
    for name, network in (("without", None), ("with", _constant_network(6.0))):
        with TestClient(create_app(model, click_network=network)) as client:
            response = client.post("/api/segment", data={"clicks": clicks},
                                   files={"file": ("a.png", buffer.getvalue(), "image/png")})
            assert response.status_code == 200, response.text
            answers[name] = np.asarray(Image.open(io.BytesIO(response.content))) > 0
    assert answers["with"].all() and answers["without"][5, 5]
    assert not answers["without"].all()


def _folder(root, count=8):
    images, masks = data.synthetic_arrays(count, size=32, difficulty="easy", seed=0)
    data.write_folder(root, images, masks)
    return data.find_pairs(root)


def test_click_training_runs_its_steps_or_what_its_time_allows(tmp_path):
    pairs = _folder(tmp_path / "shapes")
    config = _config(data=str(tmp_path / "shapes"), lr=0.1, paste=0.0)
    keras.utils.set_random_seed(0)
    segmenter = build_model(**TINY, inference={"working_size": 32})
    network, steps = train_click_network(config, (pairs, pairs[:2]), segmenter, steps=3,
                                         verbose=0)
    assert steps == 3 and len(network.inputs) == 2
    before = click_network(segmenter, config).get_layer("stem_conv").get_weights()[0]
    assert not np.array_equal(network.get_layer("stem_conv").get_weights()[0], before)
    # A deadline already past: the timed steps alone.
    _, steps = train_click_network(config, (pairs, pairs[:2]), segmenter, deadline=0.0,
                                   verbose=0)
    assert steps == 20
    with pytest.raises(ValueError, match="either steps or a deadline"):
        train_click_network(config, (pairs, pairs[:2]), segmenter, verbose=0)


def test_a_click_training_step_is_stock_keras_s_step_on_images_and_guidance(monkeypatch):
    """With the guidance held fixed, `ClickTraining` trains its network as stock `fit` trains
    the same network on the images and that guidance."""
    rng = np.random.default_rng(0)
    images = rng.random((4, 32, 32, 3)).astype(np.float32)
    masks = (rng.random((4, 32, 32, 1)) > 0.6).astype(np.float32)
    guides = (rng.random((4, 32, 32, GUIDANCE)) > 0.9).astype(np.float32)
    keras.utils.set_random_seed(0)
    segmenter = build_model(**TINY, inference={"working_size": 32})
    networks = []
    for _ in range(3):  # ours, stock's, and one left as it starts
        keras.utils.set_random_seed(1)
        networks.append(click_network(segmenter, _config()))
    monkeypatch.setattr(ClickTraining, "_guidance",
                        lambda self, images, masks: tf.constant(guides))
    ours = ClickTraining(segmenter, networks[0])
    stock = keras.Model(networks[1].inputs, networks[1].outputs)
    for model in (ours, stock):
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                      loss=keras.losses.MeanSquaredError())
    ours_history = ours.fit(images, masks, batch_size=4, epochs=3, shuffle=False, verbose=0)
    stock_history = stock.fit([images, guides], masks, batch_size=4, epochs=3, shuffle=False,
                              verbose=0)
    np.testing.assert_allclose(ours_history.history["loss"], stock_history.history["loss"],
                               rtol=1e-5)
    changed = False
    for ours_weight, stock_weight, start in zip(*(network.get_weights() for network in networks)):
        np.testing.assert_allclose(ours_weight, stock_weight, atol=1e-5)
        changed |= not np.allclose(ours_weight, start)
    assert changed


@pytest.mark.parametrize("settings, message", [
    ({"data": "photos", "click_minutes": -1.0}, "--click-minutes must be 0"),
    ({"click_steps": 5}, "give --data"),
    ({"data": "photos", "click_steps": 0}, "--click-steps must be at least 1"),
    ({"data": "photos", "click_minutes": 2.0, "strategy": "multiworker", "out": "run"},
     "trains on one machine"),
])
def test_bad_click_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        check_config(dataclasses.replace(TrainConfig(), **settings))


def test_a_model_without_a_click_network_has_none(tmp_path):
    path = tmp_path / "model.keras"
    build_model(base_filters=4, depth=2).save(path)
    assert load_click_network(path) is None
    _constant_network(0.0).save(tmp_path / "clicks.keras")
    assert len(load_click_network(path).inputs) == 2


@pytest.mark.parametrize("with_it, without, kept", [
    ([1, 1], [3, 3], True),
    ([2, 3], [2, 3], False),
    # Fewer on average (2 against 2.25), but by less than the standard error of the
    # difference (0.25 against 0.75): not clearly fewer.
    ([1, 3], [2, 2.5], False),
])
def test_train_keeps_the_click_network_only_where_it_clearly_saves_clicks(
        tmp_path, monkeypatch, with_it, without, kept):
    from segment.training import loop, train

    _folder(tmp_path / "shapes")
    checked = []

    def scores(segmenter, network, samples, **_):
        checked.append(len(list(samples)))
        return {"with": with_it, "without": without}

    monkeypatch.setattr(loop, "clicks_to_90", scores)
    config = _config(data=str(tmp_path / "shapes"), out=str(tmp_path / "run"), epochs=1,
                     steps_per_epoch=1, groups="none", val_fraction=0.25, click_steps=1)
    folder, results = train(config, verbose=0)
    assert checked == [2]  # every validation image
    assert (folder / "clicks.keras").is_file() == kept
    assert results["click_network"] == kept
    assert (results["click_noc90"], results["click_noc90_without"]) == (
        np.mean(with_it), np.mean(without))
    assert json.loads((folder / "metrics.json").read_text())["click_network"] == kept


def test_the_benchmark_corrects_with_and_without_the_click_network_from_one_prediction(
        monkeypatch):
    from segment.benchmarks.interactive import methods_for
    from segment.evaluation import interactive

    predicted = []
    real = interactive.predict_probability
    monkeypatch.setattr(interactive, "predict_probability",
                        lambda model, image: predicted.append(1) or real(model, image))
    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, inference={"threshold": 0.5, "tta": False})
    methods = methods_for(model, grabcut=False, click_network=_constant_network(6.0))
    assert sorted(methods) == ["model", "model-probability"]
    image = np.full((48, 64, 3), 0.4, np.float32)
    masks = {name: method(image, "a.png")(image, [Click(5, 5, True)])
             for name, method in methods.items()}
    assert len(predicted) == 1  # one prediction for both
    assert masks["model"].all() and not masks["model-probability"].all()
    methods["model"](image, "b.png")
    assert len(predicted) == 2  # the next image is predicted again
