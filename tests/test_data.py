import cv2
import numpy as np
import pytest
import skimage.measure
import skimage.morphology
from skimage.morphology import erosion

from segment import data
from segment.imageio import DataError, write_png

# --------------------------------------------------------------------------------------------
# Generator settings


def test_generator_config_overrides_and_errors():
    config = data.generator_config("hard", noise_std=[0, 0], object_count=(1, 1))
    assert config.noise_std == (0, 0) and config.object_count == (1, 1)
    assert config.blur_sigma == data.PRESETS["hard"].blur_sigma
    with pytest.raises(ValueError, match="Unknown difficulty 'extreme'"):
        data.generator_config("extreme")
    with pytest.raises(ValueError, match=r"Unknown generator settings \['noise'\]"):
        data.generator_config(noise=0.1)
    with pytest.raises(ValueError, match=r"shape_weights: unknown kinds \['hexagon'\]"):
        data.generator_config(shape_weights={"hexagon": 1.0})
    with pytest.raises(ValueError, match="blur_sigma: expected \\(low, high\\)"):
        data.generator_config(blur_sigma=(2.0, 1.0))


# --------------------------------------------------------------------------------------------
# Synthetic samples


@pytest.mark.parametrize("difficulty", list(data.DIFFICULTIES))
def test_samples_have_documented_types_and_ranges(difficulty):
    images, masks = data.synthetic_arrays(6, size=(40, 56), difficulty=difficulty, seed=1)
    assert images.shape == (6, 40, 56, 3) and images.dtype == np.float32
    assert masks.shape == (6, 40, 56, 1) and masks.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert set(np.unique(masks)) == {0.0, 1.0}


def test_same_seed_same_samples_in_any_order():
    images, masks = data.synthetic_arrays(4, size=48, difficulty="hard", seed=3)
    again_images, again_masks = data.synthetic_arrays(4, size=48, difficulty="hard", seed=3)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(masks, again_masks)
    # Sample 2 on its own equals sample 2 of the batch: no hidden state between samples.
    alone = data.make_sample(data.sample_rng(3, 2), 48, data.generator_config("hard"))
    np.testing.assert_array_equal(alone[0], images[2])
    other_images, _ = data.synthetic_arrays(4, size=48, difficulty="hard", seed=4)
    assert not np.allclose(images, other_images)


def test_mask_is_exactly_where_the_image_differs_from_a_flat_background():
    # "easy" has flat colours and no degradation; objects differ from the background by >= 0.4.
    config = data.generator_config("easy", object_count=(1, 4))
    for index in range(12):
        image, mask = data.make_sample(data.sample_rng(0, index), 48, config)
        background_pixels = image[mask[..., 0] == 0]
        colours, counts = np.unique(background_pixels, axis=0, return_counts=True)
        background = colours[np.argmax(counts)]
        differs = np.any(image != background, axis=-1)
        np.testing.assert_array_equal(differs, mask[..., 0] == 1, err_msg=f"sample {index}")
        assert 0 < mask.mean() < 1


def test_rings_have_holes_and_disks_do_not():
    def euler_numbers(shape_kind):
        config = data.generator_config(
            "easy", shape_weights={shape_kind: 1.0}, object_count=(1, 1), object_size=(0.15, 0.2)
        )
        results = []
        for index in range(20):
            mask = data.make_sample(data.sample_rng(0, index), 64, config)[1][..., 0] > 0
            border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            results.append((skimage.measure.euler_number(mask, connectivity=2), border.any()))
        return results

    rings = [euler for euler, touches_border in euler_numbers("ring") if not touches_border]
    assert len(rings) >= 3, "too few rings away from the border to check"
    assert rings == [0] * len(rings)  # one component with one hole
    assert [euler for euler, _ in euler_numbers("disk")] == [1] * 20


@pytest.mark.parametrize("kind", data.SHAPE_KINDS)
def test_every_shape_kind_draws_an_object_in_the_image(kind):
    config = data.generator_config("easy", shape_weights={kind: 1.0}, object_count=(1, 1))
    areas = [data.make_sample(data.sample_rng(1, index), 64, config)[1].mean()
             for index in range(8)]
    assert min(areas) >= 0 and max(areas) < 0.9 and np.mean(areas) > 0.01


def test_holed_objects_have_holes_and_silhouettes_are_one_thin_limbed_part():
    def masks(kind):
        config = data.generator_config(
            "easy", shape_weights={kind: 1.0}, object_count=(1, 1), object_size=(0.12, 0.15)
        )
        return [data.make_sample(data.sample_rng(2, index), 128, config)[1][..., 0] > 0
                for index in range(16)]

    # Euler number = parts - holes; an object away from the border with a hole has at most 0.
    holed = [skimage.measure.euler_number(mask, connectivity=2) for mask in masks("holed")]
    assert sum(euler <= 0 for euler in holed) >= 6
    inside = [mask for mask in masks("silhouette")
              if not np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).any()]
    assert len(inside) >= 4, "too few silhouettes away from the border to check"
    for mask in inside:
        assert skimage.measure.label(mask, connectivity=2).max() == 1
        # Thin limbs: an opening by a 5x5 square removes a visible part of the outline.
        opened = skimage.morphology.opening(mask, np.ones((5, 5), bool))
        assert (mask & ~opened).sum() > 0.03 * mask.sum()


def test_mixed_stream_draws_from_every_preset_reproducibly():
    config = data.generator_config("mixed", object_count=(1, 1))
    assert isinstance(config, data.Mixture)
    assert {name: part[1].object_count for name, part in config.parts.items()} == dict.fromkeys(
        data.MIXTURES["mixed"], (1, 1))
    picked = [config.pick(data.sample_rng(0, index)) for index in range(200)]
    assert {id(part[1]) for part in config.parts.values()} == {id(c) for c in picked}
    first = data.synthetic_arrays(3, size=32, difficulty="mixed", seed=5)
    second = data.synthetic_arrays(3, size=32, difficulty="mixed", seed=5)
    np.testing.assert_array_equal(first[0], second[0])


def test_noise_functions_add_what_they_say():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200, 3), 0.5, np.float32)
    noisy = data.add_gaussian_noise(rng, flat.copy(), 0.1)
    assert abs(noisy.mean() - 0.5) < 0.01 and abs(noisy.std() - 0.1) < 0.01
    impulses = data.add_salt_and_pepper(rng, flat.copy(), 0.05)
    changed = np.any(impulses != 0.5, axis=-1)
    assert abs(changed.mean() - 0.05) < 0.005
    assert set(np.unique(impulses[changed])) == {0.0, 1.0}
    ramp = np.linspace(0, 1, 300, dtype=np.float32).reshape(10, 10, 3)
    washed_out = data.scale_contrast(ramp, 0.5)
    np.testing.assert_allclose(washed_out.std(), ramp.std() / 2, rtol=1e-5)
    np.testing.assert_allclose(washed_out.mean(), ramp.mean(), rtol=1e-5)


def test_jpeg_quality_compresses_and_100_leaves_the_image_alone():
    clean = data.generator_config("medium", noise_std=(0, 0), salt_pepper=(0, 0))
    compressed = data.generator_config("medium", noise_std=(0, 0), salt_pepper=(0, 0),
                                       jpeg_quality=(10, 10))
    image, _ = data.make_sample(data.sample_rng(0, 1), 64, clean)
    jpeg, _ = data.make_sample(data.sample_rng(0, 1), 64, compressed)
    # The same scene, only compressed: close overall, but not equal.
    assert 0.002 < np.abs(image - jpeg).mean() < 0.05


def test_dataset_stream_equals_synthetic_arrays():
    dataset = data.synthetic_dataset(size=32, batch_size=3, difficulty="hard", seed=7)
    assert dataset.element_spec[0].shape == (3, 32, 32, 3)
    assert dataset.element_spec[1].shape == (3, 32, 32, 1)
    batches = list(dataset.take(3).as_numpy_iterator())
    images = np.concatenate([images for images, _ in batches])
    masks = np.concatenate([masks for _, masks in batches])
    assert images.dtype == np.float32 and masks.dtype == np.float32
    expected_images, expected_masks = data.synthetic_arrays(9, size=32, difficulty="hard", seed=7)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(masks, expected_masks)


# --------------------------------------------------------------------------------------------
# Folder reading


def _write_pair(folder, stem, *, image_shape=(20, 30), image_ext=".png", mask=None):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    cv2.imwrite(
        str(folder / "images" / f"{stem}{image_ext}"),
        rng.integers(0, 256, (*image_shape, 3), dtype=np.uint8),
    )
    if mask is None:
        mask = np.zeros(image_shape, dtype=np.uint8)
        mask[: image_shape[0] // 2] = 255
    write_png(folder / "masks" / f"{stem}.png", mask)


def test_find_pairs_pairs_by_stem_and_skips_other_files(tmp_path):
    for stem in ("b", "a", "c"):
        _write_pair(tmp_path, stem, image_ext=".jpg" if stem == "b" else ".png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / "._a.png").write_bytes(b"macOS resource fork")
    pairs = data.find_pairs(tmp_path)
    assert [(image.name, mask.name) for image, mask in pairs] == [
        ("a.png", "a.png"),
        ("b.jpg", "b.png"),
        ("c.png", "c.png"),
    ]


def _no_masks_folder(root):
    (root / "images").mkdir(parents=True)


def _empty_folder(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()


def _unpaired_images(root):
    for stem in "abcdefg":
        _write_pair(root, stem)
    for stem in "bcdefg":
        (root / "masks" / f"{stem}.png").unlink()


def _unpaired_mask(root):
    _write_pair(root, "a")
    _write_pair(root, "zz")
    (root / "images" / "zz.png").unlink()


def _duplicate_stems(root):
    _write_pair(root, "a")
    _write_pair(root, "a", image_ext=".jpg")


def _two_masks_one_name(root):
    _write_pair(root, "a")
    cv2.imwrite(str(root / "masks" / "a.jpg"), np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    "make_folder, message",
    [
        (lambda root: None, "no such folder"),
        (_no_masks_folder, "missing masks/ subfolder"),
        (lambda root: (root / "masks").mkdir(parents=True), "missing images/ subfolder"),
        (_empty_folder, "no images"),
        (_unpaired_images, r"6 image\(s\) without a mask in masks/: b, c, d, e, f and 1 more"),
        (_unpaired_mask, r"1 mask\(s\) without an image in images/: zz"),
        (_duplicate_stems, r"several images share a name.*a \(a.jpg, a.png\)"),
        (_two_masks_one_name, r"several masks share a name.*a \(a.jpg, a.png\)"),
    ],
)
def test_find_pairs_errors(tmp_path, make_folder, message):
    root = tmp_path / "dataset"
    make_folder(root)
    with pytest.raises(DataError, match=message):
        data.find_pairs(root)


def _corrupt_image(root):
    _write_pair(root, "a")
    (root / "images" / "a.png").write_bytes(b"\x89PNG but then garbage" * 10)
    return "a.png: not a readable image"


def _empty_image(root):
    _write_pair(root, "a")
    (root / "images" / "a.png").write_bytes(b"")
    return r"a.png: empty file \(0 bytes\)"


def _size_mismatch(root):
    _write_pair(root, "a", image_shape=(20, 30), mask=np.zeros((20, 31), np.uint8))
    return r"images/a.png is 30x20 but its mask .*masks/a.png is 31x20"


def _grey_mask(root):
    _write_pair(
        root, "a", mask=np.array([[0, 128], [255, 0]], np.uint8).repeat(10, 0).repeat(15, 1)
    )
    return r"masks/a.png: mask is not binary \(values 0, 128, 255\)"


@pytest.mark.parametrize("make_folder", [_corrupt_image, _empty_image, _size_mismatch, _grey_mask])
def test_bad_files_fail_on_loading_with_their_name(tmp_path, make_folder):
    message = make_folder(tmp_path)
    pairs = data.find_pairs(tmp_path)
    with pytest.raises(DataError, match=message):
        data.load_pairs(pairs)
    # The training pipeline reads everything up front: it fails before yielding anything.
    with pytest.raises(DataError, match=message):
        data.folder_dataset(pairs, size=16, batch_size=1)


def test_threshold_accepts_multi_valued_masks(tmp_path):
    _grey_mask(tmp_path)
    _, masks = data.load_pairs(data.find_pairs(tmp_path), threshold=0.6)
    assert masks[0].shape == (20, 30, 1)
    assert masks[0][:10, :15].max() == 0 and masks[0][10:, :15].min() == 1  # only 255 is above 0.6


def test_dataset_splits(tmp_path):
    for split in ("train", "test"):
        _write_pair(tmp_path / "splits" / split, "a")
    assert data.dataset_splits(tmp_path / "splits") == {
        "train": tmp_path / "splits" / "train",
        "test": tmp_path / "splits" / "test",
    }
    _write_pair(tmp_path / "flat", "a")
    assert data.dataset_splits(tmp_path / "flat") == {"all": tmp_path / "flat"}
    (tmp_path / "neither").mkdir()
    with pytest.raises(DataError, match="expected images/ and masks/ subfolders, or train/"):
        data.dataset_splits(tmp_path / "neither")
    with pytest.raises(DataError, match="no such folder"):
        data.dataset_splits(tmp_path / "missing")


def test_split_pairs_is_seeded_disjoint_and_never_empty():
    pairs = [(f"{i}.png", f"{i}.png") for i in range(30)]
    train, val = data.split_pairs(pairs, val_fraction=0.2, seed=1)
    assert len(val) == 6 and sorted(train + val) == sorted(pairs)
    assert data.split_pairs(pairs, val_fraction=0.2, seed=1) == (train, val)
    assert data.split_pairs(pairs, val_fraction=0.2, seed=2) != (train, val)
    assert [len(part) for part in data.split_pairs(pairs[:2], val_fraction=0.01)] == [1, 1]
    assert [len(part) for part in data.split_pairs(pairs[:1])] == [1, 0]


def test_written_folder_reads_back_identically(tmp_path):
    images, masks = data.synthetic_arrays(5, size=(24, 40), seed=2)
    data.write_folder(tmp_path, images, masks)
    pairs = data.find_pairs(tmp_path)
    assert [image.name for image, _ in pairs] == [f"0000{i}.png" for i in range(5)]
    read_images, read_masks = data.load_pairs(pairs)
    # PNGs hold 8 bits: the images come back as the same 8-bit levels.
    np.testing.assert_array_equal(np.round(np.stack(read_images) * 255), np.round(images * 255))
    np.testing.assert_array_equal(np.stack(read_masks), masks)
    resized_images, resized_masks = data.load_pairs(pairs, size=16)
    assert resized_images.shape == (5, 16, 16, 3) and resized_masks.shape == (5, 16, 16, 1)
    assert set(np.unique(resized_masks)) == {0.0, 1.0}  # nearest neighbour: still binary


# --------------------------------------------------------------------------------------------
# Folder pipeline


def _mask_like_images(folder):
    """Images whose content is their own asymmetric mask (an off-centre L), of several sizes."""
    images, masks = [], []
    for height, width in [(60, 60), (48, 80), (90, 50)]:
        mask = np.zeros((height, width, 1), dtype=np.float32)
        mask[height // 5 : height * 3 // 4, width // 6 : width // 3] = 1
        mask[height * 3 // 5 : height * 3 // 4, width // 6 : width * 3 // 4] = 1
        images.append(np.repeat(mask, 3, axis=2))
        masks.append(mask)
    return data.write_folder(folder, images, masks)


def test_augmentation_moves_image_and_mask_together(tmp_path, monkeypatch):
    # Pasting softens the pasted object's edge by a pixel: tested on its own below.
    monkeypatch.setattr("segment.data.streams.PASTE_PROBABILITY", 0.0)
    pairs = _mask_like_images(tmp_path)
    dataset = data.folder_dataset(pairs, size=32, batch_size=4, seed=3)
    assert dataset.element_spec[0].shape == (4, 32, 32, 3)
    images, masks = (np.concatenate(parts) for parts in zip(*dataset.take(4).as_numpy_iterator()))
    assert masks.mean() > 0.05
    square = np.ones((3, 3), dtype=bool)
    for image, mask in zip(images, masks):
        grey = image.mean(axis=-1)
        # Brightness/contrast move both levels the same way: split at their midpoint.
        foreground = grey > (grey.min() + grey.max()) / 2
        mask = mask[..., 0] > 0.5
        # Bilinear (image) and nearest-neighbour (mask) resizing may disagree by one pixel at
        # the L's edges; everywhere else they must agree exactly.
        inside = erosion(mask, square) | erosion(~mask, square)
        np.testing.assert_array_equal(foreground[inside], mask[inside])


def test_paste_lays_the_other_object_over_the_image_and_unites_the_masks():
    from segment.data.augment import paste_foreground
    from segment.imageio import VOID_LABEL

    image, other = np.zeros((20, 20, 3), np.float32), np.ones((20, 20, 3), np.float32)
    mask, other_mask = np.zeros((20, 20, 1), np.float32), np.zeros((20, 20, 1), np.float32)
    mask[2:8, 2:8] = 1
    mask[10:14, 10:12] = VOID_LABEL  # under the pasted object: foreground now
    mask[16:19, 2:5] = VOID_LABEL  # elsewhere: stays void
    other_mask[9:17, 9:17] = 1
    other_mask[0:3, 15:18] = VOID_LABEL  # the other image's void is not pasted
    pasted, union = paste_foreground(image, mask, other, other_mask)
    expected = mask.copy()
    expected[9:17, 9:17] = 1
    np.testing.assert_array_equal(union, expected)
    np.testing.assert_allclose(pasted[11:15, 11:15], 1.0, atol=0.01)  # inside: the object
    assert np.all(pasted[:6, :6] < 0.01) and np.all(pasted[0:3, 15:18] < 0.01)  # elsewhere: image
    assert 0.3 < pasted[12, 9, 0] < 0.7  # the edge: half and half


def test_the_stream_pastes_objects_into_the_share_of_samples_asked(tmp_path):
    pairs = _mask_like_images(tmp_path)

    def masks(paste):
        return next(data.folder_dataset(pairs, size=32, batch_size=64, seed=0, paste=paste)
                    .as_numpy_iterator())[1]

    plain = masks(0.0)
    # Each sample is drawn before its paste: without one it is the plain stream's sample, with
    # one it has all of that sample's foreground and more.
    for paste, low, high in ((0.8, 0.65, 0.95), (None, 0.3, 0.7)):  # None: PASTE_PROBABILITY
        pasted = masks(paste)
        changed = [not np.array_equal(a, b) for a, b in zip(pasted, plain)]
        assert low < np.mean(changed) < high  # of 64 samples: 51 +- 3, 32 +- 4
        assert all((a >= b).all() for a, b in zip(pasted, plain))


def test_folder_dataset_is_seeded(tmp_path):
    pairs = _mask_like_images(tmp_path)

    def first_batch(seed):
        return next(
            data.folder_dataset(pairs, size=24, batch_size=3, seed=seed).as_numpy_iterator()
        )

    np.testing.assert_array_equal(first_batch(5)[0], first_batch(5)[0])
    assert not np.array_equal(first_batch(5)[0], first_batch(6)[0])


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_streams_run_without_the_autotuner(tmp_path, source):
    # tf.data's autotuner thread can keep a finished iterator alive for up to a minute, and
    # `fit` waits for it on returning: the training streams use fixed parallelism instead.
    if source == "synthetic":
        stream = data.synthetic_dataset(size=16, batch_size=2)
    else:
        stream = data.folder_dataset(_mask_like_images(tmp_path), size=16, batch_size=2)
    assert stream.options().autotune.enabled is False
    assert next(iter(stream))[0].shape == (2, 16, 16, 3)


def _batches(dataset, count):
    return [batch for batch, _ in zip(dataset.as_numpy_iterator(), range(count))]


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_worker_shards_side_by_side_are_the_whole_stream(tmp_path, source):
    # Two workers each read their half of every batch of 4, resumed at sample 8: stacked row
    # by row they must be the unsharded stream's batches, and share no sample.
    if source == "synthetic":
        def stream(shard):
            return data.synthetic_dataset(size=16, batch_size=4, seed=2, start=8, shard=shard)
    else:
        pairs = _mask_like_images(tmp_path)

        def stream(shard):
            return data.folder_dataset(pairs, size=16, batch_size=4, seed=2, start=8, shard=shard)

    whole = _batches(stream(None), 3)
    first, second = _batches(stream((0, 2)), 3), _batches(stream((1, 2)), 3)
    for batch, a, b in zip(whole, first, second):
        assert a[0].shape == (2, 16, 16, 3)
        np.testing.assert_array_equal(np.concatenate([a[0], b[0]]), batch[0])
        np.testing.assert_array_equal(np.concatenate([a[1], b[1]]), batch[1])


def test_stream_positions_shard_rows_of_each_global_batch():
    positions, rows = data.stream_positions(12, batch_size=6, shard=(2, 3))
    assert rows == 2
    assert list(positions.take(6).as_numpy_iterator()) == [16, 17, 22, 23, 28, 29]
    with pytest.raises(ValueError, match="multiple of the number of workers"):
        data.stream_positions(0, batch_size=5, shard=(0, 2))


def test_folder_dataset_single_pass_without_augmentation_is_the_prediction_view(tmp_path):
    images, masks = data.synthetic_arrays(5, size=(30, 20), seed=4)
    pairs = data.write_folder(tmp_path, images, masks)
    batches = list(
        data.folder_dataset(
            pairs, size=16, batch_size=2, augment=False, repeat=False
        ).as_numpy_iterator()
    )
    assert [len(images) for images, _ in batches] == [2, 2, 1]  # every pair once, in order
    # By hand: the longer side (30) scaled to 16 keeps the aspect ratio (20 -> 10.7 -> 11
    # columns), top left on the canvas, the rest mirrored as prediction pads.
    read_images, read_masks = data.load_pairs(pairs)
    expected_images = [
        np.pad(cv2.resize(image, (11, 16), interpolation=cv2.INTER_AREA), ((0, 0), (0, 5), (0, 0)),
               mode="reflect")
        for image in read_images
    ]
    expected_masks = [
        np.pad(cv2.resize(mask, (11, 16), interpolation=cv2.INTER_NEAREST_EXACT)[..., None],
               ((0, 0), (0, 5), (0, 0)), mode="reflect")
        for mask in read_masks
    ]
    np.testing.assert_allclose(
        np.concatenate([b[0] for b in batches]), np.stack(expected_images), atol=0.5 / 255
    )
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.stack(expected_masks))
