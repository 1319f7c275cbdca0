"""Corrections from clicks: the library, the HTTP API's `clicks` field, the simulated
annotator and its benchmark."""

import csv
import io
import json

import keras
import numpy as np
import pytest
from PIL import Image

from segment.benchmarks.interactive import main as benchmark_main
from segment.data import synthetic_arrays, write_folder
from segment.evaluation.interactive import next_click, noc, simulate
from segment.imageio import DataError, decode_image
from segment.inference import Click, correct_mask, parse_clicks
from segment.metrics import iou
from segment.model import build_model

HEIGHT, WIDTH = 120, 160


def _disc(centre, radius, shape=(HEIGHT, WIDTH)):
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[1]) ** 2 + (columns - centre[0]) ** 2 < radius**2


def _scene(*discs, seed=0):
    """A textured dark background with bright discs `(x, y, radius[, rgb])`, white unless
    `rgb` says otherwise; `(image, truth)`."""
    rng = np.random.default_rng(seed)
    image = np.clip(0.3 + 0.12 * rng.standard_normal((HEIGHT, WIDTH, 3)), 0, 1)
    truth = np.zeros((HEIGHT, WIDTH), bool)
    for x, y, radius, *colour in discs:
        inside = _disc((x, y), radius)
        noise = 0.05 * rng.standard_normal((inside.sum(), 3))
        image[inside] = np.clip(np.asarray(colour[0] if colour else 0.85) + noise, 0, 1)
        truth |= inside
    return image.astype(np.float32), truth


# ------------------------------------------------------------------ correct_mask


@pytest.mark.parametrize("seed", range(6))
def test_a_click_always_wins_at_its_own_pixel(seed):
    rng = np.random.default_rng(seed)
    image, truth = _scene((70, 60, 30), seed=seed)
    probability = None if seed % 2 else rng.random((HEIGHT, WIDTH)).astype(np.float32)
    clicks = [Click(int(rng.integers(WIDTH)), int(rng.integers(HEIGHT)), bool(rng.integers(2)))
              for _ in range(int(rng.integers(1, 12)))]
    # Conflicting clicks side by side, and one on the very same pixel: the later one wins.
    x, y = clicks[0].x, clicks[0].y
    clicks += [Click(x, y, not clicks[0].foreground),
               Click(min(x + 1, WIDTH - 1), y, clicks[0].foreground)]
    mask = correct_mask(image, probability, clicks)
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
    last = {(click.x, click.y): click.foreground for click in clicks}
    for (x, y), foreground in last.items():
        assert mask[y, x] == foreground


def test_clicks_alone_recover_a_clean_disc():
    image, truth = _scene((70, 60, 30))
    ious, _ = simulate(lambda image, clicks: correct_mask(image, None, clicks), image, truth,
                       max_clicks=4)
    assert ious[0] == 0.0  # no foreground click: an empty mask
    assert ious[-1] > 0.9, ious


def test_no_foreground_click_without_a_probability_is_an_empty_mask():
    image, _ = _scene((70, 60, 30))
    assert not correct_mask(image, None, []).any()
    assert not correct_mask(image, None, [Click(5, 5, False), Click(70, 60, False)]).any()


@pytest.mark.parametrize("missed", [0.2, 0.4])  # the network unsure of the missed object
def test_a_foreground_click_in_a_missed_object_recovers_it(missed):
    image, truth = _scene((45, 60, 25), (120, 60, 20))
    found = _disc((45, 60), 25)
    probability = np.where(found, 0.98, 0.02).astype(np.float32)
    probability[truth & ~found] = missed
    mask = correct_mask(image, probability, [Click(120, 60, True)])
    other = truth & ~found
    assert iou(mask & ~found, other) > 0.8
    np.testing.assert_array_equal(mask[found], True)  # the right part stays right


def test_a_background_click_removes_a_false_object_and_nothing_else():
    image, truth = _scene((45, 60, 25), (120, 60, 20, (0.9, 0.5, 0.2)))
    wrong = _disc((120, 60), 20)
    probability = np.where(truth, 0.97, 0.03).astype(np.float32)  # an orange disc found too
    mask = correct_mask(image, probability, [Click(120, 60, False)])
    assert np.count_nonzero(mask & wrong) < 0.2 * np.count_nonzero(wrong)
    np.testing.assert_array_equal(mask[~wrong], (probability > 0.5)[~wrong])


def test_a_click_moves_the_boundary_where_the_network_was_least_sure():
    # The mask is the left third; the middle third is unsure (probability 0.3), the right third
    # sure background (0.001). A foreground click in the middle third, next to the mask, takes
    # the unsure band near the click and leaves the sure one, whatever the image's colours.
    image = np.full((HEIGHT, WIDTH, 3), 0.5, np.float32)
    probability = np.full((HEIGHT, WIDTH), 0.001, np.float32)
    probability[:, :50], probability[:, 50:100] = 0.99, 0.3
    mask = correct_mask(image, probability, [Click(60, 60, True)])
    assert not (mask & ~(probability > 0.5))[:, 100:].any()  # the sure background stays
    assert mask[55:66, 50:90].all()  # the unsure band near the click joins the mask
    assert not mask[:5, 60:100].any() and not mask[-5:, 60:100].any()  # and far from it not
    np.testing.assert_array_equal(mask[:, :50], True)  # a foreground click removes nothing


def test_a_background_click_shrinks_the_mask_only_near_it():
    # A ramp: the probability falls from 1 to 0 across the image, the mask is its left half.
    # A background click just inside the mask moves the boundary left near the click only.
    image = np.full((HEIGHT, WIDTH, 3), 0.5, np.float32)
    probability = np.tile(np.linspace(0.99, 0.01, WIDTH, dtype=np.float32), (HEIGHT, 1))
    start = probability > 0.5
    mask = correct_mask(image, probability, [Click(74, 60, False)])
    assert not mask[60, 74:].any()
    assert not (mask & ~start).any()  # a background click adds nothing
    np.testing.assert_array_equal(mask[:, :40], True)
    np.testing.assert_array_equal(mask[:15], start[:15])  # far from the click, as it was


def test_without_clicks_the_starting_mask_is_kept():
    image, _ = _scene((70, 60, 30))
    probability = np.random.default_rng(1).random((HEIGHT, WIDTH)).astype(np.float32)
    np.testing.assert_array_equal(correct_mask(image, probability, []), probability > 0.5)
    np.testing.assert_array_equal(correct_mask(image, probability, [], threshold=0.7),
                                  probability > 0.7)
    start = np.zeros((HEIGHT, WIDTH), bool)
    np.testing.assert_array_equal(correct_mask(image, probability, [], start=start), start)


def test_a_large_image_is_corrected_at_its_own_size():
    image = np.zeros((900, 1200, 3), np.float32)
    image[300:600, 400:800] = 0.9
    mask = correct_mask(image, None, [Click(600, 450, True)])
    assert mask.shape == (900, 1200)
    assert iou(mask, image[..., 0] > 0.5) > 0.9


def test_a_click_outside_the_image_is_refused():
    image, _ = _scene((70, 60, 30))
    with pytest.raises(ValueError, match="outside"):
        correct_mask(image, None, [Click(WIDTH, 0, True)])


# ------------------------------------------------------------------ parse_clicks


def test_parse_clicks_reads_the_clicks_in_order():
    text = '[{"x": 3, "y": 4, "foreground": true}, {"x": 5.0, "y": 0, "foreground": false}]'
    assert parse_clicks(text, (10, 20)) == [Click(3, 4, True), Click(5, 0, False)]
    assert parse_clicks(b"[]", (10, 20, 3)) == []


def _click(**fields):
    return json.dumps([{"x": 1, "y": 2, "foreground": True, **fields}])


@pytest.mark.parametrize(
    "text, message",
    [
        ("[{", "clicks: not valid JSON"),
        (b"\xff", "clicks: not valid JSON"),
        ('{"x": 1}', "clicks: expected a JSON list"),
        ("[3]", "clicks[0]: expected an object"),
        ('[{"x": 1, "y": 2}]', "clicks[0]: missing foreground"),
        (_click(z=0), "clicks[0]: unknown key 'z'"),
        (_click(x="12"), 'clicks[0]: x must be an integer, got "12"'),
        (_click(y=True), "clicks[0]: y must be an integer, got true"),
        (_click(x=1.5), "clicks[0]: x must be an integer, got 1.5"),
        (_click(foreground=1), "clicks[0]: foreground must be true or false, got 1"),
        ("[" + _click()[1:-1] + "," + _click(x=700)[1:], "clicks[1]: x=700 is outside the "
         "image (0 to 639)"),
        (_click(y=-1), "clicks[0]: y=-1 is outside the image (0 to 479)"),
        (json.dumps([{"x": 1, "y": 1, "foreground": True}] * 101), "clicks: 101 clicks"),
    ],
)
def test_parse_clicks_names_the_field_of_each_error(text, message):
    with pytest.raises(DataError) as error:
        parse_clicks(text, (480, 640))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# ------------------------------------------------------------------ the simulated annotator


def test_the_first_click_is_at_the_centre_of_a_missed_square():
    truth = np.zeros((50, 60), bool)
    truth[10:31, 20:41] = True  # 21 x 21, centre (30, 20)
    assert next_click(np.zeros_like(truth), truth) == Click(30, 20, True)


def test_the_largest_error_gets_the_click():
    truth = np.zeros((50, 60), bool)
    truth[10:31, 5:26] = True
    prediction = truth.copy()
    prediction[10:14, 5:26] = False  # a missed strip of 84 pixels
    prediction[30:45, 40:55] = True  # an extra blob of 225
    click = next_click(prediction, truth)
    assert not click.foreground and 40 <= click.x < 55 and 30 <= click.y < 45
    assert next_click(truth, truth) is None


def test_the_image_border_counts_as_the_boundary():
    truth = np.zeros((20, 40), bool)
    truth[:, :10] = True  # a band along the left border: the click is halfway across it
    click = next_click(np.zeros_like(truth), truth)
    assert click.foreground and click.x in (4, 5) and 4 <= click.y <= 15


def test_simulate_stops_when_perfect_and_carries_the_iou():
    truth = np.zeros((30, 30), bool)
    truth[5:15, 5:15] = True
    truth[20:25, 20:25] = True

    def segmenter(image, clicks):
        mask = np.zeros_like(truth)
        for click in clicks:  # each click fills the square it is in
            mask |= (truth & _disc((click.x, click.y), 12, truth.shape))
        return mask

    ious, seconds = simulate(segmenter, None, truth, max_clicks=5)
    assert ious == [0.0, 100 / 125, 1.0, 1.0, 1.0, 1.0] and len(seconds) == 2
    # Told to stop at 0.75, it stops after the first click and carries its IoU.
    ious, seconds = simulate(segmenter, None, truth, max_clicks=5, until=0.75)
    assert ious == [0.0] + [100 / 125] * 5 and len(seconds) == 1
    assert noc(ious, 0.75, 5) == 1


def test_noc_counts_clicks_to_the_target():
    ious = [0.5, 0.8, 0.86, 0.91, 0.95]
    assert noc(ious, 0.85) == 2 and noc(ious, 0.9) == 3 and noc(ious, 0.5) == 0
    assert noc(ious, 0.99, max_clicks=4) == 4
    assert noc(ious, 0.95, max_clicks=3) == 3  # counted within max_clicks only


# ------------------------------------------------------------------ the benchmark


def test_the_benchmark_end_to_end(tmp_path, capsys):
    images, masks = synthetic_arrays(4, size=64, seed=5)
    write_folder(tmp_path / "data", images, masks)
    keras.utils.set_random_seed(0)
    model_path = tmp_path / "m.keras"
    build_model(base_filters=4, depth=2, inference={"tta": False}).save(model_path)
    for extra, methods in (([], {"grabcut"}), (["--model", str(model_path)], {"model", "grabcut"}),
                           (["--model", str(model_path), "--no-grabcut"], {"model"})):
        out = tmp_path / f"out{len(extra)}"
        code = benchmark_main(["--data", str(tmp_path / "data"), "--max-clicks", "3",
                               "--out", str(out), *extra])
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        assert set(results["methods"]) == methods and results["max_clicks"] == 3
        for figures in results["methods"].values():
            assert figures["images"] == 4 and figures["iou_5"] is None
            assert 0 <= figures["noc85"] <= 3 and 0 <= figures["noc90"] <= 3
            assert all(0 <= figures[f"iou_{k}"] <= 1 for k in (0, 1, 3))
            assert len(figures["mean_iou_by_clicks"]) == 4
        rows = list(csv.DictReader(io.StringIO((out / "per_image.csv").read_text())))
        assert len(rows) == 4 * len(methods)
        assert ("| grabcut |" in (out / "report.md").read_text()) == ("grabcut" in methods)
    assert "NoC@85" in capsys.readouterr().out
    assert benchmark_main(["--data", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit) as exit_info:  # nothing left to run
        benchmark_main(["--data", str(tmp_path / "data"), "--no-grabcut"])
    assert exit_info.value.code == 2 and "nothing to run" in capsys.readouterr().err


# ------------------------------------------------------------------ the HTTP API


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi", reason="the serve extra is part of [dev]")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient

    from segment.deploy.server import create_app

    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, inference={"threshold": 0.5, "tta": False})
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        yield client


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _post(client, data, clicks=None, **params):
    form = None if clicks is None else {"clicks": clicks}
    return client.post("/api/segment", params=params, data=form,
                       files={"file": ("scene.png", data, "image/png")})


def _answer(response):
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_the_api_corrects_the_mask_where_the_clicks_say(client):
    image, _ = _scene((45, 60, 25), (120, 60, 20))
    data = _png(image)
    plain = _answer(_post(client, data)) > 0
    np.testing.assert_array_equal(_answer(_post(client, data, "[]")) > 0, plain)
    clicks = [Click(45, 60, not plain[60, 45]), Click(120, 60, not plain[60, 120]),
              Click(3, 3, not plain[3, 3])]
    text = json.dumps([{"x": c.x, "y": c.y, "foreground": c.foreground} for c in clicks])
    corrected = _answer(_post(client, data, text)) > 0
    assert all(corrected[c.y, c.x] == c.foreground for c in clicks)
    cutout = _answer(_post(client, data, text, output="cutout"))
    np.testing.assert_array_equal(cutout[..., 3] > 0, corrected)
    assert _answer(_post(client, data, text, output="overlay")).shape == (HEIGHT, WIDTH, 3)


def test_api_clicks_are_in_the_upright_image_s_pixels(client):
    buffer, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright, the photo is 120 wide and 160 high
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 90, np.uint8)).save(buffer, "JPEG", exif=exif)
    data = buffer.getvalue()
    assert decode_image(data).shape[:2] == (WIDTH, HEIGHT)
    inside = json.dumps([{"x": HEIGHT - 1, "y": WIDTH - 1, "foreground": True}])
    assert _answer(_post(client, data, inside))[WIDTH - 1, HEIGHT - 1] == 255
    outside = json.dumps([{"x": WIDTH - 1, "y": 0, "foreground": True}])
    assert "outside the image (0 to 119)" in _post(client, data, outside).json()["error"]


@pytest.mark.parametrize(
    "clicks, params, message",
    [
        ("[{", {}, "clicks: not valid JSON"),
        ('[{"x": 500, "y": 1, "foreground": true}]', {}, "clicks[0]: x=500 is outside"),
        ('[{"x": "1", "y": 1, "foreground": true}]', {}, "clicks[0]: x must be an integer"),
        ('[{"x": 1, "y": 1, "foreground": "yes"}]', {}, "clicks[0]: foreground must be"),
        ("[]", {"output": "prob"}, "clicks: take output=mask, overlay or cutout"),
    ],
)
def test_api_bad_clicks_get_a_400_naming_them(client, clicks, params, message):
    image, _ = _scene((70, 60, 30))
    response = _post(client, _png(image), clicks, **params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message) and "Traceback" not in response.text


def test_the_benchmark_through_the_api_matches_the_model_in_process(tmp_path, monkeypatch):
    # The server answers each click as correct_mask does in process: the same IoU after every
    # click, from the same protocol.
    pytest.importorskip("fastapi", reason="the serve extra is part of [dev]")
    httpx = pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient

    from segment.deploy.server import create_app

    images, masks = synthetic_arrays(3, size=64, seed=6)
    write_folder(tmp_path / "data", images, masks)
    keras.utils.set_random_seed(0)
    model_path = tmp_path / "m.keras"
    build_model(base_filters=4, depth=2, inference={"tta": False}).save(model_path)
    model = keras.saving.load_model(model_path, safe_mode=True)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        monkeypatch.setattr(httpx, "Client", lambda **options: client)
        out = tmp_path / "out"
        assert benchmark_main(["--data", str(tmp_path / "data"), "--model", str(model_path),
                               "--server", "http://testserver", "--max-clicks", "4",
                               "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "per_image.csv").read_text())))
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(
            [float(value) for key, value in row.items() if key.startswith("iou_")])
    assert set(by_method) == {"model", "grabcut", "server"}
    np.testing.assert_allclose(by_method["server"], by_method["model"], atol=1e-9)
    assert json.loads((out / "results.json").read_text())["server"] == "http://testserver"
