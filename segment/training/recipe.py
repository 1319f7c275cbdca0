"""The article's pieces put together: the network `train.py` builds and how it is compiled."""


import keras

from segment.losses import LOSSES
from segment.model import build_model
from segment.optimizers import StepHalvingSGD

__all__ = ["DATA_SCALES"]


# A --data model's prediction averages these factors of the working size: the scale range
# training augments over (0.75-1.25) in steps of 1/8. On Kvasir-SEG (five models) and Oxford
# flowers, against the working size alone: validation IoU +0.006 and +0.002, stray parts and
# wrong hole counts about halved on Kvasir (README). Each epoch's validation uses the working
# size alone (a fifth of the cost); `metrics.json` scores the saved model with all of them.
DATA_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)


def build_network(config):
    return build_model(
        base_filters=config.base_filters,
        depth=config.depth,
        full_resolution=config.full_resolution,
        context=config.context,
        foreground_prior=config.foreground_prior,
        # A --data model works on images scaled to the working size; prediction does the same,
        # and averages the four flips and DATA_SCALES, which at that size costs little (README).
        # A synthetic model keeps each image at its own scale and averages the flips: on the
        # default model's held-out and development sets, IoU +0.002 to +0.010 and fewer
        # stray parts on all eight; its five scales cost `hard` (small objects) 0.03.
        inference=(
            {"working_size": config.size, "tta": True, "scales": list(DATA_SCALES)}
            if config.data is not None else {"tta": True}
        ),
    )


def compile_network(model, config, *, halve_every):
    model.compile(
        optimizer=StepHalvingSGD(
            learning_rate=config.lr, momentum=config.momentum, halve_every=halve_every
        ),
        loss=LOSSES[config.loss](),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
        jit_compile=config.jit_compile,
    )

