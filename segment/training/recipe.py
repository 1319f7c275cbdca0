"""The article's pieces put together: the network `train.py` builds and how it is compiled."""


import keras

from segment.losses import LOSSES
from segment.model import build_model
from segment.optimizers import StepHalvingSGD
from segment.training.config import HALVINGS

__all__ = ["DATA_SCALES", "build_network", "compile_network"]


# A --data model's prediction averages these factors of the working size, the range training
# augments over: fewer stray parts and wrong holes than one scale (docs/experiments.md). Each
# epoch's validation uses the working size alone; `metrics.json` scores with all of them.
DATA_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)


def build_network(config, *, guidance=0):
    """The network `config` describes; with `guidance` channels, a click network's
    (`segment.training.clicks`)."""
    return build_model(
        base_filters=config.base_filters,
        depth=config.depth,
        full_resolution=config.full_resolution,
        context=config.context,
        foreground_prior=config.foreground_prior,
        guidance=guidance,
        # Every model averages the four flips; a --data model, whose images are small at its
        # working size, also DATA_SCALES (five scales cost synthetic `hard` shapes IoU).
        inference=(
            {"working_size": config.size, "tta": True, "scales": list(DATA_SCALES)}
            if config.data is not None else {"tta": True}
        ),
    )


def compile_network(model, config, *, halve_every):
    model.compile(
        optimizer=StepHalvingSGD(
            learning_rate=config.lr, momentum=config.momentum, halve_every=halve_every,
            # Spread over the run, the halvings end there, epochs added after it included.
            halvings=HALVINGS if config.halve_every is None else None,
        ),
        loss=LOSSES[config.loss](),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
        jit_compile=config.jit_compile,
    )

