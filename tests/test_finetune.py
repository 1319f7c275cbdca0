"""Fine-tuning from a trained model: `train.py --data DIR --init MODEL`."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from segment import data
from segment.imageio import DataError
from segment.training import INIT_MINUTES, TrainConfig, resolve_config, train


def _folder(path, count=8, seed=0):
    images, masks = data.synthetic_arrays(count, size=48, difficulty="medium", seed=seed)
    data.write_folder(path, images, masks)
    return path


class _FirstWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [weight.copy() for weight in self.model.get_weights()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small --data run to start from: a narrower, shallower network than the defaults."""
    root = tmp_path_factory.mktemp("finetune")
    config = TrainConfig(data=str(_folder(root / "first")), out=str(root / "first-run"),
                         epochs=1, steps_per_epoch=2, size=32, batch_size=4, base_filters=4,
                         depth=2, groups="none", click_steps=2)
    folder, _ = train(config, verbose=0)
    return root, folder


def test_a_fine_tuned_run_starts_from_the_model_s_weights_and_network(trained):
    root, first = trained
    config = TrainConfig(data=str(_folder(root / "more", seed=1)), out=str(root / "tuned"),
                         init=str(first / "model.keras"), epochs=1, steps_per_epoch=2,
                         batch_size=4, groups="none", click_steps=2)
    start = _FirstWeights()
    folder, results = train(config, callbacks=[start], verbose=0)
    saved = keras.saving.load_model(first / "model.keras", safe_mode=True)
    assert len(start.weights) == len(saved.get_weights())
    for a, b in zip(start.weights, saved.get_weights()):
        np.testing.assert_array_equal(a, b)
    recorded = json.loads((folder / "config.json").read_text())
    # The network and working size come from the first run, not the defaults given here.
    assert (recorded["base_filters"], recorded["depth"], recorded["size"]) == (4, 2, 32)
    assert recorded["init"] == str(first / "model.keras")
    assert results["iou"] >= 0
    # Each run trains its click network, kept where it saves clicks on validation.
    assert recorded["click_steps"] == 2 and results["click_steps"] == 2
    assert (folder / "clicks.keras").is_file() == results["click_network"]
    assert results["click_noc90"] < results["click_noc90_without"] or not results["click_network"]


def test_fine_tuning_defaults_to_its_own_shorter_budget(trained):
    _, first = trained
    config = TrainConfig(data="unused", init=str(first / "model.keras"))
    resolved = resolve_config(config, ([("a", "b")], []))  # pairs are not read with a size
    assert resolved.minutes == INIT_MINUTES and resolved.size == 32
    given = resolve_config(dataclasses.replace(config, minutes=2.0), ([("a", "b")], []))
    assert given.minutes == 2.0


def test_bad_init_models_are_refused_by_name(trained, tmp_path):
    root, first = trained
    folder = str(root / "first")
    with pytest.raises(DataError, match=r"--init .*missing.keras: no such model file"):
        train(TrainConfig(data=folder, out=str(tmp_path / "a"), init=str(tmp_path / "missing.keras")))
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    lone.write_bytes((first / "model.keras").read_bytes())
    with pytest.raises(DataError, match="no config.json beside it"):
        train(TrainConfig(data=folder, out=str(tmp_path / "b"), init=str(lone)))
    with pytest.raises(ValueError, match="give --data too"):
        train(TrainConfig(out=str(tmp_path / "c"), init=str(first / "model.keras")))
    # A config.json that describes another network than the weights.
    (lone.parent / "config.json").write_text(json.dumps(
        {**json.loads((first / "config.json").read_text()), "base_filters": 8}))
    with pytest.raises(DataError, match="its network differs"):
        train(TrainConfig(data=folder, out=str(tmp_path / "d"), init=str(lone), epochs=1,
                          steps_per_epoch=1, batch_size=4, groups="none", click_minutes=0),
              verbose=0)
    assert not (tmp_path / "d").exists()  # nothing left behind by a run that never started
