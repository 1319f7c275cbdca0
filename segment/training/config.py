"""Training settings as one dataclass, saved as `config.json` in every run folder, and how
the settings left open are chosen."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from segment import data
from segment.imageio import DataError, write_text
from segment.losses import LOSSES
from segment.model import BASE_FILTERS, DEPTH, FULL_RESOLUTION, FULL_RESOLUTION_CHOICES
from segment.training.devices import native_half_precision

__all__ = [
    "choose_working_size", "CLICK_MINUTES", "DATA_LR", "DATA_MINUTES", "HALVINGS", "INIT_MINUTES",
    "init_settings", "MAX_WORKING_SIZE", "EARLY_SHARE", "SMALLEST_EARLY_SIZE", "early_epochs",
    "early_size", "schedule_epochs",
    "STEPS_PER_EPOCH", "SYNTHETIC_LR", "SYNTHETIC_MINUTES", "SYNTHETIC_SIZE", "TrainConfig",
    "check_config", "resolve_config",
]


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides a training run. The defaults are `python scripts/train.py`."""

    data: str | None = None  # image/mask folder; None trains on synthetic shapes made on the fly
    out: str | None = None  # run folder; None means runs/<timestamp>
    # Length of the run: `epochs`, or a wall-clock budget in `minutes` from which training
    # works out the epochs (recorded here once known). With neither: SYNTHETIC_MINUTES on
    # synthetic shapes, DATA_MINUTES on --data (segment.training).
    epochs: int | None = None
    minutes: float | None = None
    # Batches per epoch (validation and checkpoints follow each epoch). None: 100, or with a
    # wall-clock budget, as many as keep validation and checkpoints to a tenth of the time
    # (recorded here once known; segment.training).
    steps_per_epoch: int | None = None
    batch_size: int = 8  # momentum SGD learnt more per second from 8 than from 16
    # The side the network sees in training. Synthetic shapes: crops of size x size, learnt
    # and predicted at their own scale. --data: the working size, the longer side every image
    # is scaled to (in training and, as saved with the model, in prediction); None chooses it
    # from the images (`segment.training.choose_working_size`, then `budget_working_size`).
    size: int | None = None
    # The side the first EARLY_SHARE of the epochs train at, in steps about half as costly;
    # None: half of `size` (`early_size`), 0: none.
    early_size: int | None = None
    loss: str = "composite"  # a key of segment.losses.LOSSES
    # StepHalvingSGD's initial rate; None: SYNTHETIC_LR on synthetic shapes, DATA_LR on --data
    # (segment.training; recorded here once known).
    lr: float | None = None
    momentum: float = 0.9
    halve_every: int | None = None  # epochs between rate halvings; None: HALVINGS spread over the run
    # The epochs over which the rate halvings and the early epochs are spread; None: `epochs`.
    # A budget's last re-plan, timed at the full size once the early epochs are done, changes
    # `epochs` only and records here the epochs they were spread over (segment.training.budget).
    schedule_epochs: int | None = None
    seed: int = 0  # one seed for weights, data stream, validation set and augmentation
    difficulty: str = "mixed"  # synthetic preset (easy, medium, hard, varied, noisy) or mixed
    val_count: int = 64  # synthetic validation images (a fixed set, drawn from its own seed)
    val_fraction: float = 0.1  # held out of --data when it has no val/ folder
    # How --data's validation images are drawn without a val/ folder: "auto" holds out whole
    # groups of near-copies (a video's frames; segment.data.groups), "none" a random part, or
    # the path of a CSV file of stem,group rows.
    groups: str = "auto"
    base_filters: int = BASE_FILTERS  # width of build_model at full resolution
    depth: int = DEPTH  # down-samplings; sizes must be multiples of 2 ** depth
    # The network's full-resolution level (segment.model.build_model): "light" trains faster
    # and scored better than "residual" (docs/experiments.md, "The network").
    full_resolution: str = FULL_RESOLUTION
    context: str = "none"  # "sweep" adds the recurrent SweepContext block at the bottleneck
    # Expected share of foreground pixels, where the output bias starts; None measures it on
    # the training masks (recorded here once known).
    foreground_prior: float | None = None
    # bfloat16 on CPU, float16 on GPU; None: on where the hardware computes it natively (a GPU,
    # or a CPU with AVX512-BF16 or AMX), which trains this network about 1.5x faster.
    mixed_precision: bool | None = None
    strategy: str = "default"  # default, mirrored or multiworker
    jit_compile: bool = False  # XLA; off because it measured slower on CPU for this model
    threshold: float | None = None  # accept multi-valued --data masks, foreground > threshold
    void: int | None = None  # the mask value of void pixels, left out of the loss and scores
    keep_orientation: bool = False  # read --data as stored, not turned upright by EXIF
    # Share of --data samples with another image's object pasted in; None: where the images
    # come in groups (a video's frames), GROUPED_PASTE_PROBABILITY, else PASTE_PROBABILITY
    # (segment.data.augment; recorded here once known).
    paste: float | None = None
    # A trained model.keras to start from (fine-tuning): its run folder's network and working
    # size, its weights, and INIT_MINUTES unless a length is given (`init_settings`).
    init: str | None = None
    # The click network trained after the segmenter on --data (segment.training.clicks): its
    # wall-clock minutes (None: CLICK_MINUTES on --data, none on synthetic shapes; 0: none),
    # or its exact steps (recorded here once a budget has planned them).
    click_minutes: float | None = None
    click_steps: int | None = None

    def to_json(self, path):
        write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path):
        values = json.loads(Path(path).read_text())
        # Run folders written before the setting existed trained residual blocks there.
        values.setdefault("full_resolution", "residual")
        values.setdefault("groups", "none")  # and drew their validation images at random
        values.setdefault("keep_orientation", True)  # and read images as stored
        values.setdefault("early_size", 0)  # and trained every step at one size
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}")
        defaults = cls()
        for name, value in values.items():
            default = getattr(defaults, name)
            if default is None or value is None:  # the optional settings take either
                continue
            expected = float if isinstance(default, float) else type(default)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
                if not (expected is float and isinstance(value, int)):
                    raise ValueError(f"{path}: {name} must be {expected.__name__}, got {value!r}")
        return cls(**values)


# Wall-clock budgets when neither --epochs nor --minutes is given: a fixed number of epochs
# takes twice as long on one 2-core machine as on another, and 9 minutes of synthetic shapes
# leave the whole default command inside 10 on any of them.
SYNTHETIC_MINUTES = 9.0
DATA_MINUTES = 10.0
INIT_MINUTES = 5.0  # fine-tuning a trained model (--init)
CLICK_MINUTES = 12.0  # the click network's training after a --data segmenter's
HALVINGS = 4  # rate halvings spread evenly over the run when --halve-every is not given
STEPS_PER_EPOCH = 100  # batches per epoch when neither --steps-per-epoch nor a budget sets it

# StepHalvingSGD's initial rate when --lr is not given: high, because MSE-based losses have
# small gradients; photographs learnt better at half the synthetic rate (docs/experiments.md).
SYNTHETIC_LR = 0.5
DATA_LR = 0.25
SYNTHETIC_SIZE = 128  # synthetic crop side when --size is not given

# The share of a run's epochs trained at the early size (`TrainConfig.early_size`) and the
# smallest early size the default rule gives: at half the size a step costs half as much, and
# more of them learnt more in the same minutes (docs/experiments.md, "Performance").
EARLY_SHARE = 0.75
SMALLEST_EARLY_SIZE = 64

# --data working size when --size is not given: the images' own longer side (median over the
# training set), at most this.
MAX_WORKING_SIZE = 128


def check_config(config):
    if config.init is not None and config.data is None:
        raise ValueError("--init fine-tunes a model on your images: give --data too")
    multiple = 2**config.depth
    if config.size is not None and (config.size < multiple or config.size % multiple):
        raise ValueError(
            f"--size {config.size} cannot be taken by the network: use a multiple of {multiple} "
            f"(2 ** depth, depth={config.depth})"
        )
    if config.early_size and (config.early_size < multiple or config.early_size % multiple
                              or config.size is not None and config.early_size >= config.size):
        raise ValueError(
            f"--early-size {config.early_size} cannot be taken: use 0 (none) or a multiple of "
            f"{multiple} below the size"
        )
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; choose from {', '.join(LOSSES)}")
    if config.full_resolution not in FULL_RESOLUTION_CHOICES:
        raise ValueError(
            f"unknown full-resolution level {config.full_resolution!r}; use "
            f"{' or '.join(FULL_RESOLUTION_CHOICES)}"
        )
    if config.strategy not in ("default", "mirrored", "multiworker"):
        raise ValueError(f"unknown strategy {config.strategy!r}; use default, mirrored or multiworker")
    for name in ("epochs", "schedule_epochs", "steps_per_epoch", "batch_size", "halve_every",
                 "click_steps"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if config.paste is not None and not 0 <= config.paste <= 1:
        raise ValueError(f"--paste must be between 0 and 1, got {config.paste}")
    if config.lr is not None and not config.lr > 0:
        raise ValueError(f"--lr must be positive, got {config.lr}")
    if config.minutes is not None and config.minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {config.minutes}")
    if config.epochs is not None and config.minutes is not None:
        raise ValueError("give --epochs or --minutes, not both")
    if config.schedule_epochs is not None and config.epochs is None:
        raise ValueError("--schedule-epochs spreads the schedule of a run of --epochs: give both")
    if config.click_minutes is not None and config.click_minutes < 0:
        raise ValueError(f"--click-minutes must be 0 (no click network) or more, got "
                         f"{config.click_minutes}")
    clicks = config.click_steps or config.click_minutes
    if clicks and config.data is None:
        raise ValueError("a click network learns to correct masks of your images: give --data "
                         "with --click-minutes or --click-steps")
    if clicks and config.strategy == "multiworker":
        raise ValueError("a click network trains on one machine: leave out --click-minutes and "
                         "--click-steps with --strategy multiworker")
    if config.strategy == "multiworker" and config.out is None:
        raise ValueError(
            "--strategy multiworker needs --out: the same run folder for every worker, on "
            "storage they share (the chief writes it, every worker resumes from its backup)"
        )


def choose_working_size(pairs, *, multiple, largest=MAX_WORKING_SIZE):
    """The working size for a folder of images: their median longer side, at most `largest`,
    rounded to a multiple of `multiple` (the network's size multiple).

    Images are read for their size only (the file header), so this is fast on any folder.
    """
    longer_sides = []
    for image_path, _ in pairs:
        try:
            with Image.open(image_path) as image:
                longer_sides.append(max(image.size))
        except (OSError, ValueError) as error:
            raise DataError(f"{image_path}: cannot read the image size ({error})") from None
    side = min(float(np.median(longer_sides)), largest)
    return max(multiple, round(side / multiple) * multiple)


# What a fine-tuned run (--init) takes from the run it starts from: the network, and the
# working size and foreground prior it learnt with (a --size given still wins).
INIT_SETTINGS = ("base_filters", "depth", "full_resolution", "context", "foreground_prior")


def init_settings(config):
    """`config` with the network settings of the run folder holding `config.init` (its
    `config.json`), checked before any output is written."""
    model = Path(config.init)
    if not model.is_file():
        raise DataError(f"--init {model}: no such model file")
    recorded = model.parent / "config.json"
    if not recorded.is_file():
        raise DataError(f"--init {model}: no config.json beside it: give a model.keras in the "
                        "run folder train.py wrote")
    start = TrainConfig.from_json(recorded)
    changes = {name: getattr(start, name) for name in INIT_SETTINGS}
    if config.size is None and start.data is not None:  # a synthetic model's is a crop size
        changes["size"] = start.size
    if config.epochs is None and config.minutes is None:
        changes["minutes"] = INIT_MINUTES
    if config.early_size is None:  # the coarse shapes are learnt already
        changes["early_size"] = 0
    return dataclasses.replace(config, **changes)


def resolve_config(config, pairs, *, grouped=False):
    """A copy of `config` with the settings left open filled in (all but a budget's epochs).
    `grouped`: the training images come in groups of near-copies (`segment.data.Split`)."""
    config = dataclasses.replace(config)
    if config.paste is None and pairs is not None:
        config.paste = data.GROUPED_PASTE_PROBABILITY if grouped else data.PASTE_PROBABILITY
    if config.init is not None:
        config = init_settings(config)
    if config.size is None:
        multiple = 2**config.depth
        config.size = (
            SYNTHETIC_SIZE if pairs is None
            else choose_working_size(pairs[0], multiple=multiple)
        )
    if config.lr is None:
        config.lr = SYNTHETIC_LR if pairs is None else DATA_LR
    if config.foreground_prior is None:
        if pairs is None:
            _, masks = data.synthetic_arrays(
                64, size=config.size, difficulty=config.difficulty, seed=config.seed
            )
            fraction = float(masks.mean())
        else:
            fraction = data.foreground_fraction(pairs[0], threshold=config.threshold,
                                                  void=config.void)
        config.foreground_prior = round(min(max(fraction, 0.01), 0.99), 4)
    if config.mixed_precision is None:
        # Across machines every worker must compute alike: float32 unless asked otherwise.
        config.mixed_precision = config.strategy != "multiworker" and native_half_precision()
    if config.epochs is None and config.minutes is None:
        config.minutes = SYNTHETIC_MINUTES if pairs is None else DATA_MINUTES
    if config.click_minutes is None and config.click_steps is None:
        one_machine = config.strategy != "multiworker"
        config.click_minutes = CLICK_MINUTES if pairs is not None and one_machine else 0.0
    if config.steps_per_epoch is None and config.epochs is not None:
        config.steps_per_epoch = STEPS_PER_EPOCH  # a budget chooses its own (fit_budget)
    return config


def halve_every_steps(config):
    """Steps between rate halvings: `halve_every` epochs, or HALVINGS spread over the run
    (`schedule_epochs`, by default `epochs`)."""
    if config.halve_every is not None:
        return config.halve_every * config.steps_per_epoch
    return max(1, math.ceil(schedule_epochs(config) * config.steps_per_epoch / (HALVINGS + 1)))


def schedule_epochs(config):
    """The epochs the rate halvings and the early epochs are spread over."""
    return config.schedule_epochs or config.epochs


def early_size(config):
    """The side of the early epochs: `config.early_size`, or by default half of `config.size`
    rounded to the network's size multiple, at least SMALLEST_EARLY_SIZE (rounded up to the
    multiple); 0 when there are none (0 given, or a side not below `config.size`, which a
    budget may have lowered)."""
    multiple = 2**config.depth
    side = config.early_size
    if side is None:
        smallest = math.ceil(SMALLEST_EARLY_SIZE / multiple) * multiple
        side = max(smallest, round(config.size / 2 / multiple) * multiple)
    return side if side < config.size else 0


def early_epochs(config):
    """How many of the first epochs train at `early_size(config)`: EARLY_SHARE of
    `schedule_epochs(config)`, always leaving the last at the full size."""
    epochs = schedule_epochs(config)
    if not early_size(config) or not epochs:
        return 0
    return min(int(EARLY_SHARE * epochs), epochs - 1)
