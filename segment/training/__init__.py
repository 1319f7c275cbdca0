"""`train(config) -> (run folder, metrics)`: the whole training job.

- `config`: `TrainConfig`, the defaults of the settings left open, and how they are chosen.
- `recipe`: the network `train.py` builds and how it is compiled (the article's pieces).
- `inputs`: the training stream and the validation samples.
- `loop`: `train` itself.
- `budget`: timing the machine, planning epochs to a wall-clock budget, the deadline.
- `callbacks`: validation as prediction runs, and the run folder's writers.
- `run_folder`: creating, resuming and replacing run folders.
- `mask_settings`: how a trained model's masks are finished, chosen on validation.
- `clicks`: the click network, trained after the segmenter to correct masks from clicks.
- `devices`: strategies, the chief worker, lost workers, mixed precision.
- `selection`: choices on a few validation groups, held to one standard error.
"""

from segment.training.budget import (
    FEW_STEPS,
    SMALLEST_WORKING_SIZE,
    budget_working_size,
    plan_budget,
    replan_epochs,
)
from segment.training.config import (
    CLICK_MINUTES,
    DATA_LR,
    DATA_MINUTES,
    EARLY_SHARE,
    HALVINGS,
    INIT_MINUTES,
    MAX_WORKING_SIZE,
    SMALLEST_EARLY_SIZE,
    STEPS_PER_EPOCH,
    SYNTHETIC_LR,
    SYNTHETIC_MINUTES,
    SYNTHETIC_SIZE,
    TrainConfig,
    check_config,
    choose_working_size,
    early_epochs,
    early_size,
    resolve_config,
)
from segment.training.devices import native_half_precision
from segment.training.loop import train
from segment.training.mask_settings import (
    MIN_HOLES,
    MIN_PARTS,
    STRAY_PART_PRICE,
    choose_mask_settings,
)
from segment.training.recipe import DATA_SCALES

__all__ = [
    "budget_working_size",
    "check_config",
    "choose_mask_settings",
    "choose_working_size",
    "CLICK_MINUTES",
    "DATA_LR",
    "DATA_MINUTES",
    "DATA_SCALES",
    "EARLY_SHARE",
    "early_epochs",
    "early_size",
    "FEW_STEPS",
    "HALVINGS",
    "INIT_MINUTES",
    "MAX_WORKING_SIZE",
    "MIN_HOLES",
    "MIN_PARTS",
    "native_half_precision",
    "plan_budget",
    "replan_epochs",
    "resolve_config",
    "SMALLEST_EARLY_SIZE",
    "SMALLEST_WORKING_SIZE",
    "STEPS_PER_EPOCH",
    "STRAY_PART_PRICE",
    "SYNTHETIC_LR",
    "SYNTHETIC_MINUTES",
    "SYNTHETIC_SIZE",
    "train",
    "TrainConfig",
]
