"""The HTTP API of scripts/serve.py, through an in-process client: every option, every error."""

import io
import json

import keras
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is part of [dev]")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402
import importlib  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.formparsers import MultiPartParser  # noqa: E402
from test_inference import random_image  # noqa: E402

from segment.deploy.server import create_app  # noqa: E402
from segment.imageio import decode_image, encode_png  # noqa: E402
from segment.inference import clean_mask, predict_probability  # noqa: E402
from segment.model import build_model  # noqa: E402

serve_script = importlib.import_module("segment.cli.serve")
LIMIT_BYTES, LIMIT_PIXELS = 300_000, 120_000


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model(base_filters=4, depth=2, inference={"threshold": 0.5, "tta": False})


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, max_upload_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, workers=2)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def photo():
    image = random_image(45, 70, seed=4)
    return encode_png(image), decode_image(encode_png(image))  # what the server will decode


def _post(client, data, name="photo.png", **params):
    return client.post("/api/segment", params=params, files={"file": (name, data, "image/png")})


def _picture(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_health_names_the_model_and_its_settings(client):
    info = client.get("/api/health").json()
    assert info["model"] == "segmenter" and info["backend"] == "keras"
    assert info["input_multiple"] == 4 and info["threshold"] == 0.5 and info["tta"] is False
    assert info["min_part"] == 0.0 and info["min_hole"] == 0.0 and info["refine"] is False
    assert info["max_upload_bytes"] == LIMIT_BYTES and info["max_pixels"] == LIMIT_PIXELS


def test_every_output_kind_matches_the_package_segmentation(client, model, photo):
    data, image = photo
    probability = predict_probability(model, image)
    mask = probability > 0.5
    got = {kind: _picture(_post(client, data, output=kind)) for kind in ("mask", "prob", "overlay", "cutout")}
    np.testing.assert_array_equal(got["mask"], mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(got["prob"], np.round(probability * 255).astype(np.uint8))
    assert got["overlay"].shape == (45, 70, 3)
    assert got["cutout"].shape == (45, 70, 4)
    np.testing.assert_array_equal(got["cutout"][..., 3], got["mask"])
    # Without the output option the answer is the mask.
    np.testing.assert_array_equal(_picture(_post(client, data)), got["mask"])


def test_threshold_tta_and_clean_up_options(client, model, photo):
    data, image = photo
    assert (_picture(_post(client, data, threshold=0.0)) == 255).all()
    assert (_picture(_post(client, data, threshold=1.0)) == 0).all()
    flipped = predict_probability(model, image, tta=True) > 0.5
    np.testing.assert_array_equal(_picture(_post(client, data, tta=True)) > 0, flipped)
    cleaned = clean_mask(predict_probability(model, image) > 0.5, min_area=30, fill_holes=20)
    got = _picture(_post(client, data, min_area=30, fill_holes=20)) > 0
    np.testing.assert_array_equal(got, cleaned)
    # min_part: parts below that share of the image's pixels go (10% of 45 x 70 is 315).
    cleaned = clean_mask(predict_probability(model, image) > 0.5, min_area=315)
    np.testing.assert_array_equal(_picture(_post(client, data, min_part=0.1)) > 0, cleaned)
    # min_hole: holes below that share are filled (2% of 45 x 70 is 63 pixels).
    cleaned = clean_mask(predict_probability(model, image) > 0.5, fill_holes=63)
    np.testing.assert_array_equal(_picture(_post(client, data, min_hole=0.02)) > 0, cleaned)


@pytest.mark.parametrize(
    "make, status, message",
    [
        (lambda c, d: c.post("/api/segment"), 400, "no file"),
        (lambda c, d: _post(c, b"this is not an image", name="notes.txt"), 415, "notes.txt: not a readable image"),
        (lambda c, d: _post(c, b"", name="empty.png"), 415, "empty.png: empty file"),
        (lambda c, d: _post(c, b"x" * (LIMIT_BYTES + 1)), 413, "upload larger than"),
        (lambda c, d: _post(c, encode_png(np.zeros((400, 400, 3), np.uint8)), name="big.png"),
         413, "big.png: 400x400 is 160000 pixels"),
        (lambda c, d: _post(c, d, output="sketch"), 422, "output"),
        (lambda c, d: _post(c, d, threshold=2), 422, "threshold"),
        (lambda c, d: _post(c, d, min_area=-1), 422, "min_area"),
        (lambda c, d: _post(c, d, min_part=1), 422, "min_part"),
        (lambda c, d: _post(c, d, min_hole=-0.1), 422, "min_hole"),
    ],
)
def test_bad_requests_get_a_json_error_and_no_traceback(client, photo, make, status, message):
    response = make(client, photo[0])
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "Traceback" not in response.text


def test_unknown_paths_and_methods_answer_in_the_same_json_shape(client):
    assert client.get("/api/nothing").json() == {"error": "Not Found"}
    response = client.get("/api/segment")
    assert response.status_code == 405 and "error" in response.json()


def test_a_large_body_without_content_length_is_refused_too(client):
    def chunks():  # a well-formed multipart upload whose file part goes on and on
        yield (b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(LIMIT_BYTES // 10_000 + 2):
            yield b"y" * 10_000

    response = client.post("/api/segment", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=zz"})
    assert response.status_code == 413


def test_uploads_stay_in_memory():
    # Starlette spools larger uploads to a temporary file; the app raises that size to the limit.
    assert MultiPartParser.spool_max_size >= LIMIT_BYTES


def test_the_page_works_offline_and_the_api_is_documented(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no fonts
    schema = client.get("/openapi.json").json()
    assert "/api/segment" in schema["paths"] and "/api/health" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_serve_script_refuses_a_missing_model_with_one_line(tmp_path, capsys):
    assert serve_script.main(["--model", str(tmp_path / "nope.keras")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "nope.keras" in error and "\n" not in error
    assert serve_script.main(["--runs-dir", str(tmp_path)]) == 2
    assert "no model found" in capsys.readouterr().err
    assert serve_script.main(["--port", "70000"]) == 2
    assert "not a TCP port" in capsys.readouterr().err


@pytest.mark.slow
def test_load_test_script_runs_a_real_server_and_reports(tmp_path, model):
    loadtest = importlib.import_module("segment.benchmarks.serving")
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "load.json"
    code = loadtest.main(["--model", str(path), "--requests", "8", "--clients", "2",
                          "--warmup", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["failed"] == 0
    assert sum(row["requests"] for row in report["per_size"].values()) == 8
    assert report["resident_mb_after_run"] > 0 and report["p95_s"] >= report["p50_s"] > 0


def _scene():
    """Two bright discs on a dark, textured background, 45 x 70: `(png, left disc, right
    disc)`."""
    rng = np.random.default_rng(7)
    image = np.clip(0.25 + 0.05 * rng.standard_normal((45, 70, 3)), 0, 1)
    rows, columns = np.mgrid[:45, :70]
    left = (rows - 22) ** 2 + (columns - 16) ** 2 < 10**2
    right = (rows - 22) ** 2 + (columns - 52) ** 2 < 10**2
    image[left | right] = 0.9
    return encode_png(image), left, right


def _post_start(client, data, start, clicks=None, **params):
    files = {"file": ("scene.png", data, "image/png"), "start": ("start.png", start, "image/png")}
    form = None if clicks is None else {"clicks": json.dumps(clicks)}
    return client.post("/api/segment", params=params, files=files, data=form)


def test_a_start_mask_is_the_answer_without_clicks_and_what_clicks_correct(client, model):
    data, left, right = _scene()
    plain = _picture(_post(client, data)) > 0
    # A starting mask unlike the model's: the left disc and a block in the top right corner.
    start = left.copy()
    start[:8, 60:] = True
    assert (start != plain).sum() > 100
    for kind in ("mask", "cutout"):
        got = _picture(_post_start(client, data, encode_png(start), output=kind))
        np.testing.assert_array_equal((got if kind == "mask" else got[..., 3]) > 0, start)
    # Any image whose first channel is above the midpoint is foreground: 8-bit RGB, 128 and 127.
    coloured = np.where(start[..., None], [128, 0, 255], [127, 255, 0]).astype(np.uint8)
    np.testing.assert_array_equal(
        _picture(_post_start(client, data, encode_png(coloured), clicks=[])) > 0, start)
    # A click just below the top right block, where the start is background: its pixel wins,
    # and what is far from it (the left half, and the block) keeps the start's value.
    clicks = [{"x": 62, "y": 9, "foreground": True}]
    corrected = _picture(_post_start(client, data, encode_png(start), clicks)) > 0
    assert corrected[9, 62]
    far = np.zeros_like(start)
    far[:, :35] = True
    far[:8, 60:] = True
    np.testing.assert_array_equal(corrected[far], start[far])
    # Without start the same click corrects the model's mask, which is not the start there.
    without = _picture(client.post("/api/segment", data={"clicks": json.dumps(clicks)},
                                   files={"file": ("scene.png", data, "image/png")})) > 0
    assert without[9, 62] and (without[far] != start[far]).sum() > 50


@pytest.mark.parametrize(
    "start, params, status, message",
    [
        (encode_png(np.ones((5, 5), bool)), {}, 400, "start: 5x5, the image scene.png is 70x45"),
        (encode_png(np.ones((70, 45), bool)), {}, 400, "start: 45x70, the image scene.png is 70x45"),
        (b"not a mask", {}, 400, "start: not a readable image"),
        (b"", {}, 400, "start: empty file (0 bytes)"),
        (encode_png(np.ones((45, 70), bool)), {"output": "prob"}, 400,
         "start: take output=mask, overlay or cutout"),
        (encode_png(np.zeros((400, 400), bool)), {}, 413, "start: 400x400 is 160000 pixels"),
    ],
    ids=["small", "turned", "not-an-image", "empty", "prob", "too-large"],
)
def test_a_bad_start_mask_gets_a_json_error_naming_it(client, start, params, status, message):
    response = _post_start(client, _scene()[0], start, **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.startswith(message) and "\n" not in error and "Traceback" not in response.text
