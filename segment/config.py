"""Training settings as one dataclass, saved as `config.json` in every run folder."""

import dataclasses
import json
from pathlib import Path

from segment.imageio import write_text

__all__ = ["TrainConfig"]


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
    batch_size: int = 8  # momentum SGD learnt more per second from 8 than from 16 (README)
    # The side the network sees in training. Synthetic shapes: crops of size x size, learnt
    # and predicted at their own scale. --data: the working size, the longer side every image
    # is scaled to (in training and, as saved with the model, in prediction); None chooses it
    # from the images (`segment.training.choose_working_size`, then `budget_working_size`).
    size: int | None = None
    loss: str = "composite"  # a key of segment.losses.LOSSES
    # StepHalvingSGD's initial rate; None: SYNTHETIC_LR on synthetic shapes, DATA_LR on --data
    # (segment.training; recorded here once known).
    lr: float | None = None
    momentum: float = 0.9
    halve_every: int | None = None  # epochs between rate halvings; None: HALVINGS spread over the run
    seed: int = 0  # one seed for weights, data stream, validation set and augmentation
    difficulty: str = "mixed"  # synthetic preset (easy, medium, hard, varied, noisy) or mixed
    val_count: int = 64  # synthetic validation images (a fixed set, drawn from its own seed)
    val_fraction: float = 0.1  # held out of --data when it has no val/ folder
    base_filters: int = 16  # width of build_model at full resolution
    depth: int = 4  # down-samplings; sizes must be multiples of 2 ** depth
    # The network's full-resolution level (segment.model.build_model): "light", the stem
    # alone on the way down and one convolution on the way up, trained faster and scored
    # better than "residual" blocks there (README, "What it took").
    full_resolution: str = "light"
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

    def to_json(self, path):
        write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path):
        values = json.loads(Path(path).read_text())
        # Run folders written before the setting existed trained residual blocks there.
        values.setdefault("full_resolution", "residual")
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
