"""Reading, validating and writing images, with one clear error per bad file.

Every reader returns plain numpy arrays and raises `DataError` (a `ValueError`) whose message
names the file and the reason, so scripts can print it as one line and move on or exit.
"""

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS", "DataError", "decode_image", "encode_png", "is_image_file", "read_image",
    "read_mask", "scale_image", "scaled_shape", "write_png", "write_text",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
    return _decode_bytes(raw, path)


def _decode_bytes(raw, name):
    try:
        array = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # e.g. beyond OpenCV's pixel limit
        raise DataError(f"{name}: cannot decode ({error.err or 'OpenCV error'})") from None
    if array is None or array.size == 0:
        raise DataError(f"{name}: not a readable image (corrupt or unsupported format)")
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
    Alpha is dropped (composited onto nothing: the colour channels are kept as stored).

    Args:
        path: the image file.

    Returns:
        float32 array of shape `(height, width, 3)`, RGB order, values in [0, 1].

    Raises:
        DataError: the file is missing, empty, corrupt or not an image.
    """
    return _to_rgb(_decode(path), path)


def decode_image(data, name="upload"):
    """`read_image` for an encoded image in memory (the bytes of a PNG, JPEG, ... file).

    Raises:
        DataError: empty, corrupt or not an image; the message starts with `name`.
    """
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    return _to_rgb(_decode_bytes(np.frombuffer(data, dtype=np.uint8), name), name)


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


def read_mask(path, *, threshold=None):
    """Read a binary mask as a boolean array.

    Accepted without `threshold`: masks whose values are all in {0, 1} or all in {0, 255}
    (or {0, 65535} for 16-bit). Colour masks are reduced to their first channel only if all
    channels agree.

    Args:
        path: the mask file.
        threshold: if given, a value in [0, 1]; pixels above `threshold * max_value` are
            foreground, which accepts any multi-valued mask. Defaults to None (strict).

    Returns:
        bool array of shape `(height, width)`.

    Raises:
        DataError: unreadable file, or a multi-valued mask without `threshold`.
    """
    array = _decode(path)
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # drop alpha
            array = array[..., : array.shape[2] - 1]
        if not np.all(array == array[..., :1]):
            raise DataError(f"{path}: mask has differing colour channels; save it as grayscale")
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: mask must be an integer image, got {array.dtype}")
    max_value = np.iinfo(array.dtype).max
    if threshold is not None:
        return array > threshold * max_value
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, max_value}:
        return array > 0
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(
        f"{path}: mask is not binary (values {shown}); expected 0/1 or 0/{max_value}, "
        "or pass a threshold"
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
