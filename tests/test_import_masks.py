"""Masks from COCO and LabelMe polygon exports (`segment.data.polygons`, `import-masks`): each
mask against cv2 drawing the same points here, RLE against an encoder written here, the
command end to end and its refusals."""

import base64
import json
from collections import Counter

import cv2
import numpy as np
import pytest

from segment.cli.import_masks import main
from segment.data import (
    find_pairs,
    read_annotations,
    read_coco,
    read_labelme,
    rle_counts_from_string,
)
from segment.imageio import DataError, encode_png, read_image, read_mask, write_png

HEIGHT, WIDTH = 40, 60


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _polygons(shape, *polygons):
    """The reference: each polygon filled on its own with cv2.fillPoly, unioned."""
    canvas = np.zeros(shape, np.uint8)
    for points in polygons:
        cv2.fillPoly(canvas, [np.round(np.reshape(points, (-1, 2))).astype(np.int32)], 255)
    return canvas > 0


def _coco(annotations, images=None, categories=("cat", "dog", "hole")):
    images = images or [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
                        {"id": 2, "file_name": "sub/b.png", "width": 30, "height": 20}]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)]}


def _annotation(segmentation, category=1, image=1):
    return {"image_id": image, "category_id": category, "segmentation": segmentation,
            "iscrowd": int(isinstance(segmentation, dict))}


SQUARE = [5, 5, 25, 5, 25, 25, 5, 25]
TRIANGLE = [15.4, 15, 50.6, 18, 30, 35.5]  # overlaps SQUARE
HOLE = [10, 10, 18, 10, 18, 18, 10, 18]


def _by_stem(records):
    return {record.stem: record for record in records}


def test_coco_polygons_of_one_annotation_are_unioned(tmp_path):
    path = _write(tmp_path / "coco.json", _coco([_annotation([SQUARE, TRIANGLE])]))
    records = _by_stem(read_coco(path))
    assert sorted(records) == ["a", "b"]
    expected = _polygons((HEIGHT, WIDTH), SQUARE, TRIANGLE)
    assert expected[20, 20]  # in both: one cv2.fillPoly call with both would leave it empty
    np.testing.assert_array_equal(records["a"].mask, expected)
    assert records["a"].shape == (HEIGHT, WIDTH)
    assert records["b"].empty and records["b"].mask.shape == (20, 30)
    assert not records["b"].mask.any()


def test_a_background_category_cuts_a_hole_and_classes_filter(tmp_path):
    annotations = [_annotation([SQUARE], 1), _annotation([TRIANGLE], 2), _annotation([HOLE], 3)]
    path = _write(tmp_path / "coco.json", _coco(annotations))
    square, triangle, hole = (_polygons((HEIGHT, WIDTH), p) for p in (SQUARE, TRIANGLE, HOLE))

    mask = _by_stem(read_coco(path, background="hole"))["a"].mask
    np.testing.assert_array_equal(mask, (square | triangle) & ~hole)
    # Without --background the "hole" category is foreground like any other.
    np.testing.assert_array_equal(_by_stem(read_coco(path))["a"].mask, square | triangle | hole)
    mask = _by_stem(read_coco(path, classes=["dog"], background="hole"))["a"].mask
    np.testing.assert_array_equal(mask, triangle & ~hole)


def test_an_unknown_class_is_refused_with_the_names_present(tmp_path):
    path = _write(tmp_path / "coco.json", _coco([_annotation([SQUARE])]))
    with pytest.raises(DataError, match=r"coco.json: no category or label named bird; "
                                        r"present: cat, dog, hole$"):
        read_coco(path, classes=["cat", "bird"])


def _rle_counts(mask):
    """Uncompressed COCO RLE, written here independently: runs down the columns, from 0."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def _rle_string(counts):
    """Compressed COCO RLE, written here from the description of pycocotools' rleToString."""
    text = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            bits = value & 0x1F
            value >>= 5
            more = value != -1 if bits & 0x10 else value != 0
            text.append(chr(48 + (bits | 0x20 if more else bits)))
    return "".join(text)


def _blob_mask():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[3:30, 40:58] = True
    mask[8:12, 44:50] = False
    mask[35:, :4] = True
    mask[0, 0] = True  # the first run of background is empty
    return mask


@pytest.mark.parametrize("compressed", [False, True])
def test_coco_rle_is_decoded(tmp_path, compressed):
    mask = _blob_mask()
    counts = _rle_counts(mask)
    assert counts[0] == 0 and sum(counts) == mask.size
    rle = {"counts": _rle_string(counts) if compressed else counts, "size": [HEIGHT, WIDTH]}
    path = _write(tmp_path / "coco.json", _coco([_annotation(rle), _annotation([HOLE], 3)]))
    got = _by_stem(read_coco(path, background="hole"))["a"].mask
    np.testing.assert_array_equal(got, mask & ~_polygons(mask.shape, HOLE))


def test_compressed_rle_known_strings():
    # Worked by hand: 40 = 0b01000 + 1 << 5 -> "X" (8 | 0x20, plus 48), "1"; the fourth count
    # is stored as 1 - 3 = -2 -> 30 ("N", sign bit 0x10 set).
    assert rle_counts_from_string("X134N") == [40, 3, 4, 1]
    assert rle_counts_from_string("2344") == [2, 3, 4, 7]
    assert _rle_string([40, 3, 4, 1]) == "X134N"
    with pytest.raises(ValueError, match="ends inside a count"):
        rle_counts_from_string("X")


def test_a_hand_written_compressed_rle(tmp_path):
    image = {"id": 7, "file_name": "tiny.png", "width": 8, "height": 6}
    rle = {"counts": "X134N", "size": [6, 8]}
    path = _write(tmp_path / "coco.json", _coco([_annotation(rle, image=7)], images=[image]))
    expected = np.zeros((6, 8), bool)
    expected[4:, 6] = True  # column-major pixels 40, 41
    expected[0, 7] = expected[5, 7] = True  # 42 and 47
    np.testing.assert_array_equal(read_coco(path)[0].mask, expected)


def _labelme(shapes, image_path="photo.jpg", **extra):
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": None, "imageHeight": HEIGHT, "imageWidth": WIDTH, **extra}


def _shape(label, points, shape_type="polygon"):
    return {"label": label, "points": points, "group_id": None, "shape_type": shape_type,
            "flags": {}}


def test_labelme_polygon_rectangle_circle_and_a_hole(tmp_path):
    polygon = [[2, 3], [20.6, 4], [11, 30.4]]
    shapes = [_shape("cat", polygon), _shape("cat", [[50, 30], [30, 10]], "rectangle"),
              _shape("dog", [[45, 25], [45, 33]], "circle"),
              _shape("gap", [[35, 15], [42, 15], [42, 22], [35, 22]]),
              _shape("cat", [[1, 1], [5, 5]], "line"), _shape("cat", [[3, 3]], "point")]
    path = _write(tmp_path / "photo.json", _labelme(shapes))
    skipped = Counter()
    record = read_labelme(path, background="gap", skipped=skipped)
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.fillPoly(expected, [np.round(np.array(polygon)).astype(np.int32)], 255)
    cv2.rectangle(expected, (30, 10), (50, 30), 255, thickness=-1)
    cv2.circle(expected, (45, 25), 8, 255, thickness=-1)
    hole = _polygons((HEIGHT, WIDTH), [[35, 15], [42, 15], [42, 22], [35, 22]])
    np.testing.assert_array_equal(record.mask, (expected > 0) & ~hole)
    assert skipped == {"line": 1, "point": 1}
    assert record.stem == "photo" and record.shape == (HEIGHT, WIDTH)
    only_dogs = read_labelme(path, classes=["dog"])
    circle = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.circle(circle, (45, 25), 8, 255, thickness=-1)
    np.testing.assert_array_equal(only_dogs.mask, circle > 0)


def test_classes_are_checked_across_all_labelme_files(tmp_path):
    _write(tmp_path / "one.json", _labelme([_shape("cat", [[2, 3], [20, 4], [11, 30]])], "one.jpg"))
    _write(tmp_path / "two.json", _labelme([_shape("dog", [[2, 3], [20, 4], [11, 30]])], "two.jpg"))
    records = _by_stem(read_annotations([tmp_path], classes=["dog"]))
    assert records["one"].empty and not records["two"].empty
    with pytest.raises(DataError, match="no category or label named cow; present: cat, dog"):
        read_annotations([tmp_path], classes=["cow"])


BAD_INPUTS = {
    "not JSON": ("{'images': [", "not valid JSON"),
    "unknown format": ({"something": []}, "neither a COCO export"),
    "missing key": (_coco([{"image_id": 1, "category_id": 1}]),
                    r"annotations\[0\]: missing key 'segmentation'"),
    "two points": (_coco([_annotation([[1, 1, 9, 9]])]), r"2 point\(s\), at least 3 needed"),
    "odd coordinates": (_coco([_annotation([[1, 1, 9, 9, 4]])]), "expected a list of x1, y1"),
    "far outside": (_coco([_annotation([[1, 1, 9, 9, 400, 9]])]), r"point \(400, 9\) lies far"),
    "unknown image": (_coco([_annotation([SQUARE], image=9)]), "image_id 9 is not among"),
    "RLE sum": (_coco([_annotation({"counts": [5, 5], "size": [HEIGHT, WIDTH]})]),
                "add up to 10 pixels"),
    "RLE size": (_coco([_annotation({"counts": [2400], "size": [WIDTH, HEIGHT]})]),
                 "RLE size"),
    "bad RLE string": (_coco([_annotation({"counts": "ab~", "size": [HEIGHT, WIDTH]})]),
                       "not compressed RLE"),
    "LabelMe size": ({"shapes": [], "imagePath": "x.jpg", "imageHeight": 0, "imageWidth": 5},
                     "'imageHeight' should be a positive whole number"),
    "LabelMe points": (_labelme([_shape("cat", [[1, 2, 3]])]), "expected a list of \\[x, y\\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_data_error_naming_the_file(tmp_path, case):
    data, reason = BAD_INPUTS[case]
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(DataError, match=reason) as error:
        read_annotations([path])
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def _photos(folder, sizes):
    """Random photographs of the given `name: (height, width)`."""
    rng = np.random.default_rng(0)
    for name, shape in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    return folder


def _coco_export(tmp_path):
    annotations = [_annotation([SQUARE, TRIANGLE]), _annotation([HOLE], 3)]
    coco = _write(tmp_path / "coco.json", _coco(annotations))
    photos = _photos(tmp_path / "photos", {"a.jpg": (HEIGHT, WIDTH), "b.png": (20, 30)})
    return coco, photos


def test_the_command_writes_a_folder_training_reads(tmp_path, capsys):
    coco, photos = _coco_export(tmp_path)
    out = tmp_path / "out"
    assert main([str(coco), "--images", str(photos), "--out", str(out), "--background",
                 "hole"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary == (f"2 masks written to {out / 'masks'} (1 with no foreground); 2 images "
                       f"copied to {out / 'images'}; preview {out / 'preview.png'}")
    pairs = find_pairs(out)
    assert [(image.name, mask.name) for image, mask in pairs] == [("a.jpg", "a.png"),
                                                                  ("b.png", "b.png")]
    expected = _polygons((HEIGHT, WIDTH), SQUARE, TRIANGLE) & ~_polygons((HEIGHT, WIDTH), HOLE)
    np.testing.assert_array_equal(read_mask(out / "masks" / "a.png"), expected)
    assert set(np.unique(cv2.imread(str(out / "masks" / "a.png"), cv2.IMREAD_UNCHANGED))) == {
        0, 255}
    assert (out / "images" / "a.jpg").read_bytes() == (photos / "a.jpg").read_bytes()
    assert read_image(out / "preview.png").shape[2] == 3

    # --skip-empty leaves the image without annotations out.
    skipped = tmp_path / "skipped"
    assert main([str(coco), "--images", str(photos), "--out", str(skipped), "--skip-empty"]) == 0
    assert [image.name for image, _ in find_pairs(skipped)] == ["a.jpg"]
    assert "1 without annotations left out" in capsys.readouterr().out


def test_the_command_refuses_to_overwrite_before_writing(tmp_path, capsys):
    coco, photos = _coco_export(tmp_path)
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    write_png(out / "masks" / "b.png", np.zeros((20, 30), bool))
    assert main([str(coco), "--images", str(photos), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {out / 'masks' / 'b.png'}: exists; pass --overwrite to replace it\n"
    assert sorted(path.name for path in out.rglob("*")) == ["b.png", "masks"]
    assert main([str(coco), "--images", str(photos), "--out", str(out), "--overwrite"]) == 0
    assert len(find_pairs(out)) == 2


def test_the_command_names_missing_and_mis_sized_photographs(tmp_path, capsys):
    coco, photos = _coco_export(tmp_path)
    (photos / "b.png").unlink()
    out = tmp_path / "out"
    assert main([str(coco), "--images", str(photos), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {photos}: 1 annotated image(s) not found: sub/b.png\n")
    _photos(photos, {"b.png": (21, 30)})
    assert main([str(coco), "--images", str(photos), "--out", str(out)]) == 2
    assert "b.png is 30x21 but" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("content", ["{\"images\": [", "[1, 2]"])
def test_the_command_refuses_bad_json_in_one_line(tmp_path, capsys, content):
    path = _write(tmp_path / "broken.json", content)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {path}: ") and error.count("\n") == 1
    assert not out.exists()


def test_the_command_finds_labelme_photographs_beside_or_inside_the_json(tmp_path, capsys):
    labelme = tmp_path / "labelme"
    _photos(tmp_path / "pictures", {"one.jpg": (HEIGHT, WIDTH)})
    triangle = [[2, 3], [20, 4], [11, 30]]
    labelme.mkdir()
    # Written on Windows: imagePath with backslashes, relative to the JSON file.
    _write(labelme / "one.json", _labelme([_shape("cat", triangle)], "..\\pictures\\one.jpg"))
    embedded = base64.b64encode(encode_png(np.full((HEIGHT, WIDTH, 3), 0.5))).decode()
    _write(labelme / "two.json", _labelme([_shape("cat", [[30, 20], [40, 30]], "rectangle"),
                                           _shape("cat", [[1, 1], [2, 2]], "line")],
                                          "two.jpg", imageData=embedded))
    out = tmp_path / "out"
    assert main([str(labelme), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped shapes other than polygon, rectangle, circle: 1 line" in captured.err
    assert [(image.name, mask.name) for image, mask in find_pairs(out)] == [
        ("one.jpg", "one.png"), ("two.png", "two.png")]
    np.testing.assert_array_equal(read_mask(out / "masks" / "one.png"),
                                  _polygons((HEIGHT, WIDTH), triangle))
    assert read_image(out / "images" / "two.png").shape == (HEIGHT, WIDTH, 3)
    assert (out / "preview.png").is_file()
