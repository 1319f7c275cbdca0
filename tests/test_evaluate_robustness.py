"""scripts/evaluate_robustness.py on two tiny models: every condition, the same images for both."""

import csv
import importlib

import keras
import numpy as np
import pytest

from segment.model import build_model

robustness = importlib.import_module("segment.benchmarks.robustness")


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    paths = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        path = tmp_path_factory.mktemp(f"run{seed}") / "model.keras"
        build_model(base_filters=4, depth=2).save(path)
        paths.append(path)
    return paths


def test_degradations_grow_with_strength_and_repeat_exactly():
    images, masks = robustness.held_out_set(2, 32)
    assert images.shape == (2, 32, 32, 3) and masks.dtype == bool
    image = images[0]

    def rng():
        return np.random.default_rng(7)

    assert np.array_equal(robustness.degrade(image, "gaussian", 0.0, rng()), image)
    errors = [np.abs(robustness.degrade(image, "gaussian", sigma, rng()) - image).mean()
              for sigma in (0.05, 0.1, 0.2)]
    assert errors[0] < errors[1] < errors[2]
    np.testing.assert_array_equal(robustness.degrade(image, "salt_pepper", 0.05, rng()),
                                  robustness.degrade(image, "salt_pepper", 0.05, rng()))
    assert robustness.degrade(image, "contrast", 0.2, rng()).std() < image.std() * 0.21


def test_report_has_every_model_axis_and_strength(model_paths, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--models", *map(str, model_paths), "--names", "a,b", "--count", "2", "--size", "32",
            "--out", str(out)]
    assert robustness.main(argv) == 0
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    conditions = sum(len(strengths) for strengths in robustness.AXES.values())
    assert len(rows) == 2 * conditions
    assert {row["model"] for row in rows} == {"a", "b"}
    assert all(0.0 <= float(row["iou"]) <= 1.0 for row in rows)
    assert "| sigma 0.15 + 5% salt and pepper | a IoU | a spurious | b IoU | b spurious |" in (
        out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0
    # An existing report is kept unless --overwrite; bad names are refused with one line.
    assert robustness.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert robustness.main(argv[:3] + ["--names", "a,a"] + argv[5:] + ["--overwrite"]) == 2
    assert "distinct" in capsys.readouterr().err


@pytest.mark.slow
def test_mask_settings_reach_every_model(model_paths, tmp_path, monkeypatch):
    # Each model finishes its masks with its own settings unless the flags say otherwise.
    options = []
    method = robustness.model_method
    monkeypatch.setattr(robustness, "model_method",
                        lambda model, **given: options.append(given) or method(model, **given))
    argv = ["--models", *map(str, model_paths), "--count", "1", "--size", "32"]
    assert robustness.main(argv + ["--out", str(tmp_path / "own")]) == 0
    assert options == [{"min_part": None, "min_hole": None, "refine": None}] * 2
    options.clear()
    raw = ["--min-part", "0", "--min-hole", "0", "--no-refine"]
    assert robustness.main(argv + raw + ["--out", str(tmp_path / "all")]) == 0
    assert options == [{"min_part": 0.0, "min_hole": 0.0, "refine": False}] * 2
