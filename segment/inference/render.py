"""Output pictures: mask, probability, overlay, cut-out, and error pictures for reports."""

from pathlib import Path

import cv2
import numpy as np

__all__ = ["error_picture", "OUTPUT_KINDS", "output_path", "render_output", "render_outputs"]


OUTPUT_KINDS = ("mask", "prob", "overlay", "cutout")

_OVERLAY_TINT = (255, 40, 40)  # red wash over the foreground


_OVERLAY_OPACITY = 0.4

_OUTLINE_COLOUR = (255, 255, 0)  # yellow: visible on both the tint and most photos


def render_output(kind, image, probability, mask):
    """One output picture.

    Args:
        kind: one of `OUTPUT_KINDS`: "mask" (uint8 0/255), "prob" (uint8 gray, probability
            times 255), "overlay" (uint8 RGB: the image, foreground tinted and outlined) or
            "cutout" (uint8 RGBA: the foreground with a transparent, zeroed background).
        image: `(height, width, 3)` RGB, float in [0, 1] or uint8.
        probability: float `(height, width)` in [0, 1].
        mask: bool `(height, width)`.

    Returns:
        uint8 array `(height, width)`, `(height, width, 3)` or `(height, width, 4)`.
    """
    # Written for large images: uint8 throughout and masked copies (`np.copyto(where=)`)
    # rather than boolean indexing, which would build index arrays of 16 bytes per pixel.
    if kind == "mask":
        return mask.astype(np.uint8) * 255
    if kind == "prob":
        return to_uint8(probability)
    rgb = to_uint8(image)
    if kind == "overlay":
        return _overlay(rgb, mask)
    if kind == "cutout":
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        np.copyto(rgba[..., :3], rgb, where=mask[..., None])
        rgba[..., 3] = mask
        rgba[..., 3] *= 255
        return rgba
    raise ValueError(f"Unknown output kind {kind!r}; expected one of {OUTPUT_KINDS}")


def render_outputs(image, probability, mask, kinds=OUTPUT_KINDS):
    """`{kind: picture}` for each of `kinds`; see `render_output`."""
    return {kind: render_output(kind, image, probability, mask) for kind in kinds}


def to_uint8(image):
    if image.dtype == np.uint8:
        return image
    return cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates, no float copy


def error_picture(predicted, truth):
    """An RGB picture of a prediction against the truth, for contact sheets.

    White: correct foreground; red: false foreground; blue: missed foreground; black: correct
    background. Both arguments are bool `(H, W)`; returns uint8 `(H, W, 3)`.
    """
    picture = np.zeros(truth.shape + (3,), np.uint8)
    picture[predicted & truth] = 255
    picture[predicted & ~truth] = (230, 40, 40)
    picture[~predicted & truth] = (40, 90, 230)
    return picture


def _overlay(rgb, mask):
    # rgb * (1 - opacity) + tint * opacity, in place on one uint8 copy.
    overlay = cv2.convertScaleAbs(rgb, alpha=1.0 - _OVERLAY_OPACITY)
    tint = tuple(channel * _OVERLAY_OPACITY for channel in _OVERLAY_TINT) + (0.0,)  # cv2 scalar
    cv2.add(overlay, tint, dst=overlay)
    np.copyto(overlay, rgb, where=~mask[..., None])
    # The outline is the inner rim of the foreground, thick enough to see on large images;
    # erosion treats outside the image as foreground, so image borders are not outlined.
    thickness = max(1, round(max(mask.shape) / 400))
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), dtype=np.uint8)
    mask_u8 = mask.view(np.uint8)
    rim = mask_u8 > cv2.erode(mask_u8, kernel)
    np.copyto(overlay, np.array(_OUTLINE_COLOUR, dtype=np.uint8), where=rim[..., None])
    return overlay


def output_path(out_dir, source, kind):
    """Where the `kind` output for `source` goes: `out_dir/<stem>_<kind>.png`."""
    return Path(out_dir) / f"{Path(source).stem}_{kind}.png"

