"""A local HTTP API and web page for segmenting images with a trained model.

`create_app(model)` builds an ASGI app (FastAPI) around a loaded segmenter:

- `POST /api/segment`: a multipart upload in the form field `file` (as rembg's server takes
  it); query options `output` (mask, prob, overlay, cutout), `threshold`, `tta`, `min_area`,
  `min_part`, `min_hole`, `fill_holes`, `refine`; answers a PNG. The segmentation is
  `segment.inference`'s, as `predict.py` runs it. An optional form field `clicks`, JSON
  `[{"x": 120, "y": 48, "foreground": true}, ...]` in the answer's pixels, corrects
  the mask (`segment.inference.correct_mask`); bad clicks get 400. An optional form field
  `start`, a mask image of the answer's size (foreground where its first channel is above the
  midpoint), is the mask the clicks correct instead of the model's, e.g. a mask saved before.
- `GET /api/health`: the model's name, input size multiple, backend and inference settings.
- With `label=DIR`: `GET /api/label` (the folder's photographs and which have masks),
  `GET /api/label/{i}/image`, `GET /api/label/{i}/mask` and `PUT /api/label/{i}/mask`
  (writes `DIR/masks/<stem>.png`; 409 over an existing mask unless `overwrite=true`).
- `GET /`: one self-contained page (no external resources): drop an image, see the overlay
  and the cut-out side by side, move a threshold slider, download the mask or the cut-out.
- `GET /docs`: the OpenAPI documentation.

Limits: request bodies above `max_upload_bytes` and images above `max_pixels` (read from the
file header, before decoding) get 413; a file that is not an image gets 415; every error is a
JSON `{"error": "..."}` without a traceback. Uploads are kept in memory, never spooled to disk.
Segmentation runs in a bounded pool of `workers` threads, so the event loop keeps answering
(the page, the health check, small images) while a large image is being segmented.
"""

import contextlib
import ctypes
import io
import threading
from pathlib import Path
from typing import Literal

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from segment.deploy.labelling import LabelFolder, MaskExists
from segment.imageio import DataError, decode_image, decoded_shape, encode_png
from segment.inference import (
    OUTPUT_KINDS,
    Click,
    correct_mask,
    finish_mask,
    parse_clicks,
    predict_probability,
    render_output,
    size_multiple,
)
from segment.model import InferenceSettings

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20  # 20 MiB
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels, e.g. 8000 x 5000
PAGE = Path(__file__).with_name("static") / "index.html"


def _release_freed_memory():
    """Return freed heap memory to the system (glibc's `malloc_trim`; a no-op elsewhere).

    Each request allocates and frees large image-sized buffers from several threads; glibc
    keeps the freed pages in per-thread arenas, and a long-running server's resident memory
    creeps up with them although nothing is leaked.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # glibc only  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


class BodyLimit:
    """ASGI middleware: answer 413 to a request whose body exceeds `limit` bytes, whether it
    says so in Content-Length or streams it, without reading past the limit."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen, exceeded = 0, False

        async def limited_receive():
            # Past the limit the app is told the client left, so it stops reading; whatever
            # it answers then is replaced by the 413 below.
            nonlocal seen, exceeded
            if not exceeded:
                message = await receive()
                seen += len(message.get("body", b""))
                exceeded = seen > self.limit
                if not exceeded:
                    return message
            return {"type": "http.disconnect"}

        async def guarded_send(message):
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        megabytes = self.limit / 2**20
        response = JSONResponse(
            {"error": f"upload larger than the server's limit of {megabytes:g} MiB"},
            status_code=413,
        )
        await response(scope, receive, send)


def _backend(model):
    return getattr(model, "backend", "keras")


def create_app(
    model,
    *,
    max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels=DEFAULT_MAX_PIXELS,
    workers=2,
    keep_orientation=False,
    label=None,
    click_network=None,
):
    """The ASGI app serving `model` (a `load_segmenter` result).

    Args:
        model: the segmenter; loaded once, shared by every request.
        max_upload_bytes: largest request body accepted. Defaults to 20 MiB.
        max_pixels: largest image (width x height) accepted. Defaults to 40 megapixels.
        workers: images segmented at once. Defaults to 2.
        keep_orientation: segment uploads as their pixels are stored, not turned upright by
            their EXIF orientation. Defaults to False.
        label: a folder of photographs to label on the page (`LabelFolder`): the API gains
            `/api/label` endpoints that read its photographs and write `label/masks/`; with
            `model` None, masks come from clicks alone (`correct_mask` without a network).
            Defaults to None.
        click_network: the model's click network (`load_click_network`), which corrections
            from clicks then start from (`correct_mask`). Defaults to None (the model's
            probability alone).
    """
    # Keep uploads in memory up to the limit (Starlette spools larger parts to a temporary
    # file): nothing a user sends is written to disk.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_bytes)
    page = PAGE.read_text(encoding="utf-8")
    folder = None if label is None else LabelFolder(label, upright=not keep_orientation)
    if model is None and folder is None:
        raise ValueError("a server without a model only labels a folder (label=DIR)")
    multiple = None if model is None else size_multiple(model)
    if model is not None:
        # Warm up: the first prediction traces the network; do it before serving, once.
        predict_probability(model, np.zeros((multiple, multiple, 3), np.float32), tta=False)
    if click_network is not None and model is not None:
        warm = np.zeros((multiple, multiple, 3), np.float32)
        correct_mask(warm, warm[..., 0], [Click(0, 0, True)], network=click_network)

    app = FastAPI(
        title="segment",
        description="Foreground/background segmentation of uploaded images.",
        version="1",
    )
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/api/health")
    async def health():
        """The model being served and how it segments by default."""
        return {
            "status": "ok",
            "model": None if model is None else model.name,
            "backend": None if model is None else _backend(model),
            "input_multiple": multiple,
            **(InferenceSettings() if model is None else InferenceSettings.of(model)).to_dict(),
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
            "keep_orientation": keep_orientation,
            "label": folder is not None,
        }

    segment_image = _segment_endpoint(_Segmenter(model, upright=not keep_orientation, click_network=click_network), max_pixels, anyio.CapacityLimiter(workers))
    app.post(
        "/api/segment",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the requested picture, PNG"},
            400: {"description": "no file in the form field `file`, or bad `clicks` or `start`"},
            413: {"description": "upload or image too large"},
            415: {"description": "not a readable image"},
        },
    )(segment_image)
    app.state.label_folder = folder
    if folder is not None:
        _add_label_endpoints(app, folder)
    return app


def _add_label_endpoints(app, folder):
    """`/api/label`: the folder's photographs by their place in the server's own listing,
    their saved masks, and writing a mask (`LabelFolder`)."""

    def photograph(index):
        if not 0 <= index < len(folder):
            raise _NoSuchPhotograph(f"no photograph {index}: the folder has {len(folder)} (0 to "
                                    f"{len(folder) - 1})")
        return index

    @app.exception_handler(_NoSuchPhotograph)
    async def missing(request, error):
        return _error(404, str(error))

    @app.get("/api/label")
    async def listing():
        """The folder being labelled: its photographs, in order, and which have masks."""
        return folder.listing()

    @app.get("/api/label/{index}/image", response_class=Response)
    async def image(index: int):
        """Photograph `index` of the listing, as it is stored."""
        data = folder.image_bytes(photograph(index))
        return Response(data, media_type=_media_type(folder.images[index].suffix))

    @app.get("/api/label/{index}/mask", response_class=Response)
    async def saved_mask(index: int):
        """Photograph `index`'s saved mask (PNG, 0/255); 404 while it has none."""
        data = folder.mask_bytes(photograph(index))
        if data is None:
            return _error(404, f"{folder.images[index].name} has no mask yet")
        return Response(data, media_type="image/png")

    @app.put("/api/label/{index}/mask")
    async def save_mask(
        index: int,
        mask: UploadFile | None = File(None, description="the mask: an image of the "
                                       "photograph's size, foreground where it is light"),
        overwrite: bool = Query(False, description="replace a mask saved before"),
    ):
        """Save photograph `index`'s mask as `masks/<stem>.png` (409 if one is there and
        `overwrite` is false)."""
        photograph(index)
        if mask is None:
            return _error(400, "no mask: send it as multipart form field 'mask'")
        data = await mask.read()
        try:
            path = await anyio.to_thread.run_sync(
                lambda: folder.save_mask(index, data, overwrite=overwrite))
        except MaskExists as error:
            return _error(409, str(error))
        except DataError as error:
            return _error(400, str(error))
        listing = folder.listing()
        return {"saved": path.name, "labelled": listing["labelled"], "count": listing["count"]}


class _NoSuchPhotograph(Exception):
    pass


def _media_type(suffix):
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}[suffix.lower()]


def _add_error_handlers(app):
    """Every error as JSON `{"error": "..."}`, never a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'request'}: {problem['msg']}"
            for problem in error.errors()
        )
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):  # 404, 405, ...: the same JSON shape as ours
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, error):  # never a traceback to the client
        return JSONResponse({"error": "internal error while segmenting"}, status_code=500)


class _Segmenter:
    """Segments an uploaded image as `predict.py` does, into a PNG of the kind asked for."""

    def __init__(self, model, *, upright=True, click_network=None):
        self.model, self.upright, self.click_network = model, upright, click_network
        self.lock = threading.Lock() if _backend(model) == "litert" else None  # one interpreter

    def png(self, data, name, output, *, tta, clicks=None, start=None, **finish):
        image = decode_image(data, name, upright=self.upright)
        if clicks is not None:  # checked against the image as decoded, before the network runs
            clicks = _parsed_clicks(clicks, image.shape)
        if start is not None:
            start = _start_mask(start, name, image.shape)
        if self.model is None or (start is not None and not clicks):
            # From clicks alone (no network, no probability), or the starting mask as it is.
            mask = correct_mask(image, None, clicks or [], start=start)
            return encode_png(render_output(output, image, mask.astype(np.float32), mask))
        options = {} if tta is None else {"tta": tta}
        with self.lock or contextlib.nullcontext():
            probability = predict_probability(self.model, image, **options)
        mask = finish_mask(self.model, image, probability, **finish) if start is None else start
        if clicks is not None:  # the mask the user saw, corrected where they clicked
            threshold = InferenceSettings.of(self.model).replace(
                threshold=finish.get("threshold")).threshold
            mask = correct_mask(image, probability, clicks, threshold=threshold, start=mask,
                                network=self.click_network)
        png = encode_png(render_output(output, image, probability, mask))
        del image, probability, mask
        _release_freed_memory()
        return png


class _BadField(Exception):
    """A bad `clicks` or `start` field: the request's fault (400), not the image's (415)."""


def _parsed_clicks(text, shape):
    try:
        return parse_clicks(text, shape)
    except DataError as error:
        raise _BadField(str(error)) from None


def _start_mask(data, name, shape):
    """The `start` field as a bool mask of the image's `shape`: foreground where its first
    channel is above the midpoint, read as stored (a mask has no orientation of its own)."""
    try:
        size = decoded_shape(data, "start", upright=False)  # from the header, before decoding
        if size == tuple(shape[:2]):
            return np.asarray(decode_image(data, "start", upright=False))[..., 0] > 0.5
    except DataError as error:
        raise _BadField(str(error)) from None
    raise _BadField(f"start: {size[1]}x{size[0]}, the image {name} is {shape[1]}x{shape[0]}")


def _segment_endpoint(segmenter, max_pixels, limiter):
    """`POST /api/segment`: its form field, query options and answers."""

    async def segment_image(
        file: UploadFile | None = File(None, description="the image (PNG, JPEG, BMP, TIFF)"),
        output: Literal[OUTPUT_KINDS] = Query(
            "mask", description="mask (0/255), prob (gray), overlay (RGB) or cutout (RGBA)"
        ),
        threshold: float | None = Query(
            None, ge=0, le=1, description="foreground above this probability (default: the model's)"
        ),
        tta: bool | None = Query(None, description="average the four flips (default: the model's)"),
        min_area: int = Query(0, ge=0, description="drop foreground parts smaller than this"),
        min_part: float | None = Query(
            None, ge=0, lt=1,
            description="drop foreground parts smaller than this share of the image "
            "(default: the model's)",
        ),
        min_hole: float | None = Query(
            None, ge=0, lt=1,
            description="fill holes smaller than this share of the image (default: the model's)",
        ),
        fill_holes: int = Query(0, ge=0, description="fill holes smaller than this"),
        refine: bool | None = Query(
            None, description="refine the mask with GrabCut on the image (default: the model's)"
        ),
        clicks: str | None = Form(
            None, description='corrections, JSON [{"x": 120, "y": 48, "foreground": true}, ...] '
            "in the pixels of the answer, the image turned upright (x right, y down): each click "
            "says its pixel is foreground (true) or background (false); with output mask, "
            "overlay or cutout",
        ),
        start: UploadFile | None = File(
            None, description="the mask the clicks correct instead of the model's (e.g. one "
            "saved before): an image of the answer's size, foreground where its first channel "
            "is above the midpoint; with output mask, overlay or cutout",
        ),
    ):
        """Segment one uploaded image; the answer is a PNG of the requested kind."""
        if file is None:
            return _error(400, "no file: send the image as multipart form field 'file'")
        if clicks is not None and output == "prob":
            return _error(400, "clicks: take output=mask, overlay or cutout")
        if start is not None and output == "prob":
            return _error(400, "start: take output=mask, overlay or cutout")
        if segmenter.model is None and output == "prob":
            return _error(400, "output=prob: this server has no model (masks from clicks alone)")
        data = await file.read()
        name = file.filename or "upload"
        try:
            _check_pixels(data, name, max_pixels)
        except _TooManyPixels as error:
            return _error(413, str(error))
        except DataError as error:
            return _error(415, str(error))
        options = dict(tta=tta, threshold=threshold, refine=refine, min_area=min_area,
                       fill_holes=fill_holes, min_part=min_part, min_hole=min_hole)
        if clicks is not None:
            options["clicks"] = clicks
        if start is not None:  # its size is checked against the image's once that is decoded
            options["start"] = await start.read()
            try:
                _check_pixels(options["start"], "start", max_pixels)
            except _TooManyPixels as error:
                return _error(413, str(error))
            except DataError as error:
                return _error(400, str(error))
        try:
            png = await anyio.to_thread.run_sync(
                lambda: segmenter.png(data, name, output, **options), limiter=limiter
            )
        except _BadField as error:
            return _error(400, str(error))
        except DataError as error:
            return _error(415, str(error))
        return Response(png, media_type="image/png")

    return segment_image


class _TooManyPixels(Exception):
    pass


def _check_pixels(data, name, max_pixels):
    """Refuse an image larger than `max_pixels` from its header, before decoding it."""
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError:
        raise _TooManyPixels(f"{name}: image larger than the server's limit of {max_pixels} pixels") from None
    except Exception:  # not an image, or not one of the formats served (PNG, JPEG, BMP, TIFF)
        raise DataError(f"{name}: not a readable image (corrupt or unsupported format)") from None
    if width * height > max_pixels:
        raise _TooManyPixels(
            f"{name}: {width}x{height} is {width * height} pixels, above the server's limit "
            f"of {max_pixels}"
        )


def _error(status, message):
    return JSONResponse({"error": message}, status_code=status)
