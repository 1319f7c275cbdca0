"""Validation on grouped photographs: groups of near-copies found, held out whole, leaks shown."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from segment import data
from segment.imageio import DataError
from segment.metrics import iou
from segment.training import TrainConfig, train

SEQUENCES, FRAMES, SIDE = 12, 8, 48


def _sequences(folder, *, numbered):
    """Sequences of a moving object over one background each, written as an image/mask folder:
    stems `seqNN_FFFF` when `numbered`, else random hexadecimal names. Returns `(pairs, truth)`,
    the true sequence of each pair in `find_pairs` order."""
    # Textured backgrounds, as photographs have: a flat one would leave only the object to tell
    # two sequences apart.
    config = data.generator_config("medium", appearance_weights={"texture": 1.0, "photo": 1.0})
    rng = np.random.default_rng(0)
    images, masks, stems, truth = [], [], [], {}
    for sequence in range(SEQUENCES):
        frames, frame_masks = data.synthetic_sequence(data.sample_rng(11, sequence), FRAMES,
                                                      SIDE, config)
        for frame in range(FRAMES):
            stem = f"seq{sequence:02d}_{frame:04d}" if numbered else f"{rng.integers(16**10):010x}"
            stems.append(stem)
            truth[stem] = sequence
        images += list(frames)
        masks += list(frame_masks)
    data.write_folder(folder, images, masks, stems=stems)
    pairs = data.find_pairs(folder)
    return pairs, [truth[Path(image).stem] for image, _ in pairs]


def _partition(labels):
    """The set of groups, each a frozenset of indices: equal for equal partitions."""
    groups = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, set()).add(index)
    return {frozenset(members) for members in groups.values()}


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory):
    return _sequences(tmp_path_factory.mktemp("unnamed"), numbered=False)


@pytest.mark.parametrize("numbered", [True, False])
def test_auto_groups_recover_the_sequences_exactly(tmp_path, numbered):
    pairs, truth = _sequences(tmp_path, numbered=numbered)
    assert _partition(data.find_groups(pairs)) == _partition(truth)


def test_a_random_split_leaks_and_a_group_split_does_not(unnamed):
    pairs, truth = unnamed
    thumbnails = np.stack([data.thumbnail(image) for image, _ in pairs])
    index = {image: number for number, (image, _) in enumerate(pairs)}
    masks = [data.read_pair(*pair)[1] for pair in pairs]

    def leak(train, val):
        """Validation images with a near-duplicate in training, and the IoU of predicting each
        validation mask as its nearest training image's mask."""
        train_rows, val_rows = [index[i] for i, _ in train], [index[i] for i, _ in val]
        near = data.near_duplicates(thumbnails[val_rows], against=thumbnails[train_rows])
        distances = ((thumbnails[val_rows][:, None] - thumbnails[train_rows][None]) ** 2).sum(-1)
        nearest = np.array(train_rows)[distances.argmin(axis=1)]
        scores = [iou(masks[j], masks[v]) for v, j in zip(val_rows, nearest)]
        return len({v for v, _ in near}) / len(val_rows), float(np.mean(scores))

    shared, copied = leak(*data.split_pairs(pairs, val_fraction=0.25, seed=0))
    assert shared == 1.0 and copied > 0.8  # every validation image has a near-copy in training
    groups = data.find_groups(pairs, thumbnails=thumbnails)
    train, val = data.split_by_groups(pairs, groups, val_fraction=0.25, seed=0)
    assert {truth[index[i]] for i, _ in train}.isdisjoint({truth[index[i]] for i, _ in val})
    shared, copied = leak(train, val)
    assert shared == 0.0 and copied < 0.5


def test_photographs_numbered_in_turn_are_not_a_sequence(tmp_path):
    # Independent scenes named 0001, 0002, ...: numbered, but neighbours do not look alike.
    images, masks = data.synthetic_arrays(30, size=SIDE, difficulty="medium", seed=4)
    data.write_folder(tmp_path, images, masks, stems=[f"{n:04d}" for n in range(1, 31)])
    groups = data.find_groups(data.find_pairs(tmp_path))
    assert len(set(groups)) == 30


def test_frame_runs_by_hand():
    stems = ["bear_00001", "bear_00002", "bear_00003", "bear_00090", "bear_00091",
             "clip-7", "IMG_0005", "IMG_0006", "cat", "2", "3"]
    # bear: steps 1, 1, 87, 1 -> median 1, a gap of 87 starts a new run; `cat` has no number;
    # `clip-7` is alone; `2` and `3` are one nameless run.
    assert data.frame_runs(stems) == [[0, 1, 2], [3, 4], [6, 7], [9, 10]]


def test_run_names_by_hand():
    from segment.data.groups import run_name

    names = ["bear_00012", "clip3-017", "IMG 0001", "frame.12", "cat", "2"]
    assert [run_name(stem) for stem in names] == ["bear", "clip3", "IMG", "frame", "cat", ""]


def test_near_duplicates_by_hand():
    a = np.zeros(4, np.float32)
    b = np.array([0.2, 0.2, 0.2, 0.2], np.float32)  # RMS distance 0.2 from a
    c = np.array([1.0, 0.0, 0.0, 0.0], np.float32)  # 0.5 from a
    assert data.near_duplicates([a, b, c], limit=0.3) == [(0, 1)]
    assert data.near_duplicates([a, b, c], limit=0.51) == [(0, 1), (0, 2), (1, 2)]
    assert data.near_duplicates([c], against=[a, b], limit=0.46) == [(0, 1)]


def test_thumbnails_ignore_brightness_and_contrast(tmp_path):
    image = data.synthetic_arrays(1, size=SIDE, difficulty="medium", seed=2)[0][0]
    data.write_folder(tmp_path, [image, 0.5 * image + 0.2], [np.zeros((SIDE, SIDE, 1))] * 2)
    first, second = (data.thumbnail(image) for image, _ in data.find_pairs(tmp_path))
    assert np.sqrt(np.mean((first - second) ** 2)) < 0.05  # 8-bit rounding only


def test_split_by_groups_holds_out_whole_groups():
    pairs = [(f"i{n}", f"m{n}") for n in range(20)]
    groups = [n // 4 for n in range(20)]  # five groups of four
    train, val = data.split_by_groups(pairs, groups, val_fraction=0.2, seed=1, min_groups=1)
    assert len(val) == 4 and len(train) == 16
    held = {groups[pairs.index(pair)] for pair in val}
    assert len(held) == 1 and all(groups[pairs.index(pair)] not in held for pair in train)
    # One group of nearly everything: no split by groups exists.
    assert data.split_by_groups(pairs, [0] * 19 + [1], val_fraction=0.1, seed=0) in (
        None, (pairs[:19], pairs[19:]))
    assert data.split_by_groups(pairs, [0] * 20, val_fraction=0.1, seed=0) is None


def test_split_by_groups_takes_more_groups_up_to_a_quarter_of_the_images():
    pairs = [(f"i{n}", f"m{n}") for n in range(40)]
    groups = [n // 4 for n in range(40)]  # ten groups of four
    # A tenth is one group; eight groups would be 32 images, past a quarter (10): two groups.
    train, val = data.split_by_groups(pairs, groups, val_fraction=0.1, seed=1)
    assert len(val) == 8 and len({groups[pairs.index(pair)] for pair in val}) == 2
    train, val = data.split_by_groups(pairs, groups, val_fraction=0.1, seed=1, max_share=0.5)
    assert len(val) == 20  # five groups: the sixth would pass half
    # Independent images (each its own group): the share alone, as before.
    train, val = data.split_by_groups(pairs, list(range(40)), val_fraction=0.1, seed=1)
    assert len(val) == 4


def test_thin_groups_keeps_evenly_spaced_members_of_each_group():
    labels = ["a"] * 7 + ["b"] * 2 + ["a"] * 2
    # a's members are 0-6, 9, 10; three evenly spaced of nine: the first, the fifth, the last.
    assert data.thin_groups(labels, per_group=3) == [0, 4, 7, 8, 10]
    assert data.thin_groups(labels, per_group=20) == list(range(11))


def test_a_groups_file_names_every_image(tmp_path):
    pairs = [(Path(f"/d/images/{stem}.png"), None) for stem in ("a1", "a2", "b1")]
    csv = tmp_path / "groups.csv"
    csv.write_text("stem,group\na1,cat\na2,cat\nb1,dog\n")
    assert data.read_groups_file(csv, pairs) == [0, 0, 1]
    csv.write_text("a1,cat\na2,cat\n")
    with pytest.raises(DataError, match=r"groups.csv: no group for 1 image\(s\): b1"):
        data.read_groups_file(csv, pairs)
    csv.write_text("a1,cat,extra\n")
    with pytest.raises(DataError, match="line 1: expected stem,group"):
        data.read_groups_file(csv, pairs)
    with pytest.raises(DataError, match="cannot read the groups file"):
        data.read_groups_file(tmp_path / "missing.csv", pairs)


def _tiny(folder, out, **settings):
    return TrainConfig(data=str(folder), out=str(out), epochs=1, steps_per_epoch=2, size=32,
                       batch_size=4, base_filters=4, depth=2, click_minutes=0, **settings)


def test_training_holds_out_whole_groups_and_records_how(unnamed, tmp_path, capsys):
    folder = Path(unnamed[0][0][0]).parents[1]
    _, results = train(_tiny(folder, tmp_path / "auto"), verbose=0)
    split = results["validation_split"]
    assert split["method"].startswith("whole groups")
    # A tenth is two sequences; a quarter of the images (three sequences) caps the eight
    # groups validation would take.
    assert (split["train_groups"], split["val_groups"]) == (SEQUENCES - 3, 3)
    assert split["val_images"] == 3 * FRAMES and split["val_near_duplicates"] == 0
    assert results["iou_standard_error_groups"] == 3  # over the three held-out sequences
    assert "validation: 24 of 96 images (3 of 12 groups)" in capsys.readouterr().out
    # The random split of earlier versions, on request: every validation image leaks, and the
    # run says so.
    _, results = train(_tiny(folder, tmp_path / "none", groups="none"), verbose=0)
    split = results["validation_split"]
    assert split["val_near_duplicates"] == split["val_images"] == 10
    assert "warning: 10 of 10 validation images have a near-duplicate" in capsys.readouterr().out


def test_validation_keeps_evenly_spaced_frames_of_each_held_out_group(unnamed, monkeypatch):
    from segment.training.inputs import folder_pairs

    pairs, truth = unnamed
    monkeypatch.setattr(data, "VAL_IMAGES_PER_GROUP", 3)
    split = folder_pairs(TrainConfig(data=str(Path(pairs[0][0]).parents[1])))
    sequence = dict(zip((image for image, _ in pairs), truth))
    held = {sequence[image] for image, _ in split.val}
    assert len(held) == 3 and len(split.val) == 9 and split.set_aside == 15
    assert all(sequence[image] not in held for image, _ in split.train)  # nothing set aside trains
    assert len(split.train) == 96 - 24
    assert len(set(split.val_labels)) == 3 and split.summary()["set_aside"] == 15
    assert split.describe().startswith("validation: 9 of 96 images (3 of 12 groups)")


def test_the_train_command_takes_a_groups_file(unnamed, tmp_path, capsys):
    pairs, truth = unnamed
    csv = tmp_path / "groups.csv"
    csv.write_text("".join(f"{Path(image).stem},{sequence}\n"
                           for (image, _), sequence in zip(pairs, truth)))
    folder = Path(pairs[0][0]).parents[1]
    train_command = importlib.import_module("segment.cli.train")
    argv = ["--data", str(folder), "--out", str(tmp_path / "run"), "--groups", str(csv),
            "--epochs", "1", "--steps-per-epoch", "2", "--size", "32", "--batch-size", "4",
            "--base-filters", "4", "--depth", "2", "--click-minutes", "0"]
    assert train_command.main(argv) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation_split"]["method"] == f"whole groups from {csv}"
    assert metrics["validation_split"]["val_near_duplicates"] == 0
    csv.write_text("nothing,0\n")
    assert train_command.main([*argv[:3], str(tmp_path / "other"), *argv[4:]]) == 2
    assert "names no image of the training folder" in capsys.readouterr().err


def test_run_folders_from_before_groups_keep_their_random_split(tmp_path):
    settings = json.loads(json.dumps(TrainConfig().__dict__))
    del settings["groups"]
    (tmp_path / "config.json").write_text(json.dumps(settings))
    assert TrainConfig.from_json(tmp_path / "config.json").groups == "none"


def test_a_jpeg_s_thumbnail_decoded_small_is_the_whole_image_s(tmp_path):
    # Large JPEGs are decoded at a quarter of their size for the thumbnail: the same thumbnail
    # as the lossless copy's, within JPEG's own error.
    import cv2

    image = data.synthetic_arrays(1, size=(300, 400), difficulty="varied", seed=8)[0][0]
    pixels = cv2.cvtColor(np.round(image * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "photo.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(tmp_path / "photo.png"), pixels)
    jpeg, png = data.thumbnail(tmp_path / "photo.jpg"), data.thumbnail(tmp_path / "photo.png")
    assert np.sqrt(np.mean((jpeg - png) ** 2)) < 0.05


def test_pasting_is_stronger_where_the_images_come_in_groups(unnamed, tmp_path):
    from segment.training import resolve_config
    from segment.training.inputs import folder_pairs

    folder = Path(unnamed[0][0][0]).parents[1]
    grouped = folder_pairs(TrainConfig(data=str(folder)))
    assert grouped.grouped  # 12 sequences of 8 frames
    assert not folder_pairs(TrainConfig(data=str(folder), groups="none")).grouped
    pairs = (grouped.train, grouped.val)
    config = TrainConfig(data=str(folder), size=32)
    assert resolve_config(config, pairs, grouped=True).paste == data.GROUPED_PASTE_PROBABILITY
    assert resolve_config(config, pairs, grouped=False).paste == data.PASTE_PROBABILITY
    given = TrainConfig(data=str(folder), size=32, paste=0.25)
    assert resolve_config(given, pairs, grouped=True).paste == 0.25
    # Independent photographs, each its own group, are not grouped.
    images, masks = data.synthetic_arrays(20, size=SIDE, difficulty="medium", seed=4)
    data.write_folder(tmp_path / "own", images, masks)
    assert not folder_pairs(TrainConfig(data=str(tmp_path / "own"))).grouped
