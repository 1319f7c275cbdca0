"""Classical segmenters to compare the learned model against.

Each baseline has the model's call shape: a float32 RGB image in [0, 1] of shape
`(height, width, 3)` in, a bool mask of shape `(height, width)` out, at the image's own size.
None of them learns anything; they show what thresholding, active contours and graph cuts
give on the same images.

Otsu and Chan-Vese split the image into two classes without knowing which one is the object,
so both pick the polarity the same way: the foreground is the class less present on the image
border (objects are assumed to sit inside the frame, not around it).
"""

import cv2
import numpy as np
from skimage.color import rgb2gray
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import morphological_chan_vese

__all__ = ["BASELINES", "chan_vese", "grabcut", "otsu"]


def _validate_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"Expected a float image with values in [0, 1], got dtype {image.dtype}")
    return image


def _border_pixels(mask):
    return np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])


def _foreground_inside(mask):
    """`mask` or its complement, whichever covers less of the image border."""
    return ~mask if _border_pixels(mask).mean() > 0.5 else mask


def otsu(image, *, smoothing_sigma=1.0):
    """Global Otsu threshold on the gray image.

    Args:
        image: float RGB image in [0, 1], shape `(height, width, 3)`.
        smoothing_sigma: standard deviation, in pixels, of a Gaussian blur applied before
            thresholding, which removes single-pixel speckle from noise; 0 turns it off.
            Defaults to 1.0.

    Returns:
        bool mask of shape `(height, width)`; the class less present on the image border is
        the foreground. A flat image gives an empty mask.
    """
    gray = rgb2gray(_validate_image(image))
    if smoothing_sigma > 0:
        gray = gaussian(gray, sigma=smoothing_sigma)
    # On a flat image threshold_otsu returns the single value and `>` selects nothing.
    return _foreground_inside(gray > threshold_otsu(gray))


def chan_vese(image, *, iterations=50, smoothing=1):
    """Morphological Chan-Vese active contour on the gray image (scikit-image).

    Fits two regions of constant intensity with a smooth boundary, which is more robust to
    noise than a single threshold. Starts from scikit-image's checkerboard level set, so no
    initial contour is needed.

    Args:
        image: float RGB image in [0, 1], shape `(height, width, 3)`.
        iterations: level-set updates. Defaults to 50, enough for a checkerboard start to
            settle on simple images of a few hundred pixels a side.
        smoothing: curvature smoothing steps per update. Defaults to 1.

    Returns:
        bool mask of shape `(height, width)`; the region less present on the image border is
        the foreground. Flat images, and images under 2 pixels on a side (no gradient to
        follow), give an empty mask.

    References:
        Marquez-Neila, Baumela, Alvarez, "A morphological approach to curvature-based
        evolution of curves and surfaces", TPAMI 2014.
    """
    gray = rgb2gray(_validate_image(image))
    if min(gray.shape) < 2 or gray.min() == gray.max():
        return np.zeros(gray.shape, dtype=bool)
    level_set = morphological_chan_vese(gray, num_iter=iterations, smoothing=smoothing)
    return _foreground_inside(level_set.astype(bool))


def grabcut(image, *, margin=0.05, iterations=5, seed=0):
    """OpenCV GrabCut initialised with the image minus a margin as the object rectangle.

    Colour models (Gaussian mixtures) for object and background are fitted and refined with
    graph cuts; everything outside the rectangle is fixed background.

    Args:
        image: float RGB image in [0, 1], shape `(height, width, 3)`.
        margin: fraction of the width (and of the height) left outside the rectangle on each
            side, at least one pixel. Defaults to 0.05.
        iterations: GrabCut iterations. Defaults to 5.
        seed: seed for OpenCV's random generator, which GrabCut's k-means initialisation
            uses; fixed so that a run can be repeated. Defaults to 0.

    Returns:
        bool mask of shape `(height, width)`. Images smaller than 3 pixels on a side leave no
        room for a rectangle with background around it and give an empty mask.

    References:
        Rother, Kolmogorov, Blake, "GrabCut: interactive foreground extraction using iterated
        graph cuts", SIGGRAPH 2004.
    """
    image = _validate_image(image)
    height, width = image.shape[:2]
    margin_x = max(1, round(margin * width))
    margin_y = max(1, round(margin * height))
    rect_width, rect_height = width - 2 * margin_x, height - 2 * margin_y
    if rect_width < 1 or rect_height < 1:
        return np.zeros((height, width), dtype=bool)

    # GrabCut wants 8-bit BGR.
    bgr = cv2.cvtColor(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    labels = np.zeros((height, width), dtype=np.uint8)
    background_model = np.zeros((1, 65), dtype=np.float64)
    foreground_model = np.zeros((1, 65), dtype=np.float64)
    cv2.setRNGSeed(seed)
    cv2.grabCut(
        bgr,
        labels,
        (margin_x, margin_y, rect_width, rect_height),
        background_model,
        foreground_model,
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


BASELINES = {"otsu": otsu, "chan_vese": chan_vese, "grabcut": grabcut}
