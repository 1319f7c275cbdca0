"""scripts/benchmark_real.py in its quick mode, and the plain stock U-Net it measures against."""

import csv
import importlib
import time

import numpy as np
import pytest

from segment import data
from segment.evaluation import plain_unet as stock
from segment.evaluation.plain_unet import (
    PLAIN_SIZE,
    build_plain_unet,
    plain_segmenter,
    train_plain_unet,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for split, count, seed in (("train", 6, 1), ("test", 3, 2)):
        images, masks = data.synthetic_arrays(count, size=(40, 56), difficulty="easy", seed=seed)
        data.write_folder(root / split, images, masks)
    return root


@pytest.mark.slow
def test_quick_benchmark_trains_scores_and_resumes(dataset, tmp_path, capsys):
    bench = importlib.import_module("segment.benchmarks.real")
    out = tmp_path / "bench"
    args = ["--data", str(dataset), "--minutes", "0.05", "--quick", "--out", str(out),
            "--baselines", "otsu", "--worst", "2"]
    assert bench.main(args) == 0
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["ours:composite", "plain", "otsu"]
    assert all(0.0 <= float(row["iou"]) <= 1.0 for row in rows)
    assert float(rows[1]["train_seconds"]) > 0
    assert (out / "runs" / "ours-composite-seed0" / "model.keras").exists()
    assert (out / "worst.png").stat().st_size > 0
    report = (out / "results.md").read_text()
    assert "| ours:composite | 1 |" in report and "| plain | 1 |" in report

    # A second run with the same settings trains nothing and keeps the rows.
    capsys.readouterr()
    assert bench.main(args) == 0
    assert "training" not in capsys.readouterr().out
    with (out / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    # A run stopped between a method's two writes: scored again, neither lost nor doubled.
    per_image = out / "per_image.csv"

    def scored():
        with per_image.open() as handle:
            return sorted((row["method"], row["file"]) for row in csv.DictReader(handle))

    before = scored()
    with per_image.open() as handle:
        kept = [row for row in csv.DictReader(handle) if row["method"] != "otsu"]
    with per_image.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    (out / "worst.png").unlink()
    assert bench.main(args) == 0
    assert scored() == before and (out / "worst.png").exists()
    results = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(results[:-1]))
    assert bench.main(args) == 0
    assert scored() == before
    with (out / "results.csv").open() as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == [
            "ours:composite", "plain", "otsu"
        ]
    # Other settings are refused, with one line.
    assert bench.main(args[:2] + ["--minutes", "0.1"] + args[4:]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_plain_unet_stops_at_its_deadline_and_predicts_at_native_size(dataset, monkeypatch):
    streams = []

    def recorded(*args, **kwargs):
        streams.append(data.batched_dataset(*args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(stock, "batched_dataset", recorded)
    pairs = data.find_pairs(dataset / "train")
    started = time.perf_counter()
    model, info = train_plain_unet(pairs, minutes=0.01, batch_size=2)
    assert info["steps"] >= 1
    # The first step traces the graph; the budget is checked after every step.
    assert time.perf_counter() - started < 60
    image, _ = data.read_pair(*pairs[0])
    mask = plain_segmenter(model)(image)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    # It trains from our recipe's stream, so its `fit` too returns without waiting on the
    # autotuner.
    assert len(streams) == 1 and streams[0].options().autotune.enabled is False


def test_plain_unet_is_stock_keras():
    model = build_plain_unet()
    kinds = {type(layer).__module__.split(".")[0] for layer in model.layers}
    assert kinds == {"keras"}
    assert model(np.zeros((1, PLAIN_SIZE, PLAIN_SIZE, 3), "float32")).shape == (1, 128, 128, 1)


def test_a_folder_without_a_test_split_is_split_by_whole_groups(tmp_path):
    # Twelve short videos in one images/ + masks/ folder: the benchmark holds out whole ones
    # for the test, the same split for every method and every later run.
    bench = importlib.import_module("segment.benchmarks.real")
    config = data.generator_config("medium", appearance_weights={"texture": 1.0, "photo": 1.0})
    images, masks, stems = [], [], []
    for sequence in range(12):
        frames, frame_masks = data.synthetic_sequence(data.sample_rng(3, sequence), 5, 40, config)
        images += list(frames)
        masks += list(frame_masks)
        stems += [f"clip{sequence:02d}_{frame:03d}" for frame in range(5)]
    data.write_folder(tmp_path / "videos", images, masks, stems=stems)
    folder, train_pairs, test_pairs = bench._benchmark_data(tmp_path / "videos", tmp_path / "split")
    clips = [{pair[0].name.split("_")[0] for pair in pairs} for pairs in (train_pairs, test_pairs)]
    assert clips[0].isdisjoint(clips[1]) and len(clips[0]) + len(clips[1]) == 12
    assert len(test_pairs) == 15  # three whole clips: a fifth of 60 images is 12, then whole
    assert (folder / "test" / "images").is_dir() and folder == tmp_path / "split"
    # Run again, the split is read back, not drawn anew.
    again = bench._benchmark_data(tmp_path / "videos", tmp_path / "split")
    assert [pair[0].name for pair in again[2]] == [pair[0].name for pair in test_pairs]
