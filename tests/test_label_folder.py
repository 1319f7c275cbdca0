"""Labelling a folder through the API (`serve.py --label DIR`): reading its photographs by
their place in the server's listing, and writing masks only inside DIR/masks/."""

import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is part of [dev]")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from segment.deploy.server import create_app  # noqa: E402
from segment.imageio import DataError, encode_png  # noqa: E402
from segment.model import build_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_model(base_filters=4, depth=2)


def _folder(root):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, shape in (("b_cat.png", (30, 40, 3)), ("a_dog.jpg", (20, 24, 3))):
        image = (rng.random(shape) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / name)
    (root / "images" / ".hidden.png").write_bytes(b"not listed")
    return root


def _mask_png(height, width):
    mask = np.zeros((height, width), bool)
    mask[2:10, 3:12] = True
    return mask, encode_png(mask)


def test_the_folder_is_listed_read_and_written_by_index(model, tmp_path):
    root = _folder(tmp_path / "photos")
    with TestClient(create_app(model, label=root), raise_server_exceptions=False) as client:
        assert client.get("/api/health").json()["label"] is True
        listing = client.get("/api/label").json()
        assert [item["name"] for item in listing["items"]] == ["a_dog.jpg", "b_cat.png"]
        assert (listing["count"], listing["labelled"]) == (2, 0)
        answer = client.get("/api/label/1/image")
        assert answer.headers["content-type"] == "image/png"
        assert answer.content == (root / "images" / "b_cat.png").read_bytes()
        assert client.get("/api/label/1/mask").status_code == 404

        mask, png = _mask_png(30, 40)
        answer = client.put("/api/label/1/mask", files={"mask": ("m.png", png, "image/png")})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"saved": "b_cat.png", "labelled": 1, "count": 2}
        written = np.asarray(Image.open(root / "masks" / "b_cat.png"))
        np.testing.assert_array_equal(written, mask.astype(np.uint8) * 255)
        assert client.get("/api/label/1/mask").content == (root / "masks" / "b_cat.png").read_bytes()
        assert client.get("/api/label").json()["items"][1]["labelled"] is True

        # Never over a mask without asking; with overwrite=true it is replaced.
        other = encode_png(np.ones((30, 40), bool))
        answer = client.put("/api/label/1/mask", files={"mask": ("m.png", other, "image/png")})
        assert answer.status_code == 409 and "has a mask already" in answer.json()["error"]
        np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "b_cat.png")) > 0, mask)
        answer = client.put("/api/label/1/mask", params={"overwrite": "true"},
                            files={"mask": ("m.png", other, "image/png")})
        assert answer.status_code == 200
        assert (np.asarray(Image.open(root / "masks" / "b_cat.png")) > 0).all()
    # Nothing else was written anywhere in the folder.
    assert sorted(path.relative_to(root).as_posix() for path in root.rglob("*")) == [
        "images", "images/.hidden.png", "images/a_dog.jpg", "images/b_cat.png", "masks",
        "masks/b_cat.png"]


@pytest.mark.parametrize("request_, status, message", [
    (("get", "/api/label/2/image", {}), 404, "no photograph 2: the folder has 2"),
    (("get", "/api/label/-1/mask", {}), 404, "no photograph -1"),
    (("get", "/api/label/..%2F..%2Fetc%2Fpasswd/image", {}), 404, "Not Found"),
    (("get", "/api/label/a_dog.jpg/image", {}), 422, "index"),
    (("put", "/api/label/0/mask", {}), 400, "no mask"),
    (("put", "/api/label/0/mask", {"files": {"mask": ("m.png", encode_png(np.ones((5, 5), bool)))}}),
     400, "mask: 5x5, the photograph a_dog.jpg is 24x20"),
    (("put", "/api/label/0/mask", {"files": {"mask": ("m.png", b"not an image")}}), 400, "mask"),
])
def test_bad_label_requests_get_a_json_error_and_write_nothing(model, tmp_path, request_, status,
                                                               message):
    root = _folder(tmp_path / "photos")
    method, path, options = request_
    with TestClient(create_app(model, label=root), raise_server_exceptions=False) as client:
        answer = getattr(client, method)(path, **options)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert not (root / "masks").exists()


@pytest.mark.parametrize("keep_orientation", [False, True])
def test_a_sideways_photographs_mask_has_its_upright_size_read_without_decoding_it(
        model, tmp_path, monkeypatch, keep_orientation):
    import cv2

    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide and 30 high; viewers turn it upright, 30 wide and 40 high
    photo = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(photo, "JPEG", exif=exif)
    (root / "images" / "phone.jpg").write_bytes(photo.getvalue())
    decoded = []  # the sizes of the encoded images the server decodes
    imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda raw, flags: decoded.append(len(raw)) or
                        imdecode(raw, flags))
    right, wrong = ((30, 40), (40, 30)) if keep_orientation else ((40, 30), (30, 40))
    app = create_app(model, label=root, keep_orientation=keep_orientation)
    with TestClient(app, raise_server_exceptions=False) as client:
        png = encode_png(np.zeros(wrong, bool))
        answer = client.put("/api/label/0/mask", files={"mask": ("m.png", png, "image/png")})
        assert answer.status_code == 400
        size = f"{right[1]}x{right[0]}"
        assert answer.json() == {"error": f"mask: {wrong[1]}x{wrong[0]}, the photograph "
                                          f"phone.jpg is {size}"}
        assert not (root / "masks").exists()
        mask, png = _mask_png(*right)
        answer = client.put("/api/label/0/mask", files={"mask": ("m.png", png, "image/png")})
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "phone.png")) > 0,
                                       mask)
    # The two masks were decoded, the photograph never.
    assert len(decoded) == 2 and len(photo.getvalue()) not in decoded


def test_without_label_there_are_no_label_endpoints(model):
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        assert client.get("/api/health").json()["label"] is False
        assert client.get("/api/label").status_code == 404


def test_a_folder_without_images_is_refused_by_name(model, tmp_path):
    with pytest.raises(DataError, match="no images to label"):
        create_app(model, label=tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        create_app(model, label=tmp_path / "missing")
    # Masks are named by stem: two photographs with one stem are refused, naming both.
    root = _folder(tmp_path / "twice")
    (root / "images" / "a_dog.png").write_bytes((root / "images" / "b_cat.png").read_bytes())
    with pytest.raises(DataError, match=r"share a name.*a_dog \(a_dog.jpg, a_dog.png\)"):
        create_app(model, label=root)


def test_the_serve_command_refuses_a_bad_label_folder_with_one_line(tmp_path, capsys):
    import importlib
    import socket

    serve = importlib.import_module("segment.cli.serve")
    path = tmp_path / "model.keras"
    build_model(base_filters=4, depth=2).save(path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    argv = ["--model", str(path), "--label", str(tmp_path / "none"), "--port", port]
    assert serve.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no such folder to label" in error[0]


def test_without_a_model_masks_come_from_clicks_alone(tmp_path):
    root = _folder(tmp_path / "photos")
    with TestClient(create_app(None, label=root), raise_server_exceptions=False) as client:
        health = client.get("/api/health").json()
        assert health["model"] is None and health["label"] is True
        image = client.get("/api/label/1/image").content
        files = {"file": ("b_cat.png", image, "image/png")}
        empty = client.post("/api/segment", files=files)
        assert empty.status_code == 200
        assert not np.asarray(Image.open(io.BytesIO(empty.content))).any()
        clicked = client.post("/api/segment", files=files,
                              data={"clicks": '[{"x": 5, "y": 7, "foreground": true}]'})
        assert np.asarray(Image.open(io.BytesIO(clicked.content)))[7, 5] == 255  # it wins there
        # A saved mask as the start: the answer without clicks.
        saved, png = _mask_png(30, 40)
        answer = client.post("/api/segment", files={**files, "start": ("m.png", png, "image/png")})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) > 0, saved)
        answer = client.post("/api/segment", files=files, params={"output": "prob"})
        assert answer.status_code == 400 and "no model" in answer.json()["error"]
    with pytest.raises(ValueError, match="only labels a folder"):
        create_app(None)


def test_the_serve_command_labels_without_a_model_when_none_is_found(tmp_path, monkeypatch,
                                                                    capsys):
    import importlib
    import socket

    import uvicorn

    serve = importlib.import_module("segment.cli.serve")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    root = _folder(tmp_path / "photos")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    argv = ["--runs-dir", str(tmp_path / "no-runs"), "--port", port]
    assert serve.main([*argv, "--label", str(root)]) == 0
    out = capsys.readouterr().out
    assert "labelling 2 photographs" in out and "no model (masks from clicks alone)" in out
    assert len(served) == 1
    assert serve.main(argv) == 2  # without --label, no model is an error as before
    assert "no model found" in capsys.readouterr().err
