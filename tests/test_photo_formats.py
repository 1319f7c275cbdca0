"""Photographs and masks as people bring them: EXIF orientation, JPEG masks, void borders,
other folder names. References: Pillow's `ImageOps.exif_transpose`, OpenCV's decoders, masks
and scores computed by hand, and stock Keras' MSE with per-pixel weights."""

import io
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from segment import data, imageio
from segment.cli import evaluate as evaluate_cli
from segment.cli import predict as predict_cli
from segment.evaluation import evaluate_folder
from segment.imageio import DataError, read_image, read_labels, read_mask
from segment.losses import CompositeLoss
from segment.metrics import evaluate_masks, iou
from segment.model import without_void

FIXTURE_MODEL = Path(__file__).parent / "fixtures" / "saved-model" / "model.keras"


@pytest.fixture(autouse=True)
def upright():
    """Every test starts, and leaves the process, reading images upright (the default)."""
    imageio.keep_stored_orientation(False)
    yield
    imageio.keep_stored_orientation(False)


def _stored(seed=0, shape=(30, 50)):
    """A picture whose every pixel differs from its mirror images and turns."""
    rng = np.random.default_rng(seed)
    return (rng.random((*shape, 3)) * 255).astype(np.uint8)


def _encode(array, orientation, fmt="PNG"):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, format=fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


def _as_viewers_show(encoded):
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(encoded)).convert("RGB")))


def _as_uint8(image):
    return np.round(image * 255).astype(np.uint8)


# --- EXIF orientation --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_are_read_as_viewers_show_them(tmp_path, fmt, orientation):
    encoded = _encode(_stored(), orientation, fmt)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encoded)
    expected = _as_viewers_show(encoded)
    tolerance = 2 if fmt == "JPEG" else 0
    for got in (read_image(path), imageio.decode_image(encoded)):
        assert got.shape == expected.shape
        assert np.abs(_as_uint8(got).astype(int) - expected).max() <= tolerance


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_keep_orientation_reads_the_pixels_as_stored(tmp_path, fmt, orientation):
    stored = _stored()
    encoded = _encode(stored, orientation, fmt)
    np.testing.assert_array_equal(_as_uint8(imageio.decode_image(encoded, upright=False)), stored)
    imageio.keep_stored_orientation(True)
    (tmp_path / "photo.img").write_bytes(encoded)
    np.testing.assert_array_equal(_as_uint8(read_image(tmp_path / "photo.img")), stored)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoded_shape_is_the_size_as_seen_from_the_header_alone(monkeypatch, fmt, orientation):
    encoded = _encode(_stored(), orientation, fmt)
    seen = _as_viewers_show(encoded).shape[:2]

    def refuse(*args, **kwargs):
        raise AssertionError("decoded the pixels")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    assert imageio.decoded_shape(encoded, "photo") == seen
    assert imageio.decoded_shape(encoded, "photo", upright=True) == seen
    assert imageio.decoded_shape(encoded, "photo", upright=False) == (30, 50)
    imageio.keep_stored_orientation(True)
    assert imageio.decoded_shape(encoded, "photo") == (30, 50)


@pytest.mark.parametrize("data, message", [
    (b"", "photo.png: empty file (0 bytes)"),
    (b"not an image", "photo.png: not a readable image (corrupt or unsupported format)"),
    (b"GIF89a" + b"\0" * 40, "photo.png: not a readable image (corrupt or unsupported format)"),
])
def test_decoded_shape_refuses_what_decode_image_refuses_with_its_words(data, message):
    for read in (imageio.decode_image, imageio.decoded_shape):
        with pytest.raises(DataError) as error:
            read(data, "photo.png")
        assert str(error.value) == message


def _phone_folder(root, *, mask_as_stored=False):
    """One photograph stored sideways (EXIF 6) whose mask was drawn on it upright."""
    stored = _stored(shape=(32, 48))
    upright = np.rot90(stored, -1)
    mask = np.zeros(upright.shape[:2], np.uint8)
    mask[2:20, 3:12] = 255  # off-centre, so a turn would show
    if mask_as_stored:
        mask = np.rot90(mask, 1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "phone.jpg").write_bytes(_encode(stored, 6, "JPEG"))
    cv2.imwrite(str(root / "masks" / "phone.png"), mask)
    return upright, mask > 0


def test_a_mask_pairs_with_its_photo_as_the_user_sees_it(tmp_path):
    upright, mask = _phone_folder(tmp_path)
    image, truth = data.read_pair(*data.find_pairs(tmp_path)[0])
    assert image.shape[:2] == truth.shape == upright.shape[:2]
    assert np.abs(_as_uint8(image).astype(int) - upright).max() <= 4  # JPEG at quality 100
    np.testing.assert_array_equal(truth, mask)


def test_a_mask_drawn_on_the_stored_pixels_is_named_and_kept_orientation_pairs_it(tmp_path):
    _phone_folder(tmp_path, mask_as_stored=True)
    pair = data.find_pairs(tmp_path)[0]
    with pytest.raises(DataError, match="phone.jpg is 32x48 .*--keep-orientation"):
        data.read_pair(*pair)
    imageio.keep_stored_orientation(True)
    image, truth = data.read_pair(*pair)
    assert image.shape[:2] == truth.shape == (32, 48)


def test_predict_writes_outputs_the_size_and_way_up_of_the_photo_as_seen(tmp_path):
    upright = _stored(seed=3, shape=(40, 56))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sideways.png").write_bytes(_encode(np.rot90(upright, 1), 6))
    (tmp_path / "in" / "upright.png").write_bytes(_encode(upright, 1))
    argv = ["--model", str(FIXTURE_MODEL), "--save", "prob,cutout"]
    assert predict_cli.main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), *argv]) == 0
    outputs = {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
               for path in (tmp_path / "out").iterdir()}
    for kind in ("mask", "prob", "cutout"):
        sideways, straight = (outputs[f"{stem}_{kind}.png"] for stem in ("sideways", "upright"))
        assert sideways.shape[:2] == (40, 56)
        assert np.mean(sideways == straight) >= 0.999
    assert predict_cli.main([str(tmp_path / "in" / "sideways.png"), "--out",
                             str(tmp_path / "kept"), "--keep-orientation", *argv]) == 0
    assert cv2.imread(str(tmp_path / "kept" / "sideways_mask.png")).shape[:2] == (56, 40)


def test_the_api_answers_with_the_upright_size_unless_told_to_keep_it():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from segment.deploy.server import create_app
    from segment.inference import load_segmenter

    model = load_segmenter(FIXTURE_MODEL)
    sideways = _encode(_stored(shape=(24, 40)), 8, "JPEG")
    for keep, shape in ((False, (40, 24)), (True, (24, 40))):
        with TestClient(create_app(model, keep_orientation=keep)) as client:
            assert client.get("/api/health").json()["keep_orientation"] is keep
            answer = client.post("/api/segment", files={"file": ("p.jpg", sideways)})
            assert answer.status_code == 200
            assert imageio.decode_image(answer.content).shape[:2] == shape


# --- masks as datasets ship them -----------------------------------------------------------------


def _jpeg_mask_folder(root):
    """Two pairs whose masks are JPEG files, as Kvasir-SEG distributes them."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truths = []
    for index in range(2):
        truth = np.zeros((40, 40), np.uint8)
        cv2.circle(truth, (15 + 10 * index, 20), 9, 255, -1)
        cv2.imwrite(str(root / "images" / f"{index}.png"), _stored(index, (40, 40)))
        cv2.imwrite(str(root / "masks" / f"{index}.jpg"), truth, [cv2.IMWRITE_JPEG_QUALITY, 60])
        truths.append(truth)
    return truths


def test_jpeg_masks_are_read_above_the_midpoint_with_a_warning_that_counts(tmp_path):
    _jpeg_mask_folder(tmp_path)
    pairs = data.find_pairs(tmp_path)
    decoded = [cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) for _, mask in pairs]
    for (_, mask), values in zip(pairs, decoded):
        np.testing.assert_array_equal(read_mask(mask), values > 127.5)
    between = sum(np.count_nonzero((values > 0) & (values < 255)) for values in decoded)
    assert 0 < between
    share = between / sum(values.size for values in decoded)
    note = data.lossy_mask_note(pairs)
    assert note.startswith("warning: 2 masks are JPEG") and f"{share:.1%}" in note
    assert data.lossy_mask_note([(tmp_path / "a.png", tmp_path / "a.png")]) is None


def _voc_mask(indices):
    """A palette PNG as Pascal VOC writes its masks: index 255 painted with the void colour."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + list(imageio.VOC_VOID_COLOUR)
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _object_with_void_border():
    indices = np.zeros((24, 24), np.uint8)
    cv2.circle(indices, (12, 12), 8, 255, -1)
    cv2.circle(indices, (12, 12), 6, 1, -1)  # class 1 inside a 2-pixel void band
    return indices


def test_a_voc_palette_mask_has_its_void_border_found_and_classes_as_foreground(tmp_path):
    indices = _object_with_void_border()
    indices[0:3, 0:3] = 2  # a second class: foreground too
    (tmp_path / "voc.png").write_bytes(_voc_mask(indices))
    mask, void = read_labels(tmp_path / "voc.png")
    np.testing.assert_array_equal(void, indices == 255)
    np.testing.assert_array_equal(mask, (indices == 1) | (indices == 2))


def test_void_on_a_gray_mask_is_named_by_value(tmp_path):
    indices = _object_with_void_border()
    gray = np.where(indices == 1, 255, np.where(indices == 255, 128, 0)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    with pytest.raises(DataError, match="not binary.*--void"):
        read_mask(tmp_path / "gray.png")
    mask, void = read_labels(tmp_path / "gray.png", void=128)
    np.testing.assert_array_equal(void, indices == 255)
    np.testing.assert_array_equal(mask, indices == 1)


def test_void_pixels_change_no_score():
    rng = np.random.default_rng(0)
    truth = rng.random((20, 20)) < 0.4
    void = np.zeros_like(truth)
    void[5:12, :] = True
    scored = np.ma.MaskedArray(truth, mask=void)
    predictions = [rng.random((20, 20)) < 0.5]
    predictions.append(np.where(void, ~predictions[0], predictions[0]))  # differs where void
    scores = [evaluate_masks(prediction, scored) for prediction in predictions]
    assert scores[0] == scores[1]
    # IoU by hand over the labelled pixels alone.
    valid = ~void
    by_hand = (np.count_nonzero(predictions[0] & truth & valid)
               / np.count_nonzero((predictions[0] | truth) & valid))
    assert iou(predictions[0], scored) == pytest.approx(by_hand)


def test_void_pixels_add_nothing_to_the_loss_and_pass_no_gradient():
    rng = np.random.default_rng(1)
    labels = (rng.random((2, 16, 16, 1)) < 0.4).astype(np.float32)
    labels[:, :4] = imageio.VOID_LABEL
    valid = labels != imageio.VOID_LABEL
    prediction = tf.constant(rng.random((2, 16, 16, 1)), tf.float32)
    changed = tf.where(valid, prediction, 1.0 - prediction)  # differs only where void
    loss = CompositeLoss()

    def value_and_gradient(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = tf.reduce_mean(loss.call(*without_void(tf.constant(labels), p)))
        return float(value), tape.gradient(value, p).numpy()

    (first, gradient), (second, _) = value_and_gradient(prediction), value_and_gradient(changed)
    assert first == pytest.approx(second, abs=1e-7)
    assert np.all(gradient[~valid] == 0) and np.any(gradient[valid] != 0)
    # The MSE term against stock Keras' MSE with each pixel weighted 1, void pixels 0.
    truth, kept = without_void(tf.constant(labels), prediction)
    ours = tf.reduce_mean(keras.ops.mean((kept - truth) ** 2, axis=(1, 2, 3)))
    stock = keras.losses.MeanSquaredError()(np.where(valid, labels, 0), prediction,
                                            sample_weight=valid[..., 0].astype(np.float32))
    assert float(ours) == pytest.approx(float(stock), rel=1e-6)


def test_evaluation_leaves_a_void_border_out_of_its_scores(tmp_path):
    indices = _object_with_void_border()
    predicted = np.zeros((24, 24), bool)
    predicted[4:22, 2:16] = True
    for name, void in (("void", indices == 255), ("labelled", np.zeros((24, 24), bool))):
        root = tmp_path / name  # the band as void, or as background
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        cv2.imwrite(str(root / "images" / "a.png"), _stored(0, (24, 24)))
        (root / "masks" / "a.png").write_bytes(_voc_mask(np.where(void, 255, indices == 1)))
        [row] = evaluate_folder(data.find_pairs(root), {"fixed": lambda image: predicted})
        truth, kept = (indices == 1) & ~void, predicted & ~void
        assert row["iou"] == pytest.approx(np.count_nonzero(kept & truth)
                                           / np.count_nonzero(kept | truth))


def test_evaluate_takes_the_void_value_of_gray_masks(tmp_path, capsys):
    indices = _object_with_void_border()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), _stored(0, (24, 24)))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"),
                np.choose((indices == 255) + 2 * (indices == 1), [0, 128, 255]).astype(np.uint8))
    argv = ["--model", "none", "--baselines", "otsu", "--data", str(tmp_path), "--worst", "0"]
    assert evaluate_cli.main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert "not binary" in capsys.readouterr().err
    assert evaluate_cli.main([*argv, "--out", str(tmp_path / "scored"), "--void", "128"]) == 0


# --- folder names ------------------------------------------------------------------------------


@pytest.mark.parametrize("images, masks, suffix", [
    ("images", "labels", "_mask"),
    ("JPEGImages", "SegmentationClass", ""),
    ("imgs", "annotations", "_segmentation"),
])
def test_masks_are_found_under_the_names_datasets_use(tmp_path, images, masks, suffix):
    (tmp_path / images).mkdir()
    (tmp_path / masks).mkdir()
    for stem in ("a", "b_1"):
        cv2.imwrite(str(tmp_path / images / f"{stem}.jpg"), _stored(0, (8, 8)))
        cv2.imwrite(str(tmp_path / masks / f"{stem}{suffix}.png"), np.zeros((8, 8), np.uint8))
    pairs = data.find_pairs(tmp_path)
    assert [(image.name, mask.name) for image, mask in pairs] == [
        ("a.jpg", f"a{suffix}.png"), ("b_1.jpg", f"b_1{suffix}.png")]
    assert data.pairing_note(pairs) == f"pairs: {images}/<name>.jpg with {masks}/<name>{suffix}.png"
    assert data.dataset_splits(tmp_path) == {"all": tmp_path}


def test_the_usual_layout_needs_no_note(tmp_path):
    pairs = data.write_folder(tmp_path, np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8)))
    assert data.pairing_note(pairs) is None


def test_training_carries_void_through_augmentation_and_trains_on_voc_and_jpeg_masks(tmp_path,
                                                                                   capsys):
    from segment.training import TrainConfig, train

    indices = _object_with_void_border()
    (tmp_path / "images").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    for index in range(6):
        cv2.imwrite(str(tmp_path / "images" / f"{index}.jpg"), _stored(index, (24, 24)))
        (tmp_path / "SegmentationClass" / f"{index}.png").write_bytes(_voc_mask(indices))
    cv2.imwrite(str(tmp_path / "SegmentationClass" / "5.jpg"), (indices == 1).astype(np.uint8) * 255)
    (tmp_path / "SegmentationClass" / "5.png").unlink()
    pairs = data.find_pairs(tmp_path)
    _, masks = next(iter(data.folder_dataset(pairs[:5], size=32, batch_size=5, seed=0)))
    assert set(np.unique(masks)) == {0, 1, imageio.VOID_LABEL}
    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), epochs=1,
                         steps_per_epoch=2, size=32, batch_size=2, base_filters=4, depth=2,
                         groups="none", click_minutes=0)
    _, results = train(config, verbose=0)
    printed = capsys.readouterr().out
    assert "pairs: images/<name>.jpg with SegmentationClass/<name>.png" in printed
    assert "warning: 1 masks are JPEG" in printed
    assert 0 <= results["iou"] <= 1


def test_run_folders_from_before_orientation_resume_reading_pixels_as_stored(tmp_path):
    from segment.training import TrainConfig

    settings = json.loads(json.dumps(TrainConfig().__dict__))
    del settings["keep_orientation"]
    (tmp_path / "config.json").write_text(json.dumps(settings))
    assert TrainConfig.from_json(tmp_path / "config.json").keep_orientation is True
