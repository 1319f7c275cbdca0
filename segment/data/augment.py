"""Augmenting photographs for training: scale, rotation, shift, flips, colour, and another
image's object pasted in."""


import cv2
import numpy as np

from segment.imageio import scale_image, scaled_shape

# Folder augmentation, within what photographs of the same kind of scene plausibly show: the
# whole image at 0.75-1.25x the working size, turned by up to 30 degrees about its centre,
# shifted by up to 15% of the canvas and mirrored either way; saturation and contrast x0.7-1.3,
# brightness +-0.1 and gamma 0.7-1.4, identical for every pixel.
AUGMENT_SCALE = (0.75, 1.25)

_ROTATION = 30.0


_SHIFT = 0.15

_SATURATION = (0.7, 1.3)


_CONTRAST = (0.7, 1.3)

_BRIGHTNESS = 0.1


_GAMMA = (0.7, 1.4)

# Half the samples get the object of another training image pasted over them (Ghiasi et al.,
# "Simple Copy-Paste", CVPR 2021): objects over backgrounds they were never seen on, so that
# grouped photographs (a video's frames) are not learnt as whole pictures. Where the images come
# in groups, four samples in five: on DAVIS 2016 half the samples raised IoU on unseen
# sequences from 0.317 to 0.406, and four in five gained 0.037 more on held-out training
# sequences; on Kvasir-SEG's independent photographs four in five lost 0.011 on validation
# (docs/experiments.md, "Pasting objects").
PASTE_PROBABILITY = 0.5
GROUPED_PASTE_PROBABILITY = 0.8


def place_pair(image, mask, side):
    """An image and its `(H, W, 1)` mask scaled so the longer side is `side`, on a
    `side` x `side` canvas: top left, the rest reflect-padded, as prediction pads."""
    shape = scaled_shape(image.shape, side)
    image, mask = scale_image(image, shape), scale_image(mask, shape, mask=True)
    padding = ((0, side - shape[0]), (0, side - shape[1]), (0, 0))
    return np.pad(image, padding, mode="reflect"), np.pad(mask, padding, mode="reflect")


def augment_pair(rng, image, mask, side):
    """A random view of a uint8 image and its mask on a `side` x `side` float32 canvas."""
    height, width = image.shape[:2]
    scale = rng.uniform(*AUGMENT_SCALE) * side / max(height, width)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-_ROTATION, _ROTATION), scale)
    # Centre the image on the canvas, then shift it.
    matrix[:, 2] += side / 2 - np.array([width, height]) / 2 + rng.uniform(-_SHIFT, _SHIFT, 2) * side
    warp = dict(dsize=(side, side), borderMode=cv2.BORDER_REFLECT_101)
    image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
    mask = cv2.warpAffine(mask, matrix, flags=cv2.INTER_NEAREST, **warp)
    flip_rows, flip_cols = rng.random(2) < 0.5
    image = image[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]
    mask = mask[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]

    image = image.astype(np.float32) / 255
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * np.float32(rng.uniform(*_SATURATION))
    mean = image.mean()
    image = (image - mean) * np.float32(rng.uniform(*_CONTRAST)) + mean
    image = np.clip(image + np.float32(rng.uniform(-_BRIGHTNESS, _BRIGHTNESS)), 0, 1)
    image = image ** np.float32(rng.uniform(*_GAMMA))
    return image, mask.reshape(side, side, 1).astype(np.float32)



def paste_foreground(image, mask, other_image, other_mask):
    """`other_image`'s foreground laid over `image` (its edge softened by a pixel, so that a
    cut edge is no cue), and the masks' union: both objects are foreground. Void pixels of
    the other mask are not pasted; those of `mask` under the pasted object become foreground."""
    pasted = (other_mask == 1).astype(np.float32)
    alpha = cv2.GaussianBlur(pasted[..., 0], (0, 0), 1.0)[..., None]
    image = image * (1 - alpha) + other_image * alpha
    return image.astype(np.float32), np.where(pasted > 0, np.float32(1), mask)
