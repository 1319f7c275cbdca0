"""Reading, validating and writing images, with one clear error per bad file.

Every reader returns plain numpy arrays and raises `DataError` (a `ValueError`) whose message
names the file and the reason, so scripts can print it as one line and move on or exit.
"""

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS", "LOSSY_EXTENSIONS", "VOID_LABEL", "DataError", "decode_image",
    "decoded_shape", "encode_png", "exif_orientation", "is_image_file", "keep_stored_orientation",
    "read_image", "read_labels", "read_mask", "scale_image", "scaled_shape", "write_png",
    "write_text",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
VOID_LABEL = 2  # a training mask's value for pixels left out of the loss and the metrics
VOC_VOID_COLOUR = (224, 224, 192)  # Pascal VOC's palette entry 255: the void border

# EXIF orientation (1-8) -> how to turn the stored pixels upright, as viewers do.
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
_keep_orientation = False
# Pillow's names of the formats whose header `decoded_shape` trusts: those the project serves.
_HEADER_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF"}


def _read_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it


class DataError(ValueError):
    """A user-supplied file or folder that cannot be used; the message names it."""


def is_image_file(path):
    """Whether `path` has one of the supported image extensions (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _decode(path):
    """Decode any supported file to a numpy array with its native depth and channels."""
    return _decode_bytes(_read_bytes(path), path)


def _read_bytes(path):
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    # np.fromfile + imdecode instead of imread: works for non-ASCII paths and never prints
    # OpenCV's own warnings for undecodable files.
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    return raw


def keep_stored_orientation(keep=True):
    """Read images as their pixels are stored, ignoring EXIF orientation, in this process
    (`--keep-orientation`). By default images are turned upright, as viewers show them."""
    global _keep_orientation
    _keep_orientation = bool(keep)


def exif_orientation(raw):
    """The EXIF orientation (1-8) of an encoded image's bytes; 1 (as stored) without one."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # not an image Pillow knows, or a broken EXIF block: taken as stored
        return 1
    return orientation if orientation in _UPRIGHT else 1


def _decode_bytes(raw, name, upright=None):
    try:
        array = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # e.g. beyond OpenCV's pixel limit
        raise DataError(f"{name}: cannot decode ({error.err or 'OpenCV error'})") from None
    if array is None or array.size == 0:
        raise DataError(f"{name}: not a readable image (corrupt or unsupported format)")
    return _oriented(array, raw, upright)


def _oriented(array, raw, upright=None):
    # IMREAD_UNCHANGED (kept for alpha and 16 bits) ignores a JPEG's or PNG's EXIF orientation,
    # but OpenCV's TIFF reader applies its own: turned upright, or back as stored, here.
    keep = _keep_orientation if upright is None else not upright
    tiff = raw[:4].tobytes() in (b"II*\x00", b"MM\x00*")
    if tiff == keep and (orientation := exif_orientation(raw)) != 1:
        undo = {6: 8, 8: 6}.get(orientation, orientation) if tiff else orientation
        array = np.ascontiguousarray(_UPRIGHT[undo](array))
    return array


def _to_unit_float(array, path):
    # Scaled in place: a large image is held once as float32, not twice.
    if array.dtype in (np.uint8, np.uint16):
        scaled = array.astype(np.float32)
        scaled *= 1.0 / np.iinfo(array.dtype).max
        return scaled
    if np.issubdtype(array.dtype, np.floating):
        # 32-bit float TIFFs: taken as already in [0, 1], clipped.
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def read_image(path):
    """Read any common image as float32 RGB in [0, 1].

    Gray, gray+alpha, RGB and RGBA; 8-bit, 16-bit or float; PNG, JPEG, BMP, TIFF.
    Alpha is dropped (composited onto nothing: the colour channels are kept as stored). The
    image is turned upright by its EXIF orientation, as viewers show it (a phone's portrait
    photograph is stored sideways), unless `keep_stored_orientation` was called.

    Args:
        path: the image file.

    Returns:
        float32 array of shape `(height, width, 3)`, RGB order, values in [0, 1].

    Raises:
        DataError: the file is missing, empty, corrupt or not an image.
    """
    return _to_rgb(_decode(path), path)


def decode_image(data, name="upload", *, upright=None):
    """`read_image` for an encoded image in memory (the bytes of a PNG, JPEG, ... file).

    Args:
        data: the bytes.
        name: what error messages call it.
        upright: turn it upright by its EXIF orientation. Defaults to None (yes, unless
            `keep_stored_orientation` was called).

    Raises:
        DataError: empty, corrupt or not an image; the message starts with `name`.
    """
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    return _to_rgb(_decode_bytes(np.frombuffer(data, dtype=np.uint8), name, upright), name)


def decoded_shape(data, name="upload", *, upright=None):
    """`(height, width)` of `decode_image(data, name, upright=upright)`, without decoding the
    pixels where the file's header says it: a PNG, JPEG, BMP or TIFF header gives the size as
    stored, and its EXIF orientation (`exif_orientation`) turns it as `decode_image` turns the
    pixels. Any other file is decoded, with `decode_image`'s errors. A file whose header reads
    but whose pixels are broken gets its header's size: only decoding finds those.

    Raises:
        DataError: as `decode_image`, for a file whose header Pillow cannot read.
    """
    try:
        with Image.open(io.BytesIO(data)) as header:
            known, (width, height) = header.format in _HEADER_FORMATS, header.size
            if header.format == "TIFF":  # as stored: Pillow's size may be turned already
                width, height = header.tag_v2[256], header.tag_v2[257]
    except Exception:  # not an image Pillow knows, empty, or too large for it: decoded below
        known = False
    if not known:
        return decode_image(data, name, upright=upright).shape[:2]
    keep = _keep_orientation if upright is None else not upright
    orientation = 1 if keep else exif_orientation(data)
    if orientation == 1:
        return height, width
    # The turn decode_image applies, on an array of no pixels: its shape is the answer.
    return _UPRIGHT[orientation](np.empty((height, width, 0), np.uint8)).shape[:2]


def _to_rgb(array, path):
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = cv2.cvtColor(array[..., 0], cv2.COLOR_GRAY2RGB)
    elif array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = cv2.cvtColor(array[..., 0], cv2.COLOR_GRAY2RGB)
    elif array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    else:
        raise DataError(f"{path}: unsupported image layout with shape {array.shape}")
    return _to_unit_float(array, path)


def read_mask(path, *, threshold=None, void=None):
    """Read a binary mask as a boolean array; void pixels (see `read_labels`) are False."""
    return read_labels(path, threshold=threshold, void=void)[0]


def read_labels(path, *, threshold=None, void=None):
    """Read a mask: its foreground, and the void pixels to leave out of training and scoring.

    Accepted without `threshold`: masks whose values are all in {0, 1} or all in {0, 255}
    (or {0, 65535} for 16-bit); JPEG masks, thresholded at the midpoint (JPEG blurs their
    edges); palette PNGs whose colour 0 is black, any other index foreground (a class). Colour
    masks are reduced to their first channel only if all channels agree. A palette PNG with
    Pascal VOC's void colour at index 255 has its 255 pixels taken as void.

    Args:
        path: the mask file.
        threshold: if given, a value in [0, 1]; pixels above `threshold * max_value` are
            foreground, which accepts any multi-valued mask. Defaults to None (strict).
        void: the value (palette index or gray level) of pixels that are neither foreground
            nor background, as Pascal VOC's 255 border. Defaults to None (VOC palettes only).

    Returns:
        `(mask, void_pixels)`: bool arrays of shape `(height, width)`; `void_pixels` is None
        when there are none.

    Raises:
        DataError: unreadable file, or a multi-valued mask without `threshold`.
    """
    raw = _read_bytes(path)
    indices = _palette_indices(raw, path)
    if indices is not None:
        array, detected = indices
        void = detected if void is None else void
    else:
        array = _single_channel(_decode_bytes(raw, path), path)
    void_pixels = array == void if void is not None else None
    if void_pixels is not None and not void_pixels.any():
        void_pixels = None
    mask = _foreground(array, path, threshold, palette=indices is not None,
                       lossy=Path(path).suffix.lower() in LOSSY_EXTENSIONS,
                       void_pixels=void_pixels)
    return (mask & ~void_pixels if void_pixels is not None else mask), void_pixels


def _palette_indices(raw, path):
    """`(indices, void)` of a palette PNG whose colour 0 is black (a label image: OpenCV would
    turn its indices into colours), void 255 where its palette has VOC's void colour; else
    None."""
    if raw[:8].tobytes() != b"\x89PNG\r\n\x1a\n" or len(raw) < 26 or raw[25] != 3:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            palette = image.getpalette() or []
            indices = np.asarray(image)
    except Exception as error:
        raise DataError(f"{path}: not a readable image ({error})") from None
    if tuple(palette[:3]) != (0, 0, 0) or indices.ndim != 2:
        return None
    indices = _oriented(indices, raw)
    voc = tuple(palette[3 * 255 : 3 * 256]) == VOC_VOID_COLOUR
    return indices, (255 if voc else None)


def _single_channel(array, path):
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # drop alpha
            array = array[..., : array.shape[2] - 1]
        if not np.all(array == array[..., :1]):
            raise DataError(f"{path}: mask has differing colour channels; save it as grayscale")
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: mask must be an integer image, got {array.dtype}")
    return array


def _foreground(array, path, threshold, *, palette, lossy, void_pixels):
    if palette:
        return array != 0
    max_value = np.iinfo(array.dtype).max
    if threshold is not None:
        return array > threshold * max_value
    if lossy:
        return array > max_value / 2
    values = np.unique(array if void_pixels is None else array[~void_pixels])
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, max_value}:
        return array > 0
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(
        f"{path}: mask is not binary (values {shown}); expected 0/1 or 0/{max_value}, "
        "or pass a threshold (or --void for the value of a void border)"
    )


def size_hw(size):
    """`(height, width)` of an image side or a `(height, width)` pair, at least 8x8."""
    height, width = (size, size) if np.isscalar(size) else size
    if height < 8 or width < 8:
        raise ValueError(f"Image size must be at least 8x8, got {size}")
    return int(height), int(width)


def as_float_rgb(image):
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"Expected a float image in [0, 1] (as segment.imageio.read_image returns), "
            f"got {image.dtype}"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an image of shape (height, width, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected a non-empty image, got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def scaled_shape(shape, side):
    """`(height, width)` of an image of `shape` scaled so that its longer side is `side`."""
    height, width = shape[:2]
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def scale_image(image, shape, *, mask=False):
    """`image` resized to `(height, width)`: area averaging to shrink, bilinear to enlarge.

    With `mask`, nearest neighbour (INTER_NEAREST_EXACT: plain INTER_NEAREST samples half a
    pixel off the centres the image interpolations use, which would shift a mask against its
    image), so a binary mask stays binary.
    """
    height, width = shape
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if mask:
        interpolation = cv2.INTER_NEAREST_EXACT
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized.reshape(height, width, *image.shape[2:])


def write_png(path, array):
    """Write `array` as a PNG atomically: a temporary file in the same folder, then rename.

    Args:
        path: destination `.png` path; its folder must exist.
        array: uint8/uint16 `(H, W)`, `(H, W, 3)` RGB or `(H, W, 4)` RGBA; bool is written
            as 0/255; floats are taken as [0, 1] and written as 8-bit.
    """
    path = Path(path)
    _write_atomically(path, encode_png(array, name=path))


def encode_png(array, name="image"):
    """The bytes of a PNG file holding `array` (as `write_png` takes it)."""
    path = name
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    elif array.ndim != 2:
        raise ValueError(f"Expected a (H, W), (H, W, 3) or (H, W, 4) array, got {array.shape}")
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return encoded.tobytes()


def write_text(path, text):
    """Write a text file atomically (UTF-8): a temporary file in the same folder, then rename."""
    _write_atomically(Path(path), text.encode("utf-8"))


def _write_atomically(path, payload):
    """Write bytes to `path` so that readers see the old file or the new one, never half."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        # mkstemp creates the file private (0600); give it the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
