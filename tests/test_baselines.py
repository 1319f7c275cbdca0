import numpy as np
import pytest
from skimage.draw import disk

from segment.evaluation.baselines import BASELINES, chan_vese, grabcut, otsu
from segment.metrics import iou


def disk_image(*, object_value, background_value, size=64, noise=0.05, seed=0):
    """A flat disk off-centre on a flat background with mild Gaussian noise, and its mask."""
    truth = np.zeros((size, size), bool)
    truth[disk((size * 0.45, size * 0.55), size * 0.25, shape=truth.shape)] = True
    image = np.where(truth[..., None], object_value, background_value).astype(np.float32)
    image = image * np.ones(3, np.float32)  # gray values become RGB
    image += np.random.default_rng(seed).normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0), truth


EASY_IMAGES = {
    "light object": dict(object_value=0.8, background_value=0.2),
    # Inverted polarity: the brighter class is the background.
    "dark object": dict(object_value=0.15, background_value=0.85),
    "colour object": dict(object_value=(0.8, 0.3, 0.2), background_value=(0.2, 0.3, 0.7)),
}


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("scene", list(EASY_IMAGES))
def test_baseline_segments_an_easy_image(name, scene):
    image, truth = disk_image(**EASY_IMAGES[scene])
    predicted = BASELINES[name](image)
    assert predicted.dtype == bool and predicted.shape == truth.shape
    assert iou(predicted, truth) > 0.9


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_is_deterministic(name):
    image, _ = disk_image(**EASY_IMAGES["colour object"], noise=0.2)
    assert np.array_equal(BASELINES[name](image), BASELINES[name](image))


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 2, 3), (3, 3, 3), (1, 7, 3), (5, 4, 3)])
def test_baseline_handles_tiny_images(name, shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    predicted = BASELINES[name](image)
    assert predicted.dtype == bool and predicted.shape == shape[:2]


@pytest.mark.parametrize("name", list(BASELINES))
def test_flat_image_gives_an_empty_mask(name):
    assert not BASELINES[name](np.full((32, 32, 3), 0.5, np.float32)).any()


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8), np.float32), r"\(8, 8\)"),
        (np.zeros((8, 8, 4), np.float32), r"\(8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.uint8), "uint8"),
    ],
)
def test_baseline_rejects_bad_images(name, image, message):
    with pytest.raises(ValueError, match=message):
        BASELINES[name](image)


def test_otsu_smoothing_removes_speckle():
    image, truth = disk_image(**EASY_IMAGES["light object"], noise=0.25)
    assert iou(otsu(image), truth) > iou(otsu(image, smoothing_sigma=0), truth)


def test_grabcut_keeps_the_margin_as_background():
    image, _ = disk_image(**EASY_IMAGES["light object"])
    predicted = grabcut(image, margin=0.25)  # a 16 px margin cuts into the disk
    assert not predicted[:16].any() and not predicted[:, :16].any()
    assert not predicted[-16:].any() and not predicted[:, -16:].any()


def test_options_are_keyword_only():
    image, _ = disk_image(**EASY_IMAGES["light object"])
    for function in (otsu, chan_vese, grabcut):
        with pytest.raises(TypeError):
            function(image, 1)
