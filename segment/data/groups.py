"""Groups of near-copies among a folder's images, so validation holds out whole groups.

Frames of one video, or several photographs of one subject, are nearly the same picture: a
random validation split puts near-copies of its images in training, and scores what the model
memorised. `find_groups` links two images when they are numbered frames of one run (`bear_00012`
and `bear_00013`) or when their thumbnails are near-duplicates (`thumbnail`,
`NEAR_DUPLICATE`), and returns the connected groups; `split_by_groups` then holds out whole
groups. How the distance limit was chosen: docs/experiments.md, "Validation on grouped
photographs".
"""

import csv
import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np

from segment.imageio import DataError, read_image

__all__ = [
    "NEAR_DUPLICATE", "Split", "find_groups", "frame_runs", "near_duplicates", "run_name",
    "read_groups_file", "split_by_groups", "thin_groups", "thumbnail",
]

THUMBNAIL_SIDE = 16
# Two thumbnails closer than this (root mean square over pixels and channels, each thumbnail
# brought to zero mean and unit spread) are near-duplicates.
NEAR_DUPLICATE = 0.3
# A numbered run is a video's frames when its neighbouring frames are closer than this, by
# their median distance: a video's are alike, photographs merely numbered in turn are not.
RUN_NEIGHBOUR = 0.65
# Within one name, a numbered frame more than this many times the median step past the one
# before starts a new run.
RUN_GAP = 5
# Validation drawn from grouped images holds at least this many groups where the folder has
# them and it takes no more than `MAX_VAL_SHARE` of the images, and validates on at most
# `VAL_IMAGES_PER_GROUP` images of each (docs/experiments.md, "More held-out groups").
MIN_VAL_GROUPS = 8
MAX_VAL_SHARE = 0.25
VAL_IMAGES_PER_GROUP = 30
_FRAME_NUMBER = re.compile(r"^(.*?)[\s_.-]*(\d+)$")


@dataclasses.dataclass
class Split:
    """A train/validation split of image/mask pairs, and how it was drawn.

    Attributes:
        train, val: `(image_path, mask_path)` lists.
        method: how validation was drawn, in words.
        train_groups, val_groups: groups on each side (None for a random split).
        near_duplicates: validation images with a near-duplicate in training (None when not
            measured).
        val_labels: a group label per validation pair (`find_groups` among them), for
            statistics over groups; None when not found.
        notes: lines on how the folder was read (`pairing_note`, `lossy_mask_note`), shown
            before the split.
        set_aside: held-out images not validated on (`thin_groups`), in neither list.
    """

    train: list
    val: list
    method: str
    train_groups: int | None = None
    val_groups: int | None = None
    near_duplicates: int | None = None
    val_labels: list | None = None
    notes: list = dataclasses.field(default_factory=list)
    set_aside: int = 0

    def describe(self):
        """One line on how validation was drawn; a second, a warning, if near-duplicates of
        validation images remain in training."""
        groups = (f" ({self.val_groups} of {self.train_groups + self.val_groups} groups)"
                  if self.val_groups is not None else "")
        total = len(self.train) + len(self.val) + self.set_aside
        lines = [*self.notes, f"validation: {len(self.val)} of {total} images{groups}, "
                 f"{self.method}"]
        if self.near_duplicates:
            lines.append(
                f"warning: {self.near_duplicates} of {len(self.val)} validation images have a "
                "near-duplicate among the training images, so validation scores pictures "
                "training has nearly seen: hold out whole groups (--groups auto or FILE) or "
                "give a val/ folder of other subjects"
            )
        return "\n".join(lines)

    @property
    def grouped(self):
        """Whether the images come in groups: held out as fewer groups than half the images."""
        if self.train_groups is None:
            return False
        images = len(self.train) + len(self.val) + self.set_aside
        return self.train_groups + self.val_groups <= images / 2

    def summary(self):
        """What `metrics.json` records of the split."""
        return {"method": self.method, "train_images": len(self.train),
                "val_images": len(self.val), "set_aside": self.set_aside,
                "train_groups": self.train_groups,
                "val_groups": self.val_groups, "val_near_duplicates": self.near_duplicates}


def thumbnail(path, side=THUMBNAIL_SIDE):
    """A `side` x `side` x 3 thumbnail of an image, at zero mean and unit spread, flattened:
    brightness and contrast changes between two frames do not separate them."""
    small = cv2.resize(_small_image(path, side), (side, side), interpolation=cv2.INTER_AREA)
    small = small - small.mean()
    return (small / max(float(small.std()), 1e-3)).ravel().astype(np.float32)


def _small_image(path, side):
    """The image as float RGB, a JPEG decoded at a quarter of its size (4 to 15 times faster
    than whole, and as good for a thumbnail) when that leaves 4 pixels per thumbnail pixel."""
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        reduced = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
        if reduced is not None and min(reduced.shape[:2]) >= 4 * side:
            return cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    return read_image(path)


def near_duplicates(thumbnails, *, limit=NEAR_DUPLICATE, against=None):
    """Pairs `(i, j)` of rows of `thumbnails` whose distance is below `limit`; with `against`,
    pairs of a row of `thumbnails` and a row of `against`.

    The distance is the root mean square difference of two `thumbnail`s.
    """
    first = np.asarray(thumbnails, np.float32)
    second = first if against is None else np.asarray(against, np.float32)
    if len(first) == 0 or len(second) == 0:
        return []
    size = first.shape[1]
    squares = (first**2).sum(axis=1)[:, None] + (second**2).sum(axis=1)[None, :]
    pairs = []
    for start in range(0, len(first), 512):  # a block of rows at a time: bounded memory
        block = squares[start : start + 512] - 2 * first[start : start + 512] @ second.T
        close = np.argwhere(np.maximum(block, 0) / size < limit**2)
        pairs += [(start + i, j) for i, j in close if against is not None or start + i < j]
    return pairs


def run_name(stem):
    """The name a numbered frame shares with its run (`bear_00012` -> `bear`); an unnumbered
    stem is its own name."""
    match = _FRAME_NUMBER.match(stem)
    return match.group(1) if match else stem


def frame_runs(stems):
    """Runs of numbered frames, as lists of indices into `stems` in frame order: stems that are
    one name and a number (`bear_00012`, `clip3-017`, `IMG_0001`), numbered without a gap of
    more than `RUN_GAP` times the name's median step. Stems in no run of two are left out."""
    numbered = {}
    for index, stem in enumerate(stems):
        match = _FRAME_NUMBER.match(stem)
        if match:
            numbered.setdefault(match.group(1), []).append((int(match.group(2)), index))
    runs = []
    for frames in numbered.values():
        frames.sort()
        steps = np.diff([number for number, _ in frames])
        limit = RUN_GAP * max(1.0, float(np.median(steps))) if len(steps) else 0
        run = [frames[0][1]]
        for (_, index), step in zip(frames[1:], steps):
            if step > limit:
                runs.append(run)
                run = []
            run.append(index)
        runs.append(run)
    return [run for run in runs if len(run) > 1]


def find_groups(pairs, *, thumbnails=None, limit=NEAR_DUPLICATE, run_limit=RUN_NEIGHBOUR):
    """A group label per pair, numbered from 0 in order of first appearance: the connected
    groups of two kinds of link. Near-duplicate images (thumbnails closer than `limit`) are
    linked wherever they are. A numbered run (`frame_runs`) whose neighbouring frames are
    typically alike (their median distance below `run_limit`) is linked whole, as a video's
    frames are, scene changes and fast motion included; photographs merely numbered in turn
    (`0001.jpg`, `0002.jpg`, ...) are not alike and stay apart."""
    stems = [Path(image).stem for image, _ in pairs]
    if thumbnails is None:
        thumbnails = np.stack([thumbnail(image) for image, _ in pairs]) if pairs else []
    thumbnails = np.asarray(thumbnails, np.float32)
    parent = list(range(len(pairs)))

    def root(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for a, b in near_duplicates(thumbnails, limit=limit):
        parent[root(a)] = root(b)
    for run in frame_runs(stems):
        steps = [_distance(thumbnails[a], thumbnails[b]) for a, b in zip(run, run[1:])]
        if np.median(steps) < run_limit:
            for index in run[1:]:
                parent[root(index)] = root(run[0])
    numbers = {}
    return [numbers.setdefault(root(index), len(numbers)) for index in range(len(pairs))]


def _distance(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def read_groups_file(path, pairs):
    """A group label per pair from a CSV file of `stem,group` rows (a header row is allowed)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the groups file ({error})") from None
    groups = {}
    for number, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DataError(f"{path}: line {number}: expected stem,group, got {','.join(row)!r}")
        groups[row[0].strip()] = row[1].strip()
    stems = [Path(image).stem for image, _ in pairs]
    missing = [stem for stem in stems if stem not in groups]
    if len(missing) == len(stems) and rows:  # maybe a header row and nothing that matches
        raise DataError(f"{path}: names no image of the training folder (stem,group rows)")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{path}: no group for {len(missing)} image(s): {shown}")
    numbers = {}
    return [numbers.setdefault(groups[stem], len(numbers)) for stem in stems]


def split_by_groups(pairs, groups, *, val_fraction=0.1, seed=0, min_groups=MIN_VAL_GROUPS,
                    max_share=MAX_VAL_SHARE):
    """`(train_pairs, val_pairs)` with whole groups held out: groups in a seeded random order
    go to validation until it holds `val_fraction` of the pairs and, when the pairs come in
    groups of more than one, at least `min_groups` groups, passing over any group that would
    take it past `max_share` of the pairs or twice `val_fraction`, whichever is more. None
    when no such split exists (one group holds nearly everything).

    A few held-out groups say little of the next one (three videos' scores may differ by
    0.3): `min_groups` buys an estimate over more of them where the folder has them."""
    count = len(pairs)
    target = max(1, round(count * val_fraction))
    members = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    if all(len(indices) == 1 for indices in members.values()):
        min_groups = 1  # independent images: the share alone
    limit = max(2 * target, round(max_share * count), 1)
    held_out, held_groups = set(), 0
    for group in np.random.default_rng(seed).permutation(sorted(members)):
        if len(held_out) >= target and held_groups >= min_groups:
            break
        if len(held_out) + len(members[group]) <= limit:
            held_out.update(members[group])
            held_groups += 1
    if not held_out or len(held_out) == count:
        return None
    train = [pair for index, pair in enumerate(pairs) if index not in held_out]
    val = [pair for index, pair in enumerate(pairs) if index in held_out]
    return train, val


def thin_groups(labels, per_group=VAL_IMAGES_PER_GROUP):
    """Indices that keep at most `per_group` members of each group (a label per item), evenly
    spaced in their order: a video's neighbouring frames are near copies, so validating on
    every one costs time and adds little."""
    members = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    kept = []
    for indices in members.values():
        if len(indices) > per_group:
            spots = np.linspace(0, len(indices) - 1, per_group).round().astype(int)
            indices = [indices[spot] for spot in spots]
        kept += indices
    return sorted(kept)
