"""What a run trains and validates on: the training stream and the validation samples."""

from pathlib import Path

from tqdm import tqdm

from segment import data
from segment.imageio import DataError
from segment.training.config import early_epochs, early_size

VALIDATION_SEED_OFFSET = 1_000_003  # the validation set is drawn from its own stream


def folder_pairs(config):
    """The `segment.data.Split` of `--data` into training and validation pairs, paired and
    checked before any output is written: its val/ folder, or validation drawn from the
    training images as `config.groups` says. Every validation image with a near-duplicate among
    the training images is counted."""
    splits = data.dataset_splits(config.data)
    if "train" not in splits and "all" not in splits:
        raise DataError(
            f"{config.data}: no training images: expected {config.data}/images or "
            f"{config.data}/train (found only {', '.join(sorted(splits))})"
        )
    pairs = data.find_pairs(splits.get("train", splits.get("all")))
    val_pairs = data.find_pairs(splits["val"]) if "val" in splits else []
    thumbnails = {pair[0]: data.thumbnail(pair[0]) for pair in tqdm(
        pairs + val_pairs, desc="comparing images", unit="image", disable=None, leave=False)}
    if val_pairs:
        split = data.Split(pairs, val_pairs, method="the val/ folder")
    else:
        split = _draw_validation(config, pairs, thumbnails)
    if not split.val:
        raise DataError(
            f"{config.data}: one image is not enough to train and validate; add images or a "
            "val/ folder"
        )
    val_thumbnails = [thumbnails[image] for image, _ in split.val]
    close = data.near_duplicates(val_thumbnails,
                                 against=[thumbnails[image] for image, _ in split.train])
    split.near_duplicates = len({index for index, _ in close})
    if split.val_labels is None:
        split.val_labels = data.find_groups(split.val, thumbnails=val_thumbnails)
    notes = (data.pairing_note(pairs), data.lossy_mask_note(pairs + val_pairs))
    split.notes = [note for note in notes if note]
    return split


def _draw_validation(config, pairs, thumbnails):
    if config.groups == "none" or len(pairs) < 2:
        train, val = data.split_pairs(pairs, val_fraction=config.val_fraction, seed=config.seed)
        return data.Split(train, val, method="a random part (--groups none)")
    if config.groups == "auto":
        groups = data.find_groups(pairs, thumbnails=[thumbnails[image] for image, _ in pairs])
        how = "whole groups of numbered frames and near-duplicate images (--groups auto)"
    else:
        groups = data.read_groups_file(config.groups, pairs)
        how = f"whole groups from {config.groups}"
    split = data.split_by_groups(pairs, groups, val_fraction=config.val_fraction,
                                 seed=config.seed)
    if split is None:  # one group holds nearly every image: its last ones, in name order
        count = max(1, round(len(pairs) * config.val_fraction))
        return data.Split(pairs[:-count], pairs[-count:], method=(
            "the last images by name: one group holds nearly every image"))
    train, val = split
    label = dict(zip((image for image, _ in pairs), groups))
    val_groups = [label[image] for image, _ in val]
    kept = data.thin_groups(val_groups, per_group=data.VAL_IMAGES_PER_GROUP)
    if len(kept) < len(val):
        how += (f"; at most {data.VAL_IMAGES_PER_GROUP} evenly spaced images of each held-out "
                f"group validate, {len(val) - len(kept)} others are set aside")
    val = [val[index] for index in kept]
    return data.Split(train, val, method=how, train_groups=len(set(groups)) - len(set(val_groups)),
                      val_groups=len(set(val_groups)), val_labels=[val_groups[i] for i in kept],
                      set_aside=len(val_groups) - len(kept))


class FolderSamples:
    """Validation samples `(name, image, truth)` read from their files on every pass, so
    memory does not grow with the validation set (the files were checked at start-up)."""

    def __init__(self, pairs, threshold, void=None):
        self.pairs, self.threshold, self.void = pairs, threshold, void

    def __len__(self):
        return len(self.pairs)

    def __iter__(self):
        for image_path, mask_path in self.pairs:
            image, mask = data.read_pair(image_path, mask_path, threshold=self.threshold,
                                         void=self.void)
            yield Path(image_path).name, image, mask


def training_stream(config, pairs, start, shard=None, *, early=True):
    """The training stream, resumed at sample `start`: with `early`, its first
    `early_epochs(config)` epochs at `early_size(config)`, then at `config.size`.

    `pairs` is `(train_pairs, val_pairs)` for `--data`, None for the synthetic stream; `shard`
    is `(worker, workers)` for one worker's share of each batch.
    """
    epochs = early_epochs(config) if early else 0
    switch = epochs * config.steps_per_epoch * config.batch_size if epochs else 0
    stream = _stream_at(config.size, config, pairs, max(start, switch), shard)
    if start >= switch:
        return stream
    # The two parts' batches differ in height and width: the stream leaves them unknown.
    small = _stream_at(early_size(config), config, pairs, start, shard)
    return small.take((switch - start) // config.batch_size).concatenate(stream)


def _stream_at(size, config, pairs, start, shard):
    if pairs is None:
        return data.synthetic_dataset(
            size=size,
            batch_size=config.batch_size,
            difficulty=config.difficulty,
            seed=config.seed,
            start=start,
            shard=shard,
        )
    return data.folder_dataset(
        pairs[0],
        size=size,
        batch_size=config.batch_size,
        augment=True,
        seed=config.seed,
        threshold=config.threshold,
        void=config.void,
        start=start,
        shard=shard,
        paste=config.paste,
    )


def validation_samples(config, pairs):
    """The validation samples `(name, image, truth)` at the images' own size: validation runs
    the model as prediction does. `pairs` as for `training_stream`."""
    if pairs is not None:
        return FolderSamples(pairs[1], config.threshold, config.void)
    images, masks = data.synthetic_arrays(
        config.val_count,
        size=config.size,
        difficulty=config.difficulty,
        seed=config.seed + VALIDATION_SEED_OFFSET,
    )
    return [
        (f"{index:05d}", image, mask[..., 0] > 0.5)
        for index, (image, mask) in enumerate(zip(images, masks))
    ]


def distributed_stream(config, pairs, start, strategy):
    """Each worker's share of the training stream, as a distributed dataset: worker `i` of
    `n` reads rows `i * b` to `(i + 1) * b - 1` of every batch, `b = batch_size / n`."""

    def worker_stream(context):
        if context.num_replicas_in_sync != context.num_input_pipelines:
            raise ValueError(
                f"--strategy multiworker takes one device per worker; this cluster has "
                f"{context.num_replicas_in_sync} devices on {context.num_input_pipelines} workers"
            )
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        return training_stream(config, pairs, start, shard=shard)

    return strategy.distribute_datasets_from_function(worker_stream)

