"""scripts/benchmark_losses.py in its quick mode: outputs, resuming, refusing other settings."""

import csv
import importlib
import math
import re
import shutil

import cv2
import pytest

HEADER = "loss,seed,iou,dice,boundary_f1,hd95,b0_error,b1_error,spurious,train_seconds"


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("segment.benchmarks.losses")


@pytest.fixture(scope="module")
def finished(bench, tmp_path_factory):
    """A finished quick benchmark (mse and composite, seed 0), shared by the tests."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    return out


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _copy(folder, tmp_path):
    copy = tmp_path / "bench"
    shutil.copytree(folder, copy)
    return copy


@pytest.mark.slow
def test_quick_run_writes_every_output(finished):
    lines = (finished / "results.csv").read_text().splitlines()
    assert lines[0] == HEADER
    rows = _rows(finished / "results.csv")
    assert [(row["loss"], row["seed"]) for row in rows] == [("mse", "0"), ("composite", "0")]
    for row in rows:
        assert 0.0 <= float(row["iou"]) <= 1.0
        assert float(row["train_seconds"]) > 0
        assert not math.isinf(float(row["hd95"]))
    report = (finished / "results.md").read_text()
    assert "| loss | runs | IoU |" in report
    assert "| mse | 1 |" in report and "| composite | 1 |" in report
    assert not re.search(r"\binf\b", report)  # HD95 is averaged over finite values
    for name in ("results.png", "samples.png"):
        image = cv2.imread(str(finished / name))
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100, name
    for loss_name in ("mse", "composite"):
        assert (finished / "predictions" / f"{loss_name}_seed0.npy").exists()


def test_rerun_skips_finished_runs(bench, finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = (out / "results.csv").read_text()
    assert bench.main(["--quick", "--out", str(out)]) == 0
    assert (out / "results.csv").read_text() == before  # same rows, same train_seconds
    assert "2 run(s) already in" in capsys.readouterr().out
    assert cv2.imread(str(out / "samples.png")) is not None  # redrawn from saved predictions


@pytest.mark.slow
def test_killed_benchmark_trains_only_the_missing_run(bench, finished, tmp_path):
    out = _copy(finished, tmp_path)
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(lines[:2]))  # as if killed during composite
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rerun = (out / "results.csv").read_text().splitlines(keepends=True)
    assert rerun[:2] == lines[:2]
    assert [row["loss"] for row in _rows(out / "results.csv")] == ["mse", "composite"]


def test_other_settings_are_refused(bench, finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = (out / "results.csv").read_text()
    assert bench.main(["--quick", "--out", str(out), "--steps", "4"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "steps 3 -> 4" in error
    assert (out / "results.csv").read_text() == before


def test_foreign_folder_is_refused(bench, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "holds no benchmark" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_table_bolds_the_best_value_in_each_direction(bench):
    def row(loss, seed, iou, spurious):
        return {"loss": loss, "seed": seed, "iou": iou, "dice": iou, "boundary_f1": iou,
                "hd95": 2.0, "b0_error": spurious, "b1_error": 0.0, "spurious": spurious,
                "train_seconds": 10.0}

    rows = {("mse", 0): row("mse", 0, 0.8, 4.0), ("mse", 1): row("mse", 1, 0.6, 2.0),
            ("composite", 0): row("composite", 0, 0.6, 1.0),
            ("composite", 1): row("composite", 1, 0.6, 1.0),
            ("bce", 0): row("bce", 0, math.nan, math.nan), ("bce", 1): row("bce", 1, 0.5, 0.5)}
    summary = bench.summarize(rows, ["mse", "composite", "bce"], [0, 1])
    table = bench.results_table(summary).splitlines()
    mse, composite, bce = table[2:]
    assert mse.startswith("| mse | 2 | **0.700 ± 0.141** |")  # higher IoU is better
    assert "| 3.00 ± 1.41 |" in mse
    assert composite.startswith("| composite | 2 | 0.600 ± 0.000 |")
    assert "| **1.00 ± 0.00** |" in composite  # lower spurious is better; NaN never wins
    assert bce.startswith("| bce | 2 | NaN |")
    lines = bench.composite_against_mse(summary)
    assert "- spurious: x0.33 (at most x0.50): met" in lines
    assert "- IoU: -0.100 (at least -0.010): missed" in lines
