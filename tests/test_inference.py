import os
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from segment.imageio import DataError
from segment.inference import (
    REFINE_SIDE,
    clean_mask,
    collect_inputs,
    find_latest_model,
    finish_mask,
    load_segmenter,
    predict_mask,
    predict_probability,
    refine_mask,
    render_outputs,
    size_multiple,
)
from segment.inference.predict import _predict_batch
from segment.inference.tiling import summed_weight, tile_layout
from segment.model import build_model

# Receptive-field radius of `tiny_model` in input pixels: 3x3 conv (1), then at half resolution
# a 3x3 conv (2) and, after upsampling, a 3x3 conv (1), plus up to 1 pixel of pooling-grid offset.
TINY_RADIUS = 5


def tiny_model(seed=0):
    """Conv -> pool -> conv -> upsample -> conv, sigmoid output; needs sizes multiple of 2.

    Weights are larger than Keras' defaults so the output varies over the image and a
    blending error would show.
    """
    init = keras.initializers.RandomNormal(stddev=0.6, seed=seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=init)(
        inputs
    )
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=init)(x)
    x = keras.layers.UpSampling2D(2)(x)
    outputs = keras.layers.Conv2D(
        1, 3, padding="same", activation="sigmoid", kernel_initializer=init
    )(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def random_image(height, width, seed=0):
    # Smooth blobs rather than pixel noise, so the image has regions like a photo.
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    image = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))[:height, :width]
    return np.clip(image + 0.1 * rng.standard_normal(image.shape, dtype=np.float32), 0, 1)


# ------------------------------------------------------------------ size multiple


def _stack(*layers):
    inputs = keras.Input((None, None, 3))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "layers, expected",
    [
        ([keras.layers.Conv2D(2, 3, padding="same")], 1),
        ([keras.layers.MaxPooling2D(2), keras.layers.AveragePooling2D(2)], 4),
        ([keras.layers.Conv2D(2, 3, strides=2, padding="same"), keras.layers.MaxPooling2D(3)], 6),
        # Upsampling after downsampling adds no constraint.
        ([keras.layers.MaxPooling2D(2), keras.layers.Conv2DTranspose(2, 3, strides=2)], 2),
    ],
)
def test_size_multiple_from_layers(layers, expected):
    assert size_multiple(_stack(*layers)) == expected


def test_size_multiple_sees_nested_models_and_honours_a_declared_value():
    inner = _stack(keras.layers.MaxPooling2D(2), keras.layers.MaxPooling2D(2))
    outer = _stack(inner, keras.layers.MaxPooling2D(2))
    assert size_multiple(outer) == 8
    outer.size_multiple = 32
    assert size_multiple(outer) == 32


# ------------------------------------------------------------------ prediction


@pytest.mark.parametrize("shape", [(1, 1), (33, 47), (300, 260)])
def test_any_size_gives_a_mask_of_the_same_size(model, shape):
    image = random_image(*shape)
    probability = predict_probability(model, image, tile=128, overlap=32)
    assert probability.shape == shape and probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    mask = predict_mask(model, image, tile=128, overlap=32)
    assert mask.shape == shape and mask.dtype == bool


def test_gray_input_is_taken_as_rgb(model):
    gray = random_image(20, 30)[..., 0]
    expected = predict_probability(model, np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(predict_probability(model, gray), expected)


def _tile_edges(length, window, overlap, multiple=2):
    """Inner tile edges along one axis (image borders are not tile edges)."""
    layout = tile_layout(length, window=window, overlap=overlap, multiple=multiple)
    edges = {span.start for span in layout[1:]}
    edges |= {span.start + span.inside for span in layout[:-1]}
    return sorted(edges)


def test_tiles_discard_their_edges_when_the_overlap_exceeds_the_receptive_field(model):
    # The outer quarter of each overlap gets no weight: 32 // 4 = 8 > TINY_RADIUS, so no
    # prediction that saw a tile edge counts and tiling changes nothing.
    image = random_image(300, 260, seed=1)
    whole = predict_probability(model, image, tile=1024)
    tiled = predict_probability(model, image, tile=128, overlap=32)
    assert whole.std() > 0.05  # the model's output varies, so a blending error would show
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_tiled_equals_untiled_away_from_tile_edges_and_shows_no_seam(model):
    # With 16 // 4 = 4 < TINY_RADIUS, predictions that saw a tile edge get a little weight.
    height, width, window, overlap = 300, 260, 128, 16
    image = random_image(height, width, seed=1)
    whole = predict_probability(model, image, tile=1024)
    tiled = predict_probability(model, image, tile=window, overlap=overlap)

    row_edges = _tile_edges(height, window, overlap)
    column_edges = _tile_edges(width, window, overlap)
    assert row_edges and column_edges  # tiling did happen on both axes
    near_edge = np.zeros((height, width), dtype=bool)
    for edge in row_edges:
        near_edge[max(0, edge - TINY_RADIUS) : edge + TINY_RADIUS] = True
    for edge in column_edges:
        near_edge[:, max(0, edge - TINY_RADIUS) : edge + TINY_RADIUS] = True

    difference = np.abs(tiled - whole)
    assert difference[~near_edge].max() < 1e-5
    assert 0 < difference.max() < 0.02
    # No seam: across each tile edge, the step between neighbouring rows/columns is the
    # image's own step, not a jump.
    for edge in row_edges:
        tiled_step = tiled[edge] - tiled[edge - 1]
        whole_step = whole[edge] - whole[edge - 1]
        assert np.abs(tiled_step - whole_step).max() < 0.01
    for edge in column_edges:
        tiled_step = tiled[:, edge] - tiled[:, edge - 1]
        whole_step = whole[:, edge] - whole[:, edge - 1]
        assert np.abs(tiled_step - whole_step).max() < 0.01


@pytest.mark.parametrize("length", [1, 15, 16, 17, 100, 257, 1000])
@pytest.mark.parametrize("window, overlap", [(32, 0), (32, 8), (32, 16), (64, 40), (128, 100)])
def test_tile_layout_covers_the_axis_on_the_pooling_grid(length, window, overlap):
    layout = tile_layout(length, window=window, overlap=overlap, multiple=16)
    assert layout[0].start == 0 and layout[-1].pixels.stop == length
    for span in layout:
        assert span.start % 16 == 0 and len(span.weight) % 16 == 0
        assert 0 < span.inside <= len(span.weight)
    # Every pixel gets some weight, so normalising by the summed weight is safe.
    assert summed_weight(layout, length).min() > 0


def test_tiling_keeps_memory_bounded(model):
    # Neither a padded copy of the image nor a (height, width) weight image is made: numpy
    # memory during prediction is the float32 accumulator plus a few batches of tiles.
    image = random_image(2000, 1800)
    tile, batch_size = 256, 4
    predict_probability(model, image[:tile, :tile], tile=tile)  # build the network first
    tracemalloc.start()
    predict_probability(model, image, tile=tile, overlap=32, batch_size=batch_size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    accumulator = image.shape[0] * image.shape[1] * 4
    batch = batch_size * tile * tile * 3 * 4
    assert peak < accumulator + 4 * batch < image.nbytes


def test_tta_averages_the_four_flips(model):
    image = random_image(40, 30)
    expected = np.mean(
        [
            np.flip(predict_probability(model, np.flip(image, axes)), axes)
            for axes in [(), (0,), (1,), (0, 1)]
        ],
        axis=0,
    )
    np.testing.assert_allclose(predict_probability(model, image, tta=True), expected, atol=1e-6)


@pytest.mark.parametrize("count", [1, 3, 5])
def test_tta_on_a_batch_of_tiles_averages_each_tile_s_flips(model, count):
    # The flips of a batch run through the network together, in calls of at most
    # max(count, 4) images; each tile's average must equal its own four predictions.
    batch = np.stack([random_image(32, 48, seed=index) for index in range(count)])
    expected = np.mean(
        [
            np.flip(np.asarray(model(np.flip(batch, axes), training=False))[..., 0], axes)
            for axes in [(), (1,), (2,), (1, 2)]
        ],
        axis=0,
    )
    np.testing.assert_allclose(_predict_batch(model, batch, tta=True), expected, atol=1e-5)


def test_resize_scales_the_longer_side_and_maps_the_probability_back(model):
    image = random_image(37, 91)
    # By hand with OpenCV: longer side 45 (aspect kept: 37 * 45 / 91 = 18.3 -> 18 rows), padded
    # by reflection to the size multiple (2), predicted, cropped, and scaled back bilinearly.
    small = cv2.resize(image, (45, 18), interpolation=cv2.INTER_AREA)
    padded = np.pad(small, ((0, 0), (0, 1), (0, 0)), mode="reflect")
    expected = model.predict_on_batch(padded[None])[0, :, :45, 0]
    expected = cv2.resize(np.asarray(expected), (91, 37), interpolation=cv2.INTER_LINEAR)
    probability = predict_probability(model, image, resize=45)
    assert probability.shape == (37, 91)
    np.testing.assert_allclose(probability, np.clip(expected, 0, 1), atol=1e-6)
    # At its own longer side, scaling is the identity.
    square = random_image(64, 48)
    np.testing.assert_allclose(
        predict_probability(model, square, resize=64), predict_probability(model, square), atol=1e-6
    )


def test_a_model_with_a_working_size_scales_images_to_it_unless_told_otherwise():
    keras.utils.set_random_seed(4)
    model = build_model(base_filters=4, depth=2, inference={"working_size": 24, "threshold": 0.3})
    image = random_image(50, 70)
    np.testing.assert_array_equal(
        predict_probability(model, image), predict_probability(model, image, resize=24)
    )
    native = predict_probability(model, image, resize=0)
    assert not np.allclose(native, predict_probability(model, image))
    # Its threshold is the default cut too.
    probability = predict_probability(model, image)
    np.testing.assert_array_equal(predict_mask(model, image), probability > 0.3)
    np.testing.assert_array_equal(predict_mask(model, image, threshold=0.6), probability > 0.6)
    # A model that asks for flip averaging gets it unless told otherwise.
    model.inference["tta"] = True
    np.testing.assert_array_equal(
        predict_probability(model, image), predict_probability(model, image, tta=True)
    )
    np.testing.assert_array_equal(
        predict_probability(model, image, tta=False), probability
    )


def test_scales_average_the_predictions_at_each_factor_of_the_working_size():
    keras.utils.set_random_seed(5)
    model = build_model(
        base_filters=4, depth=2, inference={"working_size": 24, "scales": [0.5, 1.0, 1.5]}
    )
    image = random_image(30, 61)
    # Each factor is a resize to that longer side (checked by hand in the test above).
    at = {side: predict_probability(model, image, resize=side, scales=[1]) for side in (12, 24, 36)}
    np.testing.assert_allclose(predict_probability(model, image), np.mean(list(at.values()), axis=0),
                               atol=1e-6)
    np.testing.assert_allclose(predict_probability(model, image, scales=[1.5, 0.5]),
                               (at[12] + at[36]) / 2, atol=1e-6)
    # A model at the images' own scale: factors of the image's own longer side.
    model.inference["working_size"], model.inference["scales"] = None, [1.0, 0.5]
    own, half = (predict_probability(model, image, resize=side, scales=[1]) for side in (0, 30))
    np.testing.assert_allclose(predict_probability(model, image), (own + half) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="positive scales"):
        predict_probability(model, image, scales=[1.0, 0.0])


def test_overlap_must_leave_room_for_a_tile_step(model):
    with pytest.raises(ValueError, match="overlap"):
        predict_probability(model, random_image(300, 300), tile=64, overlap=63)


@pytest.mark.parametrize(
    "min_area, fill_holes, speck_kept, hole_kept",
    [(0, 0, True, True), (3, 0, True, True), (4, 0, False, True), (0, 4, True, True),
     (0, 5, True, False), (4, 5, False, False)],
)
def test_clean_mask_removes_specks_and_holes_below_the_given_areas(
    min_area, fill_holes, speck_kept, hole_kept
):
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:2, 1:4] = True  # a 3-pixel speck
    mask[5:11, 5:11] = True
    mask[7:9, 7:9] = False  # a 4-pixel hole
    cleaned = clean_mask(mask, min_area=min_area, fill_holes=fill_holes)
    assert cleaned[1, 2] == speck_kept
    assert (not cleaned[7, 7]) == hole_kept
    assert cleaned[5, 5]  # the object itself stays


def test_clean_mask_drops_parts_as_scikit_image_labels_them():
    # Foreground parts are 8-connected (touching at a corner is one part): the reference is
    # skimage.measure.label's parts and their sizes.
    rng = np.random.default_rng(1)
    blobs = ndimage.gaussian_filter(rng.random((60, 80)), 1.5) > 0.55
    labels = measure.label(blobs, connectivity=2)
    sizes = np.bincount(labels.ravel())
    assert len(np.unique(sizes[1:])) > 5  # parts of many sizes
    for area in (2, 5, 20, 60):
        expected = (sizes >= area)[labels] & blobs
        np.testing.assert_array_equal(clean_mask(blobs, min_area=area), expected)
    assert not clean_mask(np.zeros((5, 5), bool), min_area=3, fill_holes=3).any()
    assert clean_mask(np.ones((5, 5), bool), min_area=3, fill_holes=3).all()
    assert clean_mask(np.zeros((0, 5), bool), min_area=3, fill_holes=3).shape == (0, 5)
    with pytest.raises(ValueError, match="height, width"):
        clean_mask(np.ones((5, 5, 1), bool), min_area=3)


def test_clean_mask_fills_holes_as_scipy_does_and_not_gaps_open_to_the_edge():
    # A hole is background enclosed by foreground (4-connected, as segment.metrics counts
    # holes); scipy.ndimage.binary_fill_holes fills every one of them.
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((60, 80)), 2) > 0.5
    assert ndimage.binary_fill_holes(blobs).sum() > blobs.sum()  # it has holes to fill
    np.testing.assert_array_equal(clean_mask(blobs, fill_holes=blobs.size),
                                  ndimage.binary_fill_holes(blobs))
    np.testing.assert_array_equal(clean_mask(blobs, min_hole=0.999),
                                  ndimage.binary_fill_holes(blobs))
    # A 3-pixel notch cut open by the image's edge is not a hole, however small.
    notch = np.ones((10, 10), bool)
    notch[0, 4:7] = False
    np.testing.assert_array_equal(clean_mask(notch, fill_holes=100), notch)
    # Holes below the share are filled, larger ones stay: 4 and 9 pixels of 400.
    mask = np.ones((20, 20), bool)
    mask[3:5, 3:5] = False
    mask[10:13, 10:13] = False
    assert clean_mask(mask, min_hole=0.02).sum() == 400 - 9  # 2% is 8 pixels
    assert clean_mask(mask, min_hole=0.0225).sum() == 400 - 9  # 9 pixels is 2.25%: kept
    assert clean_mask(mask, min_hole=0.023).sum() == 400
    with pytest.raises(ValueError, match="share"):
        clean_mask(mask, min_hole=1.0)


def test_clean_mask_drops_parts_below_a_share_of_the_image():
    mask = np.zeros((20, 20), dtype=bool)
    mask[np.arange(1, 5), np.arange(1, 5)] = True  # 4 pixels touching at corners: one part
    mask[10:13, 1:4] = True  # 9 pixels
    mask[10:16, 10:16] = True  # 36 pixels
    # 1.5% of 400 pixels is 6: the diagonal part goes, the others stay.
    expected = mask.copy()
    expected[:5] = False
    np.testing.assert_array_equal(clean_mask(mask, min_part=0.015), expected)
    assert clean_mask(mask, min_part=0.0225).sum() == 45  # 9 pixels is 2.25%: kept
    assert clean_mask(mask, min_part=0.023).sum() == 36
    assert clean_mask(mask, min_area=10, min_part=0.015).sum() == 36  # the larger of the two
    with pytest.raises(ValueError, match="share"):
        clean_mask(mask, min_part=1.0)


def test_a_saved_smallest_part_is_the_default_for_masks():
    keras.utils.set_random_seed(6)
    model = build_model(base_filters=4, depth=2, inference={"min_part": 0.05})
    image = random_image(40, 50)
    probability = predict_probability(model, image)
    model.inference["threshold"] = float(np.median(probability))  # a mask in many parts
    raw = probability > model.inference["threshold"]
    labels = measure.label(raw, connectivity=2)
    sizes = np.bincount(labels.ravel())
    kept = np.flatnonzero(sizes >= 0.05 * raw.size)
    expected = np.isin(labels, kept[kept > 0])
    assert 0 < expected.sum() < raw.sum()  # something dropped, something kept
    np.testing.assert_array_equal(predict_mask(model, image), expected)
    np.testing.assert_array_equal(predict_mask(model, image, min_part=0.0), raw)


# ------------------------------------------------------------------ outputs


def test_render_outputs_kinds():
    image = random_image(24, 20)
    probability = np.linspace(0, 1, 24 * 20, dtype=np.float32).reshape(24, 20)
    mask = probability > 0.5
    outputs = render_outputs(image, probability, mask)
    assert outputs["mask"].dtype == np.uint8 and set(np.unique(outputs["mask"])) == {0, 255}
    assert outputs["prob"].shape == (24, 20) and outputs["prob"][-1, -1] == 255
    rgb = np.round(image * 255).astype(np.uint8)
    overlay = outputs["overlay"]
    assert overlay.shape == (24, 20, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay[~mask], rgb[~mask])  # background untouched
    assert (overlay[mask] != rgb[mask]).any(axis=-1).all()  # foreground tinted or outlined
    cutout = outputs["cutout"]
    assert cutout.shape == (24, 20, 4) and cutout.dtype == np.uint8
    assert (cutout[~mask] == 0).all() and (cutout[mask, 3] == 255).all()
    np.testing.assert_array_equal(cutout[mask, :3], rgb[mask])


# ------------------------------------------------------------------ model files


def test_load_segmenter_round_trip(tmp_path, model):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_segmenter(path)
    image = random_image(16, 16)
    np.testing.assert_allclose(
        predict_probability(loaded, image), predict_probability(model, image), atol=1e-6
    )


@keras.saving.register_keras_serializable(package="elsewhere")
class _Unregistered(keras.layers.Layer):
    def call(self, x):
        return x


def _lambda_model():
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Lambda(lambda x: x[..., :1])(inputs))


def _unknown_class_model():
    model = _stack(_Unregistered())
    # Forget the registration, as in a program that never imported the defining module.
    keras.saving.get_custom_objects().pop("elsewhere>_Unregistered")
    return model


def _write_file(content):
    def write(path):
        path.write_bytes(content)
    return write


def _write_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("absent.keras", None, "no such model file"),
        ("lambda.keras", lambda path: _lambda_model().save(path), "lambda"),
        ("unknown.keras", lambda path: _unknown_class_model().save(path), "_Unregistered"),
        ("junk.keras", _write_file(b"\x00garbage"), "not a Keras model file"),
        ("empty.keras", _write_file(b""), "not a Keras model file"),
        ("other.keras", _write_zip, "not a Keras model file"),
        ("model.h5", _write_file(b"\x89HDF\r\n"), "not a model file"),
    ],
)
def test_load_segmenter_refuses_with_one_line_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(DataError) as caught:
        load_segmenter(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and reason in message


def test_find_latest_model_by_mtime(tmp_path):
    assert find_latest_model(tmp_path / "runs") is None
    for name, mtime in [("a", 2_000_000), ("b", 3_000_000), ("c", 1_000_000)]:
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "model.keras").write_bytes(b"")
        os.utime(tmp_path / "runs" / name / "model.keras", (mtime, mtime))
    assert find_latest_model(tmp_path / "runs") == tmp_path / "runs" / "b" / "model.keras"


# ------------------------------------------------------------------ inputs


def test_collect_inputs(tmp_path):
    for relative in ["a.png", "b.JPG", "notes.txt", ".hidden.png", "sub/c.tif", "sub/d.png"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    folder = str(tmp_path)

    paths, unmatched = collect_inputs([folder])
    assert [p.name for p in paths] == ["a.png", "b.JPG"] and unmatched == []
    paths, _ = collect_inputs([folder], recursive=True)
    assert [p.name for p in paths] == ["a.png", "b.JPG", "c.tif", "d.png"]
    # A glob quoted past the shell, a duplicate, a literal missing file, a pattern matching nothing.
    paths, unmatched = collect_inputs(
        [f"{folder}/sub/*", f"{folder}/sub/d.png", f"{folder}/missing.png", f"{folder}/*.bmp"]
    )
    assert [p.name for p in paths] == ["c.tif", "d.png", "missing.png"]
    assert unmatched == [f"{folder}/*.bmp"]
    paths, _ = collect_inputs([f"{folder}/**/*.png"], recursive=True)
    assert sorted(p.name for p in paths) == ["a.png", "d.png"]


def test_integer_images_are_refused_rather_than_misread(model):
    with pytest.raises(ValueError, match="float image"):
        predict_probability(model, np.zeros((8, 8, 3), dtype=np.uint8))


def _square_scene(side=100, low=20, high=60):
    """A bright square on a dark, lightly noisy background; the square as a bool mask; and a
    soft prediction of it: sure only of a core 5 pixels inside the outline, unsure (0.3,
    below the threshold) of a band reaching 5 pixels past it, sure of background beyond."""
    rng = np.random.default_rng(0)
    truth = np.zeros((side, side), bool)
    truth[low:high, low:high] = True
    image = np.where(truth[..., None], 0.85, 0.15) + rng.normal(0, 0.02, (side, side, 3))
    probability = np.zeros((side, side), np.float32)
    probability[low - 5 : high + 5, low - 5 : high + 5] = 0.3
    probability[low + 5 : high - 5, low + 5 : high - 5] = 1.0
    return np.clip(image, 0, 1).astype(np.float32), truth, probability


def test_grabcut_refinement_moves_a_soft_outline_to_the_edge_in_the_image():
    image, truth, probability = _square_scene()
    assert np.count_nonzero(probability > 0.5) == 900  # the core alone: IoU 0.56
    refined = refine_mask(image, probability)
    assert refined.dtype == bool and refined.shape == truth.shape
    np.testing.assert_array_equal(refined, truth)
    np.testing.assert_array_equal(refine_mask(image, probability), refined)  # seeded

    np.testing.assert_array_equal(refine_mask(image.mean(axis=2), probability), truth)  # gray

    # A sure prediction is left as it is; so is one with nothing on one side.
    np.testing.assert_array_equal(refine_mask(image, truth.astype(np.float32)), truth)
    empty = np.zeros_like(probability)
    assert not refine_mask(image, empty).any()
    # A threshold above the sure limit moves it: 0.98 is not foreground at threshold 0.99.
    assert not refine_mask(image, np.where(truth, 0.98, 0.0).astype(np.float32), threshold=0.99).any()


def test_grabcut_refinement_gives_the_same_masks_on_several_threads_at_once():
    # Training refines validation masks on several threads (`FINISHING_WORKERS`). On this
    # scene GrabCut's answer depends on its random seed (5 pixels differ between seeds 0 and
    # 1), so each thread must seed its own generator for the masks to be repeatable.
    rng = np.random.default_rng(1)
    truth = np.zeros((96, 96), bool)
    truth[25:70, 20:75] = True
    image = np.where(truth[..., None], rng.random((96, 96, 3)) * 0.7 + 0.3,
                     rng.random((96, 96, 3)) * 0.7).astype(np.float32)
    probability = np.where(truth, 0.6, 0.4).astype(np.float32)
    probability[40:55, 40:55] = 1.0
    probability[:5] = 0.0
    alone = refine_mask(image, probability)
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda _: refine_mask(image, probability), range(16)))
    for mask in together:
        np.testing.assert_array_equal(mask, alone)


def test_grabcut_refinement_of_a_large_image_runs_scaled_down_and_maps_back():
    # 900 x 600: refined at 400 x 267, then scaled back to the image's own size.
    image, truth, probability = _square_scene(side=900, low=200, high=600)
    image, truth, probability = image[:600], truth[:600], probability[:600]
    probability[100:102, 50:850] = 1.0  # a sure line 2 pixels wide, under a pixel at 400
    assert max(image.shape[:2]) > REFINE_SIDE
    refined = refine_mask(image, probability)
    assert refined.shape == truth.shape
    assert refined[100:102, 50:850].all()  # the sure pixels stay as the network said
    refined[100:102] = False
    assert np.count_nonzero(refined & truth) / np.count_nonzero(refined | truth) > 0.98


def test_masks_are_refined_as_the_model_says_unless_told_otherwise():
    image, truth, probability = _square_scene()

    class Refining:
        inference = {"refine": True}

    core = probability > 0.5
    np.testing.assert_array_equal(finish_mask(Refining(), image, probability), truth)
    np.testing.assert_array_equal(finish_mask(Refining(), image, probability, refine=False), core)
    np.testing.assert_array_equal(finish_mask(object(), image, probability), core)  # default: off
    np.testing.assert_array_equal(finish_mask(object(), image, probability, refine=True), truth)
