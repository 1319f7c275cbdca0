"""A model saved by an earlier version of the package loads and predicts as it did then."""

from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from segment.imageio import read_image
from segment.inference import load_segmenter, predict_mask, predict_probability

FIXTURE = Path(__file__).parent / "fixtures" / "saved-model"
STEMS = sorted(path.stem for path in (FIXTURE / "images").glob("*.png"))


@pytest.fixture(scope="module")
def model():
    return load_segmenter(FIXTURE / "model.keras")


def test_the_fixture_is_complete():
    assert len(STEMS) == 6


def test_loads_in_safe_mode_with_its_saved_settings(model):
    assert model.inference == {
        "working_size": 32, "threshold": 0.5, "tta": True,
        "scales": [0.75, 0.875, 1.0, 1.125, 1.25], "min_part": 0.0, "refine": True,
        "min_hole": 0.0,
    }
    # Compiled too, as training saved it: the custom loss and optimizer come back.
    compiled = keras.saving.load_model(FIXTURE / "model.keras", safe_mode=True)
    assert type(compiled.optimizer).__name__ == "StepHalvingSGD"
    assert type(compiled.loss).__name__ == "CompositeLoss"


@pytest.mark.parametrize("stem", STEMS)
def test_predicts_what_it_predicted_when_saved(model, stem):
    image = read_image(FIXTURE / "images" / f"{stem}.png")
    expected_probability = np.load(FIXTURE / "expected" / "probability.npz")[stem]
    np.testing.assert_allclose(predict_probability(model, image), expected_probability,
                               atol=1e-5)
    expected_mask = cv2.imread(str(FIXTURE / "expected" / f"{stem}_mask.png"),
                               cv2.IMREAD_GRAYSCALE) > 0
    mask = predict_mask(model, image)
    assert expected_mask.any() and not expected_mask.all()
    np.testing.assert_array_equal(mask, expected_mask)
