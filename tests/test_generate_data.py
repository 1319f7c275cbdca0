import importlib
import json

import numpy as np
import pytest

import segment
from segment import data


@pytest.fixture(scope="module")
def generate_data():
    return importlib.import_module("segment.cli.generate")


def test_writes_splits_and_manifest_that_read_back(generate_data, tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = [
        "--out",
        str(out),
        "--count",
        "10",
        "--size",
        "32",
        "--seed",
        "3",
        "--difficulty",
        "hard",
        "--split",
        "0.6,0.2,0.2",
    ]
    assert generate_data.main(argv) == 0
    assert f"wrote {out}: train/ 6, val/ 2, test/ 2" in capsys.readouterr().out

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 6, "val": 2, "test": 2}
    assert (manifest["seed"], manifest["size"], manifest["difficulty"]) == (3, 32, "hard")
    assert manifest["segment_version"] == segment.__version__
    assert data.generator_config("hard", **manifest["generator"]) == data.generator_config("hard")

    # Sample i of the dataset stream lands in whichever split holds index i, under stem i...
    expected_images, expected_masks = data.synthetic_arrays(
        10, size=32, difficulty="hard", seed=3, stream=data.DATASET_STREAM
    )
    # ...a stream of its own: never the images a training run with the same seed sees.
    training_images, _ = data.synthetic_arrays(10, size=32, difficulty="hard", seed=3)
    assert not any(np.array_equal(a, b) for a, b in zip(expected_images, training_images))
    read = {
        split: data.load_pairs(data.find_pairs(path))
        for split, path in data.dataset_splits(out).items()
    }
    images = np.stack([image for split in ("train", "val", "test") for image in read[split][0]])
    masks = np.stack([mask for split in ("train", "val", "test") for mask in read[split][1]])
    np.testing.assert_array_equal(np.round(images * 255), np.round(expected_images * 255))
    np.testing.assert_array_equal(masks, expected_masks)
    assert [image.name for image, _ in data.find_pairs(out / "val")] == ["000006.png", "000007.png"]


def test_refuses_a_non_empty_out_unless_overwrite(generate_data, tmp_path, capsys):
    out = tmp_path / "shapes"
    (out / "train" / "images").mkdir(parents=True)
    (out / "train" / "images" / "stale.png").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")
    argv = ["--out", str(out), "--count", "4", "--size", "16"]

    assert generate_data.main(argv) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: ")
        and "not empty; pass --overwrite" in error
        and error.count("\n") == 1
    )
    assert (out / "train" / "images" / "stale.png").exists()

    assert generate_data.main([*argv, "--overwrite"]) == 0
    assert not (out / "train" / "images" / "stale.png").exists()  # the old split is replaced
    assert (out / "notes.txt").read_text() == "keep me"  # what the script does not write stays
    # 4 samples at 0.8/0.1/0.1 are 3.2/0.4/0.4: whole parts 3/0/0, the spare one to val.
    assert len(data.find_pairs(out / "train")) == 3
    assert len(data.find_pairs(out / "val")) == 1


def test_split_counts_never_go_negative_or_ignore_a_zero_fraction(generate_data):
    assert generate_data.split_counts(3, "0,0.5,0.5") == {"train": 0, "val": 2, "test": 1}
    assert generate_data.split_counts(1, "0,0,1") == {"train": 0, "val": 0, "test": 1}
    assert generate_data.split_counts(1000, "0.8,0.1,0.1") == {"train": 800, "val": 100, "test": 100}


@pytest.mark.parametrize("split", ["0.8,0.1", "0.5,0.5,0.5", "a,b,c"])
def test_bad_split_is_a_one_line_error(generate_data, tmp_path, capsys, split):
    assert generate_data.main(["--out", str(tmp_path / "x"), "--split", split]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --split") and error.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_help_shows_defaults_and_an_example(generate_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_data.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "(default: data/shapes)" in help_text and "example:" in help_text
