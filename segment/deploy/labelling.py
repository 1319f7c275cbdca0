"""A folder of photographs being labelled through the page (`serve.py --label DIR`).

The server lists the folder once, at start-up, and names every photograph by its place in
that listing: a request says "photograph 3", never a path or a file name, so what it reads
and writes is always a file the server chose. Masks are written to `DIR/masks/<stem>.png`
(0/255, the image's upright size), atomically, and an existing mask only when the request
says to overwrite it.
"""

from pathlib import Path

import numpy as np

from segment.data import IMAGE_FOLDERS, image_files
from segment.imageio import DataError, decode_image, decoded_shape, write_png

__all__ = ["LabelFolder", "MaskExists"]


class MaskExists(Exception):
    """The photograph has a mask already, and the request did not ask to replace it."""


class LabelFolder:
    """The photographs of `root/images/` (or of `root` itself, or of the image folders
    `find_pairs` knows), and their masks in `root/masks/`."""

    def __init__(self, root, *, upright=True):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder to label")
        self.root, self.upright = root, upright
        self.images = []
        for folder in [root / name for name in IMAGE_FOLDERS] + [root]:
            if folder.is_dir():
                self.images = image_files(folder)
                if self.images:
                    break
        if not self.images:
            raise DataError(f"{root}: no images to label (looked in {root}/images and {root})")
        self.masks_folder = root / "masks"

    def __len__(self):
        return len(self.images)

    def mask_path(self, index):
        return self.masks_folder / f"{self.images[index].stem}.png"

    def listing(self):
        """What the page shows: the folder, and each photograph's name and whether it has a
        mask."""
        items = [{"name": image.name, "labelled": self.mask_path(index).is_file()}
                 for index, image in enumerate(self.images)]
        return {"folder": str(self.root), "count": len(items),
                "labelled": sum(item["labelled"] for item in items), "items": items}

    def image_bytes(self, index):
        return self.images[index].read_bytes()

    def mask_bytes(self, index):
        """The saved mask as a PNG, or None."""
        path = self.mask_path(index)
        return path.read_bytes() if path.is_file() else None

    def save_mask(self, index, data, *, overwrite=False):
        """Writes the uploaded mask (an image of the photograph's upright size, foreground
        where its first channel is above the midpoint) as `masks/<stem>.png`, 0/255.

        Raises:
            DataError: the upload is not an image of the photograph's size.
            MaskExists: a mask is there already and `overwrite` is False.
        """
        image = self.images[index]
        # Its size (upright, unless the server keeps orientation) from its header alone.
        shape = decoded_shape(self.image_bytes(index), image.name, upright=self.upright)
        upload = decode_image(data, "mask", upright=False)
        if upload.shape[:2] != shape:
            raise DataError(f"mask: {upload.shape[1]}x{upload.shape[0]}, the photograph "
                            f"{image.name} is {shape[1]}x{shape[0]}")
        mask = np.asarray(upload)[..., 0] > 0.5
        path = self.mask_path(index)
        if path.exists() and not overwrite:
            raise MaskExists(f"{image.name} has a mask already ({path.name}): send "
                             "overwrite=true to replace it")
        self.masks_folder.mkdir(exist_ok=True)
        write_png(path, mask)
        return path

