"""The page of scripts/serve.py in a real browser: headless Chromium, driven by Playwright.

The server runs in this process on a free port of 127.0.0.1. The browser opens the page,
uploads an image through the file input and waits for the overlay; the mask it computed must
be the API's probability cut at the slider's threshold, and the overlay must show the image
unchanged outside the mask and tinted inside it. CI installs Debian's `chromium` and sets
SEGMENT_REQUIRE_BROWSER=1, so there the test cannot be skipped.
"""

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a real browser

REQUIRED = os.environ.get("SEGMENT_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not REQUIRED:
    pytest.importorskip("playwright.sync_api", reason="playwright is part of [dev]")
    pytest.importorskip("uvicorn", reason="uvicorn is part of [serve]")
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

import httpx  # noqa: E402
import keras  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage import measure  # noqa: E402

from segment.deploy.server import create_app  # noqa: E402
from segment.imageio import encode_png  # noqa: E402
from segment.inference import clean_mask  # noqa: E402
from segment.model import build_model  # noqa: E402


@contextlib.contextmanager
def _serving(app):
    """`app` served by uvicorn in a thread on a free port of 127.0.0.1; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server():
    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, full_resolution="residual",
                        inference={"threshold": 0.5})
    with _serving(create_app(model)) as url:
        yield url, model


@contextlib.contextmanager
def _page(server, model="segmenter"):
    """The page, open in headless Chromium, once it has read the model's settings (and names
    `model`)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server)
            page.wait_for_function(
                f"document.getElementById('model').textContent.includes('{model}')"
            )
            yield page
        finally:
            browser.close()


def _image():
    rng = np.random.default_rng(3)
    image = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
    image[10:38, 16:50] += 150  # a bright block the tiny network will respond to
    return image


def test_upload_shows_overlay_and_mask_that_match_the_api(server, tmp_path):
    server, model = server
    image = _image()
    path = tmp_path / "block.png"
    path.write_bytes(encode_png(image))
    answer = httpx.post(f"{server}/api/segment", params={"output": "prob"},
                        files={"file": ("block.png", path.read_bytes(), "image/png")})
    probability = np.asarray(Image.open(io.BytesIO(answer.content)))
    # The model keeps only its largest foreground part: the page must drop the others.
    labels = measure.label(probability > round(0.5 * 255), connectivity=2)
    sizes = np.bincount(labels.ravel())[1:]
    assert len(sizes) >= 2  # parts to drop and one to keep
    second, largest = np.sort(sizes)[-2:]
    model.inference["min_part"] = (second + largest) / 2 / labels.size

    with _page(server) as page:
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        threshold = float(page.input_value("#threshold"))
        pixels = page.evaluate(
            """() => ['mask', 'overlay'].map((id) => {
                const canvas = document.getElementById(id);
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                return [canvas.width, canvas.height, Array.from(data)];
            })"""
        )
        assert page.get_attribute("#download-mask", "aria-disabled") == "false"
        # Moving the slider to 1 empties the mask without another request.
        page.fill("#threshold", "1")
        empty = page.evaluate(
            "() => Array.from(document.getElementById('mask').getContext('2d')"
            ".getImageData(0, 0, 64, 48).data).some((v, i) => i % 4 == 0 && v > 0)"
        )

    (width, height, mask), (_, _, overlay) = pixels
    assert (width, height) == (64, 48)
    mask = np.array(mask, dtype=np.uint8).reshape(48, 64, 4)[..., 0] > 0
    overlay = np.array(overlay, dtype=np.uint8).reshape(48, 64, 4)[..., :3]
    # The page cuts the 8-bit probability the API sent at the slider's threshold and keeps
    # the largest part ...
    assert threshold == 0.5
    expected = labels == np.argmax(sizes) + 1
    np.testing.assert_array_equal(mask, expected)
    # ... which is the server's own mask except, at most, where the probability lies within
    # 1/255 of the threshold.
    answer = httpx.post(f"{server}/api/segment", params={"output": "mask", "threshold": threshold},
                        files={"file": ("block.png", path.read_bytes(), "image/png")})
    served = np.asarray(Image.open(io.BytesIO(answer.content))) > 0
    assert np.all((mask == served) | (np.abs(probability.astype(int) - threshold * 255) <= 1))
    assert 0 < mask.sum() < mask.size  # a real mask, not everything or nothing
    np.testing.assert_array_equal(overlay[~mask], image[~mask])
    assert (overlay[mask] != image[mask]).any(axis=-1).all()
    assert not empty


def test_a_refining_model_shows_the_servers_refined_mask(server, tmp_path):
    server, model = server
    path = tmp_path / "block.png"
    path.write_bytes(encode_png(_image()))
    upload = {"file": ("block.png", path.read_bytes(), "image/png")}
    saved = dict(model.inference)
    model.inference.update({"refine": True, "min_part": 0.0})
    try:
        refined = np.asarray(Image.open(io.BytesIO(
            httpx.post(f"{server}/api/segment", params={"output": "mask"}, files=upload).content
        ))) > 0
        plain = np.asarray(Image.open(io.BytesIO(httpx.post(
            f"{server}/api/segment", params={"output": "mask", "refine": "false"}, files=upload
        ).content))) > 0
        assert not np.array_equal(refined, plain)  # the refinement changes this mask
        with _page(server) as page:
            page.set_input_files("#file", str(path))
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            shown = page.evaluate(
                "() => Array.from(document.getElementById('mask').getContext('2d')"
                ".getImageData(0, 0, 64, 48).data)"
            )
    finally:
        model.inference.update(saved)
    shown = np.array(shown, dtype=np.uint8).reshape(48, 64, 4)[..., 0] > 0
    np.testing.assert_array_equal(shown, refined)


def test_the_pages_clean_up_is_the_servers(server):
    # The page drops small parts and fills small holes itself, as slider previews need; on
    # random blobs with parts and holes of every size, it must give clean_mask's mask. And
    # at 610 x 40, 0.25% of the image is 61 pixels exactly, where (0.0025 * 610) * 40 rounds
    # up to 62: a part and a hole of 61 pixels stay.
    server, _ = server
    rng = np.random.default_rng(5)
    blobs = ndimage.gaussian_filter(rng.random((48, 64)), 1.5) > 0.5
    assert clean_mask(blobs, min_part=0.01, min_hole=0.01).sum() != blobs.sum()
    strip = np.zeros((40, 610), bool)
    strip[5, 10:71] = True  # a part of 61 pixels
    strip[10:30, 100:300] = True
    strip[15, 120:181] = False  # a hole of 61 pixels
    cases = [(blobs, shares) for shares in ((0.01, 0.0), (0.0, 0.01), (0.003, 0.02))]
    cases.append((strip, (0.0025, 0.0025)))
    with _page(server) as page:
        cleaned = [
            page.evaluate(
                """([inside, width, height, part, hole]) => {
                    [minPart, minHole] = [part, hole];
                    const mask = Uint8Array.from(inside);
                    cleanMask(mask, width, height);
                    return Array.from(mask);
                }""",
                [mask.astype(int).ravel().tolist(), mask.shape[1], mask.shape[0], *shares],
            )
            for mask, shares in cases
        ]
    for (mask, (part, hole)), got in zip(cases, cleaned):
        expected = clean_mask(mask, min_part=part, min_hole=hole)
        np.testing.assert_array_equal(np.array(got, bool).reshape(mask.shape), expected)
    np.testing.assert_array_equal(clean_mask(strip, min_part=0.0025, min_hole=0.0025), strip)


def test_a_sideways_phone_photo_is_shown_and_segmented_upright(server, tmp_path):
    server, _ = server
    upright = _image()  # 48 x 64
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left; viewers turn it right
    path = tmp_path / "phone.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(path, exif=exif.tobytes())
    with _page(server) as page:
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        pixels = page.evaluate(
            """() => ['mask', 'overlay'].map((id) => {
                const canvas = document.getElementById(id);
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                return [canvas.width, canvas.height, Array.from(data)];
            })"""
        )
    (width, height, mask), (_, _, overlay) = pixels
    assert (width, height) == (64, 48)
    mask = np.array(mask, dtype=np.uint8).reshape(48, 64, 4)[..., 0] > 0
    overlay = np.array(overlay, dtype=np.uint8).reshape(48, 64, 4)[..., :3]
    # Outside the mask the overlay is the photo itself, upright.
    assert 0 < np.count_nonzero(~mask)
    np.testing.assert_array_equal(overlay[~mask], upright[~mask])


def _mask_on_page(page):
    width, height, data = page.evaluate(
        """() => {
            const canvas = document.getElementById('mask');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            return [canvas.width, canvas.height, Array.from(data)];
        }"""
    )
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)[..., 0] > 127


def _click(page, x, y, button="left"):
    """A click on the overlay at image pixel (x, y), the canvas drawn at its displayed size."""
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / 64
    page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale, button=button)


def test_clicks_on_the_page_correct_the_mask_and_undo_and_reset_restore_it(server, tmp_path):
    server, model = server
    model.inference["min_part"] = 0.0
    path = tmp_path / "block.png"
    path.write_bytes(encode_png(_image()))
    with _page(server) as page:
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        before = _mask_on_page(page)
        assert page.is_disabled("#undo")
        # A click where the model sees background, and a right-click where it sees foreground:
        # each wins at its pixel (the server's correct_mask), and the status counts them.
        (by, bx), (fy, fx) = np.argwhere(~before)[0], np.argwhere(before)[0]
        _click(page, bx, by)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        after_one = _mask_on_page(page)
        assert after_one[by, bx]
        assert page.is_disabled("#threshold") and not page.is_disabled("#undo")
        _click(page, fx, fy, button="right")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('2 clicks;')",
                               timeout=30_000)
        after_two = _mask_on_page(page)
        assert after_two[by, bx] and not after_two[fy, fx]
        # The API answers the same clicks with the same mask.
        clicks = [{"x": int(bx), "y": int(by), "foreground": True},
                  {"x": int(fx), "y": int(fy), "foreground": False}]
        answer = httpx.post(f"{server}/api/segment", data={"clicks": json.dumps(clicks)},
                            files={"file": ("block.png", path.read_bytes(), "image/png")})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) > 127,
                                      after_two)
        page.keyboard.press("z")  # undo the right-click
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), after_one)
        page.keyboard.press("Escape")  # reset: the model's own mask again
        page.wait_for_function("document.getElementById('status').textContent.startsWith('block.png')",
                               timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), before)
        assert page.is_disabled("#undo") and not page.is_disabled("#threshold")
        # Touch screens: the toggle makes a plain click mark background.
        page.check("#background-mode")
        _click(page, fx, fy)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        assert not _mask_on_page(page)[fy, fx]


@pytest.fixture()
def labelling(tmp_path):
    """A server labelling a folder of two photographs, the second with a mask already."""
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a.png", "b.png"):
        (root / "images" / name).write_bytes(encode_png(_image()))
    saved = np.zeros((48, 64), np.uint8)
    (root / "masks" / "b.png").write_bytes(encode_png(saved))
    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, full_resolution="residual")
    with _serving(create_app(model, label=root)) as url:
        yield url, root


def test_a_folder_is_labelled_on_the_page_and_accept_writes_the_masks(labelling):
    server, root = labelling
    with _page(server) as page:
        # The first photograph without a mask is shown first.
        page.wait_for_function("document.getElementById('label-name').textContent === 'a.png'")
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        assert page.text_content("#label-count") == "photograph 1 of 2, 1 of 2 labelled"
        before = _mask_on_page(page)
        (by, bx) = np.argwhere(~before)[0]
        _click(page, bx, by)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        shown = _mask_on_page(page)
        page.click("#label-accept")
        page.wait_for_function("document.getElementById('status').textContent === 'saved masks/a.png'",
                               timeout=30_000)
        written = np.asarray(Image.open(root / "masks" / "a.png"))
        np.testing.assert_array_equal(written > 127, shown)
        assert written[by, bx] == 255  # the click is in the saved mask
        # Every photograph has a mask now; b.png's was there before: accepting asks first, and
        # declined, the file is untouched.
        assert page.text_content("#label-count") == (
            "photograph 1 of 2, 2 of 2 labelled: every photograph has a mask")
        page.click("#label-next")
        page.wait_for_function("document.getElementById('label-name').textContent === 'b.png'")
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        untouched = (root / "masks" / "b.png").read_bytes()
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click("#label-accept")
        page.wait_for_timeout(500)
        assert (root / "masks" / "b.png").read_bytes() == untouched
        page.once("dialog", lambda dialog: dialog.accept())
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent === 'saved masks/b.png'",
                               timeout=30_000)
        np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "b.png")) > 127,
                                      _mask_on_page(page))
    assert sorted(path.name for path in (root / "masks").iterdir()) == ["a.png", "b.png"]


def test_a_labelled_photograph_starts_from_its_saved_mask_and_clicks_correct_that(tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a.png", "b.png"):
        (root / "images" / name).write_bytes(encode_png(_image()))
    saved = np.zeros((48, 64), bool)  # a strip along the left edge, unlike the model's mask
    saved[4:30, :12] = True
    (root / "masks" / "b.png").write_bytes(encode_png(saved))
    keras.utils.set_random_seed(0)
    model = build_model(base_filters=4, depth=2, full_resolution="residual")
    upload = {"file": ("b.png", encode_png(_image()), "image/png")}
    with _serving(create_app(model, label=root)) as url, _page(url) as page:
        page.wait_for_function("document.getElementById('label-name').textContent === 'a.png'")
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        models = _mask_on_page(page)  # no mask yet: the model's, on the same picture as b.png
        assert (models != saved).sum() > 300 and not page.is_disabled("#threshold")
        page.keyboard.press("n")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".startsWith('b.png: 64 x 48, from its saved mask')", timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), saved)
        assert page.is_disabled("#threshold")  # the saved mask has no threshold to move
        # A right-click in the saved strip corrects the saved mask: its pixel is background,
        # and away from the strip nothing of the model's mask shows.
        _click(page, 6, 14, button="right")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        corrected = _mask_on_page(page)
        far = np.zeros_like(saved)
        far[:, 16:] = True
        assert not corrected[14, 6] and (models[far] != saved[far]).sum() > 300
        np.testing.assert_array_equal(corrected[far], saved[far])
        answer = httpx.post(f"{url}/api/segment", files={
            **upload, "start": ("b.png", (root / "masks" / "b.png").read_bytes(), "image/png")},
            data={"clicks": json.dumps([{"x": 6, "y": 14, "foreground": False}])})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) > 127,
                                      corrected)
        page.keyboard.press("r")  # reset: back to the saved mask, not the model's
        page.wait_for_function("document.getElementById('status').textContent"
                               ".endsWith('from its saved mask')", timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), saved)
        # Setting the saved mask aside: the model's mask, its slider back, and clicks correct
        # the model's mask as the API does without a start; the saved file is untouched.
        assert page.is_visible("#label-unsaved")
        page.click("#label-unsaved")
        page.wait_for_function("document.getElementById('status').textContent === 'b.png: 64 x 48'",
                               timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), models)
        assert not page.is_disabled("#threshold") and not page.is_visible("#label-unsaved")
        _click(page, 6, 14, button="right")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        answer = httpx.post(f"{url}/api/segment", files=upload,
                            data={"clicks": json.dumps([{"x": 6, "y": 14, "foreground": False}])})
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) > 127,
                                      _mask_on_page(page))
        page.keyboard.press("p")  # the photograph without a mask: the model's mask again
        page.wait_for_function("document.getElementById('status').textContent === 'a.png: 64 x 48'",
                               timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), models)
        assert not page.is_disabled("#threshold")
    assert (root / "masks" / "b.png").read_bytes() == encode_png(saved)  # nothing was accepted


def test_without_a_model_a_folder_is_labelled_from_clicks_alone(tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(encode_png(_image()))
    with _serving(create_app(None, label=root)) as url, _page(url, model="no model") as page:
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        assert not _mask_on_page(page).any()  # nothing until a click says so
        _click(page, 30, 20)  # inside the bright block (rows 10-37, columns 16-49)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('1 click;')",
                               timeout=30_000)
        shown = _mask_on_page(page)
        assert shown[20, 30] and shown.sum() > 1
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent === 'saved masks/a.png'",
                               timeout=30_000)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "a.png")) > 127, shown)


def test_without_a_model_a_saved_mask_can_be_set_aside_for_an_empty_one(tmp_path):
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "a.png").write_bytes(encode_png(_image()))
    saved = np.zeros((48, 64), bool)
    saved[4:30, :12] = True
    (root / "masks" / "a.png").write_bytes(encode_png(saved))
    with _serving(create_app(None, label=root)) as url, _page(url, model="no model") as page:
        page.wait_for_function("document.getElementById('status').textContent"
                               ".endsWith('from its saved mask')", timeout=30_000)
        np.testing.assert_array_equal(_mask_on_page(page), saved)
        assert page.text_content("#label-unsaved") == "start from an empty mask"
        page.keyboard.press("m")
        page.wait_for_function("document.getElementById('status').textContent === 'a.png: 64 x 48'",
                               timeout=30_000)
        assert not _mask_on_page(page).any() and not page.is_visible("#label-unsaved")
    assert (root / "masks" / "a.png").read_bytes() == encode_png(saved)


def test_the_folder_loop_label_accept_then_fine_tune(tmp_path):
    """The loop the page is for: a small trained model, a folder of photographs without
    masks labelled on the page with a click each, then `train.py --data DIR --init MODEL`
    fine-tuning on what was accepted."""
    from segment import data
    from segment.cli.train import main as train_main
    from segment.inference import load_segmenter
    from segment.training import TrainConfig, train

    images, masks = data.synthetic_arrays(8, size=48, difficulty="medium", seed=0)
    data.write_folder(tmp_path / "first", images, masks)
    first, _ = train(TrainConfig(data=str(tmp_path / "first"), out=str(tmp_path / "first-run"),
                                 epochs=1, steps_per_epoch=2, size=32, batch_size=4,
                                 base_filters=4, depth=2, groups="none", click_minutes=0),
                       verbose=0)
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    for index in range(3):
        (root / "images" / f"p{index}.png").write_bytes(encode_png(_image()))
    model = load_segmenter(first / "model.keras")
    with _serving(create_app(model, label=root)) as url, _page(url) as page:
        for index in range(3):
            page.wait_for_function(
                f"document.getElementById('label-name').textContent === 'p{index}.png'")
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            _click(page, 30, 20)  # inside the bright block
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('1 click;')",
                timeout=30_000)
            page.keyboard.press("Enter")
            # The status says what was saved only until the next photograph is shown: count.
            page.wait_for_function(
                "document.getElementById('label-count').textContent"
                f".includes('{index + 1} of 3 labelled')", timeout=30_000)
    assert sorted(path.name for path in (root / "masks").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert train_main(["--data", str(root), "--init", str(first / "model.keras"), "--epochs", "1",
                       "--steps-per-epoch", "2", "--groups", "none",
                       "--click-minutes", "0", "--out", str(tmp_path / "tuned")]) == 0
    tuned = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert tuned["init"] == str(first / "model.keras") and tuned["size"] == 32
    assert (tmp_path / "tuned" / "model.keras").is_file()
