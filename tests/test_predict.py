import importlib
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from skimage import measure
from test_inference import random_image, tiny_model

from segment.imageio import read_image
from segment.inference import predict_probability, refine_mask
from segment.model import build_model

predict_script = importlib.import_module("segment.cli.predict")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "model.keras"
    tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def lambda_model_path(tmp_path_factory):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=-1, keepdims=True))(inputs)
    path = tmp_path_factory.mktemp("untrusted") / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def write_image(path, height=24, width=30, *, channels=3, dtype=np.uint8):
    """Write a test image with cv2, which picks the format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = random_image(height, width)
    if channels == 1:
        image = image[..., 0]
    elif channels == 4:
        image = np.dstack([image, np.full((height, width), 0.5, dtype=np.float32)])
    scale = np.iinfo(dtype).max
    assert cv2.imwrite(str(path), np.round(image * scale).astype(dtype))
    return path


def run(*argv):
    return predict_script.main([str(arg) for arg in argv])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_every_output_kind_is_written_and_readable(tmp_path, model_path, capsys):
    source = write_image(tmp_path / "in" / "photo.png", 33, 47)
    out = tmp_path / "out"
    assert run(source, "--model", model_path, "--out", out, "--save", "prob,overlay,cutout") == 0
    assert f"done: 1, failed: 0, outputs in {out}" in capsys.readouterr().out

    mask = cv2.imread(str(out / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    prob = cv2.imread(str(out / "photo_prob.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "photo_overlay.png"), cv2.IMREAD_UNCHANGED)
    cutout = cv2.imread(str(out / "photo_cutout.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == prob.shape == (33, 47) and mask.dtype == prob.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (33, 47, 3) and overlay.dtype == np.uint8
    assert cutout.shape == (33, 47, 4) and cutout.dtype == np.uint8
    assert (cutout[mask == 0, 3] == 0).all() and (cutout[mask == 255, 3] == 255).all()
    assert sorted(p.name for p in out.iterdir()) == [
        "photo_cutout.png", "photo_mask.png", "photo_overlay.png", "photo_prob.png"
    ]


@pytest.mark.slow
def test_a_model_trained_at_a_working_size_is_applied_as_saved(tmp_path, capsys):
    keras.utils.set_random_seed(5)
    model = build_model(base_filters=4, depth=2, full_resolution="residual",
                        inference={"working_size": 24, "threshold": 0.45})
    path = tmp_path / "run" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    source = write_image(tmp_path / "in" / "photo.png", 50, 70)
    image = read_image(source)
    scaled = predict_probability(model, image, resize=24)
    assert not np.array_equal(scaled > 0.45, predict_probability(model, image, resize=0) > 0.45)

    assert run(source, "--model", path, "--out", tmp_path / "a") == 0
    mask = cv2.imread(str(tmp_path / "a" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, scaled > 0.45)
    # Explicit flags win over the saved settings.
    assert run(source, "--model", path, "--out", tmp_path / "b", "--resize", "0",
               "--threshold", "0.6") == 0
    mask = cv2.imread(str(tmp_path / "b" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, predict_probability(model, image, resize=0) > 0.6)
    # Saved scales are averaged over unless --scales says otherwise.
    model.inference["scales"] = [0.5, 1.0]
    model.save(path)
    averaged = (predict_probability(model, image, resize=12, scales=[1]) + scaled) / 2
    assert not np.array_equal(averaged > 0.45, scaled > 0.45)
    assert run(source, "--model", path, "--out", tmp_path / "c") == 0
    mask = cv2.imread(str(tmp_path / "c" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, averaged > 0.45)
    assert run(source, "--model", path, "--out", tmp_path / "d", "--scales", "1") == 0
    mask = cv2.imread(str(tmp_path / "d" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, scaled > 0.45)
    # A saved smallest part drops the foreground parts below it unless --min-part says otherwise.
    labels = measure.label(scaled > 0.45, connectivity=2)
    sizes = np.bincount(labels.ravel())
    assert len(sizes) > 2  # some parts to drop, some to keep
    share = (np.sort(sizes[1:])[-1] - 1) / labels.size  # just below the largest part
    model.inference["scales"], model.inference["min_part"] = [1.0], share
    model.save(path)
    assert run(source, "--model", path, "--out", tmp_path / "e") == 0
    mask = cv2.imread(str(tmp_path / "e" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, labels == np.argmax(sizes[1:]) + 1)
    assert run(source, "--model", path, "--out", tmp_path / "f", "--min-part", "0") == 0
    mask = cv2.imread(str(tmp_path / "f" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, scaled > 0.45)
    # A saved refinement refines each mask with GrabCut unless --no-refine says otherwise.
    model.inference["min_part"], model.inference["refine"] = 0.0, True
    model.save(path)
    refined = refine_mask(image, scaled, threshold=0.45)
    assert not np.array_equal(refined, scaled > 0.45)
    assert run(source, "--model", path, "--out", tmp_path / "g") == 0
    mask = cv2.imread(str(tmp_path / "g" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, refined)
    assert run(source, "--model", path, "--out", tmp_path / "h", "--no-refine") == 0
    mask = cv2.imread(str(tmp_path / "h" / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, scaled > 0.45)


@pytest.mark.parametrize(
    "name, channels, dtype",
    [
        ("gray.png", 1, np.uint8),
        ("rgba.png", 4, np.uint8),
        ("deep.png", 3, np.uint16),
        ("deep_gray.tif", 1, np.uint16),
        ("photo.jpg", 3, np.uint8),
        ("scan.bmp", 3, np.uint8),
    ],
)
def test_common_formats_give_a_mask_of_the_input_size(tmp_path, model_path, name, channels, dtype):
    source = write_image(tmp_path / "in" / name, 17, 40, channels=channels, dtype=dtype)
    assert run(source, "--model", model_path, "--out", tmp_path / "out") == 0
    mask = cv2.imread(str(tmp_path / "out" / f"{source.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (17, 40)


def test_large_image_is_tiled_to_a_mask_of_the_same_size(tmp_path, model_path):
    source = write_image(tmp_path / "in" / "big.png", 300, 260)
    assert run(source, "--model", model_path, "--out", tmp_path / "out",
               "--tile", 128, "--overlap", 32, "--tta") == 0
    assert cv2.imread(str(tmp_path / "out" / "big_mask.png")).shape[:2] == (300, 260)


def test_each_bad_file_gets_one_line_and_the_rest_are_done(tmp_path, model_path, capsys):
    folder = tmp_path / "in"
    write_image(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (folder / "c_empty.png").write_bytes(b"")
    (folder / "d_text.png").write_text("this is not an image\n")
    write_image(folder / "e_good.jpg")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"

    assert run(folder, missing, "--model", model_path, "--out", out) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    bad = ["b_corrupt.png", "c_empty.png", "d_text.png", "missing.png"]
    assert len(lines) == len(bad)
    for name, line in zip(bad, lines):
        assert name in line
    assert "Traceback" not in captured.err
    assert "done: 2, failed: 4" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a_good_mask.png", "e_good_mask.png"]


def test_lambda_model_is_refused_without_output(tmp_path, lambda_model_path, capsys):
    source = write_image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert run(source, "--model", lambda_model_path, "--out", out) == 2
    (line,) = error_lines(capsys)
    assert str(lambda_model_path) in line and "lambda" in line
    assert not out.exists()


def test_model_defaults_to_the_newest_run(tmp_path, model_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = write_image(tmp_path / "a.png")
    assert run(source, "--out", "out") == 2
    assert error_lines(capsys) == ["error: no model found; train one with python scripts/train.py"]

    for name, mtime in [("old", 1_000_000), ("new", 2_000_000)]:
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "model.keras").write_bytes(model_path.read_bytes())
        os.utime(run_dir / "model.keras", (mtime, mtime))
    assert run(source, "--out", "out") == 0
    assert f"model: {Path('runs', 'new', 'model.keras')}" in capsys.readouterr().out
    assert (tmp_path / "out" / "a_mask.png").exists()


def test_runs_dir_option(tmp_path, model_path, capsys):
    (tmp_path / "elsewhere" / "r1").mkdir(parents=True)
    (tmp_path / "elsewhere" / "r1" / "model.keras").write_bytes(model_path.read_bytes())
    source = write_image(tmp_path / "a.png")
    assert run(source, "--out", tmp_path / "out", "--runs-dir", tmp_path / "elsewhere") == 0


def test_refuses_to_write_into_an_input_folder(tmp_path, model_path, capsys):
    source = write_image(tmp_path / "a.png")
    assert run(source, "--model", model_path, "--out", tmp_path) == 2
    assert "--allow-input-dir" in error_lines(capsys)[0]
    # With --recursive, a new folder below an input folder is an input folder too.
    assert run(tmp_path, "--recursive", "--model", model_path, "--out", tmp_path / "masks") == 2
    assert "--allow-input-dir" in error_lines(capsys)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    assert run(tmp_path, "--model", model_path, "--out", tmp_path / "masks") == 0


def test_inputs_are_never_overwritten(tmp_path, model_path, capsys):
    # With --allow-input-dir and --overwrite, a.png's mask would land on the input a_mask.png.
    write_image(tmp_path / "a.png")
    other_input = write_image(tmp_path / "a_mask.png", channels=1)
    before = other_input.read_bytes()
    code = run(tmp_path / "a.png", other_input, "--model", model_path, "--out", tmp_path,
               "--allow-input-dir", "--overwrite")
    assert code == 1
    (line,) = error_lines(capsys)
    assert "a.png" in line and "overwrite an input" in line
    assert other_input.read_bytes() == before
    assert (tmp_path / "a_mask_mask.png").exists()


def test_existing_outputs_need_overwrite(tmp_path, model_path, capsys):
    source = write_image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert run(source, "--model", model_path, "--out", out) == 0
    out_file = out / "a_mask.png"
    out_file.write_bytes(b"previous result")
    assert run(source, "--model", model_path, "--out", out) == 1
    assert "--overwrite" in error_lines(capsys)[-1]
    assert out_file.read_bytes() == b"previous result"
    assert run(source, "--model", model_path, "--out", out, "--overwrite") == 0
    assert cv2.imread(str(out_file)) is not None


def test_same_stem_in_two_folders_does_not_overwrite_within_a_run(tmp_path, model_path, capsys):
    for folder in ("x", "y"):
        write_image(tmp_path / folder / "a.png")
    code = run(tmp_path / "x", tmp_path / "y", "--model", model_path, "--out", tmp_path / "out")
    assert code == 1
    (line,) = error_lines(capsys)
    assert str(tmp_path / "y" / "a.png") in line and "already written" in line


def test_glob_patterns_are_expanded_and_no_match_is_a_usage_error(tmp_path, model_path, capsys):
    for name in ("a.png", "b.png", "c.jpg"):
        write_image(tmp_path / "in" / name)
    out = tmp_path / "out"
    assert run(tmp_path / "in" / "*.png", "--model", model_path, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "b_mask.png"]
    assert run(tmp_path / "in" / "*.tif", "--model", model_path, "--out", out) == 2
    assert error_lines(capsys)[-1] == "error: no input images found"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--save", "mask,sparkles"], "sparkles"),
        (["--threshold", "1.5"], "threshold"),
        (["--tile", "64", "--overlap", "64"], "overlap"),
        (["--scales", "1,0"], "scales"),
        (["--scales", "big"], "scales"),
        (["--min-part", "1"], "min-part"),
        (["--min-part", "-0.1"], "min-part"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, model_path, capsys, arguments, message):
    source = write_image(tmp_path / "a.png")
    try:
        code = run(source, "--model", model_path, "--out", tmp_path / "out", *arguments)
    except SystemExit as exit:  # argparse rejects the value itself
        code = exit.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_tiling_and_resize(capsys):
    with pytest.raises(SystemExit) as exit:
        predict_script.main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "--resize" in text and "scale: working size or tiling?" in text and "(default: 512)" in text
