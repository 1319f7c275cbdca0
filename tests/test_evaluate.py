import csv
import importlib
import json

import cv2
import keras
import numpy as np
import pytest
from skimage.draw import disk

from segment import evaluation
from segment.evaluation import report as report_module
from segment.imageio import write_png
from segment.metrics import METRIC_NAMES

evaluate = importlib.import_module("segment.cli.evaluate")

CSV_COLUMNS = ["method", "file", *METRIC_NAMES, "seconds"]
SUMMARY_KEYS = {*METRIC_NAMES, "seconds", "count"}


def write_pairs(folder, count=3, *, seed=0):
    """`count` light disks on dark backgrounds, of different sizes, as an image/mask folder."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        height, width = 24 + 4 * index, 32
        truth = np.zeros((height, width), bool)
        truth[disk((height / 2, width / 2), 7 + index, shape=truth.shape)] = True
        image = np.where(truth[..., None], 0.8, 0.2) + rng.normal(0, 0.03, (height, width, 3))
        write_png(folder / "images" / f"sample{index}.png", np.clip(image, 0, 1))
        write_png(folder / "masks" / f"sample{index}.png", truth)
    return folder


def run(capsys, *argv):
    code = evaluate.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_baselines_end_to_end(tmp_path, capsys):
    data = write_pairs(tmp_path / "data")
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "--model", "none", "--data", data, "--out", out,
                          "--baselines", "otsu")
    assert code == 0
    assert str(out) in stdout

    columns, rows = read_csv(out / "per_image.csv")
    assert columns == CSV_COLUMNS
    assert [(row["method"], row["file"]) for row in rows] == [
        ("otsu", f"sample{index}.png") for index in range(3)
    ]
    assert all(float(row["iou"]) > 0.9 and float(row["seconds"]) >= 0 for row in rows)

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["otsu"]
    assert set(summary["otsu"]) == SUMMARY_KEYS
    assert summary["otsu"]["count"] == 3
    assert summary["otsu"]["iou"] == pytest.approx(np.mean([float(row["iou"]) for row in rows]))

    report = (out / "report.md").read_text()
    assert "| otsu |" in report and "s/image" in report and "HD95" in report
    assert " ± " in report

    sheet = cv2.imread(str(out / "worst.png"))
    # A title row, then one row per image (3 < --worst 6); image | truth | otsu.
    assert sheet.shape == (report_module._HEADER + 3 * report_module._CELL, 3 * report_module._CELL, 3)


def test_model_and_baselines(tmp_path, capsys):
    data = write_pairs(tmp_path / "data")
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model_path = tmp_path / "m.keras"
    keras.Model(inputs, outputs).save(model_path)

    out = tmp_path / "out"
    code, _, _ = run(capsys, "--model", model_path, "--data", data, "--out", out,
                     "--baselines", "otsu,grabcut", "--worst", 2)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["model", "otsu", "grabcut"]
    assert all(set(values) == SUMMARY_KEYS for values in summary.values())
    _, rows = read_csv(out / "per_image.csv")
    assert len(rows) == 3 * 3
    sheet = cv2.imread(str(out / "worst.png"))
    assert sheet.shape == (report_module._HEADER + 2 * report_module._CELL, 5 * report_module._CELL, 3)

    # The model alone.
    code, _, _ = run(capsys, "--model", model_path, "--data", data, "--out", out,
                     "--baselines", "", "--overwrite")
    assert code == 0
    assert list(json.loads((out / "summary.json").read_text())) == ["model"]


def test_test_split_is_preferred(tmp_path, capsys):
    write_pairs(tmp_path / "data" / "train", count=3)
    write_pairs(tmp_path / "data" / "test", count=2)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "--model", "none", "--data", tmp_path / "data", "--out", out,
                          "--baselines", "otsu", "--worst", 0)
    assert code == 0
    assert "test" in stdout
    assert json.loads((out / "summary.json").read_text())["otsu"]["count"] == 2
    assert not (out / "worst.png").exists()


def test_evaluate_folder_scores_and_times_each_method(tmp_path):
    pairs = [(image, tmp_path / "data" / "masks" / image.name)
             for image in sorted((write_pairs(tmp_path / "data") / "images").iterdir())]
    calls = []

    def everything(image):
        calls.append(image.shape)
        return np.ones(image.shape[:2], bool)

    rows = evaluation.evaluate_folder(pairs, {"everything": everything}, warm_up=True)
    assert len(calls) == 3 + 1  # one untimed warm-up call
    assert [row["file"] for row in rows] == [image.name for image, _ in pairs]
    assert all(row["recall"] == 1.0 and row["iou"] < 1.0 for row in rows)
    summary = evaluation.summarize(rows)
    assert summary["everything"]["recall"] == 1.0 and summary["everything"]["count"] == 3


def _error(capsys, *argv):
    code, _, stderr = run(capsys, *argv)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1  # one line, no traceback
    return stderr


def test_missing_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    stderr = _error(capsys, "--model", "none", "--data", missing, "--out", tmp_path / "out")
    assert str(missing) in stderr
    assert not (tmp_path / "out").exists()


def test_unpaired_files(tmp_path, capsys):
    data = write_pairs(tmp_path / "data")
    (data / "masks" / "sample1.png").unlink()
    stderr = _error(capsys, "--model", "none", "--data", data, "--out", tmp_path / "out")
    assert "sample1" in stderr


def test_split_without_test(tmp_path, capsys):
    write_pairs(tmp_path / "data" / "train")
    stderr = _error(capsys, "--model", "none", "--data", tmp_path / "data",
                    "--out", tmp_path / "out")
    assert "no test/ split" in stderr


def test_missing_and_unsafe_models(tmp_path, capsys):
    data = write_pairs(tmp_path / "data")
    stderr = _error(capsys, "--model", tmp_path / "absent.keras", "--data", data,
                    "--out", tmp_path / "out")
    assert "absent.keras" in stderr

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: x[..., :1])(inputs)  # code: refused in safe mode
    unsafe = tmp_path / "unsafe.keras"
    keras.Model(inputs, outputs).save(unsafe)
    stderr = _error(capsys, "--model", unsafe, "--data", data, "--out", tmp_path / "out")
    assert "unsafe.keras" in stderr


def test_refuses_to_overwrite(tmp_path, capsys):
    data = write_pairs(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    arguments = ["--model", "none", "--data", data, "--out", out, "--baselines", "otsu"]
    stderr = _error(capsys, *arguments)
    assert "--overwrite" in stderr and not (out / "summary.json").exists()
    code, _, _ = run(capsys, *arguments, "--overwrite")
    assert code == 0 and (out / "summary.json").exists()
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "arguments",
    [
        ["--model", "none", "--baselines", "none"],  # nothing to evaluate
        ["--model", "none", "--baselines", "otsu,kmeans"],  # unknown baseline
        ["--model", "none", "--threshold", "2"],
        ["--model", "none", "--min-part", "1"],
    ],
)
def test_bad_arguments(tmp_path, capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*arguments, "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "examples:\n  python scripts/evaluate.py" in help_text  # line breaks kept
    assert "otsu,chan_vese,grabcut)" in help_text and "(default: 6)" in help_text
    assert "saved with the model" in help_text and "working size" in help_text
    assert "(default: None)" not in help_text
