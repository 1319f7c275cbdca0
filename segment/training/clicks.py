"""Training a click network: the segmenter's network, taught to correct a mask from clicks.

The click network is the segmenter with a second input, the guidance
(`segment.inference.clicks.guidance_maps`): the mask being corrected and discs at the clicks.
It starts as the trained segmenter (the guidance's weights at zero, so its first answer is the
segmenter's own) and learns with simulated clicks, in `ClickTraining.train_step`, as the
interactive segmentation literature trains (Sofiiuk et al. 2022, "Reviving iterative training
with mask guidance for interactive segmentation"): the mask to correct is the frozen
segmenter's, the first clicks are those the simulated annotator of the benchmark would give
(`segment.evaluation.interactive.next_click`), each on the error it is about corrected, and one
more click may follow from the click network's own answer, so it learns to correct itself.
`train.py --data` trains one after the segmenter (`train_click_network`) and saves it beside
`model.keras` as `clicks.keras` where the annotator on the validation images needs clearly
fewer clicks with it (`clicks_to_90`); `segment.inference.correct_mask` uses it where it is
there.
"""

import time

import cv2
import keras
import numpy as np
import tensorflow as tf

from segment.evaluation.interactive import model_corrections, next_click, noc, simulate
from segment.imageio import VOID_LABEL
from segment.inference.clicks import GUIDANCE, _discs, guidance_maps, guidance_radius
from segment.losses import LOSSES
from segment.model import SegmentationModel, without_void
from segment.optimizers import StepHalvingSGD
from segment.training.budget import StepTimes
from segment.training.inputs import training_stream
from segment.training.recipe import build_network

__all__ = ["CHECK_CLICKS", "CLICK_LR", "ClickTraining", "click_network", "clicks_to_90",
           "first_guidance", "next_guidance", "train_click_network"]

# The click network's rate: it starts from the trained segmenter.
CLICK_LR = 0.1
CLICK_STEPS_PER_EPOCH = 100
_TIMED_STEPS = 20  # a budgeted click phase times its first steps, then plans the rest
# The simulated annotator's clicks per validation image when the click network is checked
# against corrections without it (`clicks_to_90`).
CHECK_CLICKS = 20

# A training sample's clicks before the click network is asked: 1 to FIRST_CLICKS, drawn
# evenly; then, in a share AGAIN of the samples, one more from the click network's answer.
FIRST_CLICKS = 3
AGAIN = 0.5


def click_network(segmenter, config):
    """The network `config` describes with the guidance input, holding `segmenter`'s weights;
    the stem's weights for the guidance start at zero, so it answers as the segmenter does
    until it learns otherwise."""
    network = build_network(config, guidance=GUIDANCE)
    trained = {layer.name: layer for layer in segmenter.layers}
    for layer in network.layers:
        source = trained.get(layer.name)
        if source is None or not layer.weights:
            continue
        weights = []
        for new, old in zip(layer.get_weights(), source.get_weights()):
            if new.shape != old.shape:  # the stem's kernel: (3, 3, 3 + GUIDANCE, filters)
                grown = np.zeros_like(new)
                grown[:, :, : old.shape[2]] = old
                old = grown
            weights.append(old)
        layer.set_weights(weights)
    network.inference = dict(segmenter.inference)
    return network


def _truth(mask):
    """A training mask as `next_click` takes it: void pixels masked out."""
    mask = mask[..., 0]
    return np.ma.masked_array(mask == 1, mask=mask == VOID_LABEL)


def _fix_region(current, truth, click):
    """`current` with the error region under `click` set to the truth (in place)."""
    errors = (current != np.ma.getdata(truth)) & ~np.ma.getmaskarray(truth)
    _, regions = cv2.connectedComponents(errors.view(np.uint8), connectivity=8)
    region = regions == regions[click.y, click.x]
    current[region] = np.ma.getdata(truth)[region]


def first_guidance(starts, masks, seed, step):
    """float32 `(batch, h, w, GUIDANCE)`: for each sample the starting mask and 1 to
    FIRST_CLICKS clicks of the simulated annotator, each given as if the one before had
    corrected its whole error region. Seeded by `(seed, step)`."""
    rng = np.random.default_rng([int(seed), int(step)])
    batch = []
    for start, mask in zip(starts, masks):
        start = start[..., 0] > 0.5
        truth = _truth(mask)
        current, clicks = start.copy(), []
        for _ in range(int(rng.integers(1, FIRST_CLICKS + 1))):
            click = next_click(current, truth)
            if click is None:
                break
            clicks.append(click)
            _fix_region(current, truth, click)
        batch.append(guidance_maps(start, clicks, guidance_radius(start.shape)))
    return np.stack(batch)


def next_guidance(guides, predictions, masks, seed, step):
    """`guides` with, in a share AGAIN of the samples, the annotator's next click on the click
    network's `predictions` added."""
    rng = np.random.default_rng([int(seed), int(step), 1])
    guides = guides.copy()
    for guide, prediction, mask in zip(guides, predictions, masks):
        if rng.random() >= AGAIN:
            continue
        click = next_click(prediction[..., 0] > 0.5, _truth(mask))
        if click is not None:
            channel = 1 if click.foreground else 2
            disc = _discs(guide.shape[:2], [click], guidance_radius(guide.shape[:2]), True)
            guide[..., channel][disc] = 1.0
    return guides


@keras.saving.register_keras_serializable(package="segment")
class ClickTraining(keras.Model):
    """Trains `network` (a click network) to correct the frozen `segmenter`'s masks from
    simulated clicks: its own `train_step` makes each batch's guidance, then steps as
    `SegmentationModel.train_step` does. Only for training: save `network`."""

    def __init__(self, segmenter, network, *, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.segmenter, self.network, self.seed = segmenter, network, seed
        self.segmenter.trainable = False

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def _guidance(self, images, masks):
        step = self.optimizer.iterations
        starts = tf.cast(self.segmenter(images, training=False) > 0.5, tf.float32)
        guides = tf.numpy_function(first_guidance, [starts, masks, self.seed, step], tf.float32)
        guides.set_shape([*images.shape[:3], GUIDANCE])
        predictions = self.network([images, guides], training=False)
        guides = tf.numpy_function(next_guidance, [guides, predictions, masks, self.seed, step],
                                   tf.float32)
        guides.set_shape([*images.shape[:3], GUIDANCE])
        return tf.stop_gradient(guides)

    def train_step(self, data):
        images, masks = data
        guides = self._guidance(images, masks)
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            y, y_pred = without_void(masks, self.network([images, guides], training=True))
            loss = self.compute_loss(x=images, y=y, y_pred=y_pred, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        self.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        SegmentationModel._track_loss(self, images, loss)
        return self.compute_metrics(images, y, y_pred)


def train_click_network(config, pairs, segmenter, *, steps=None, deadline=None, initial=None,
                        verbose=2):
    """`(click_network, steps)`: a click network for `segmenter`, trained on `pairs`' training
    stream (as `config` draws it) for `steps` steps, or for as many as fit before `deadline`
    (a `time.perf_counter()` value; its first steps are timed, then the rest planned in
    epochs of `CLICK_STEPS_PER_EPOCH`). The rate starts at `CLICK_LR` and halves every quarter of
    the steps. `initial`: a click network file whose weights to start from (a fine-tuned
    run's, from the click network of the model it started from), instead of the
    segmenter's."""
    if (steps is None) == (deadline is None):
        raise ValueError("give the click training either steps or a deadline")
    keras.utils.set_random_seed(config.seed)
    network = click_network(segmenter, config)
    if initial is not None:
        saved = keras.saving.load_model(initial, safe_mode=True, compile=False)
        if [w.shape for w in saved.get_weights()] == [w.shape for w in network.get_weights()]:
            network.set_weights(saved.get_weights())
    trainer = ClickTraining(segmenter, network, seed=config.seed)
    # With a deadline, no halving during the timed steps: the plan's first comes later.
    trainer.compile(
        optimizer=StepHalvingSGD(learning_rate=CLICK_LR, momentum=config.momentum,
                                 halve_every=max(1, steps // 4) if steps else 10**9),
        loss=LOSSES[config.loss](),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
    )
    done = 0
    if steps is None:
        times = StepTimes()
        trainer.fit(training_stream(config, pairs, 0, early=False), epochs=1,
                    steps_per_epoch=_TIMED_STEPS, callbacks=[times], shuffle=False, verbose=0)
        done = _TIMED_STEPS
        step_seconds = float(np.median(np.diff(times.times[_TIMED_STEPS // 2:])))
        left = (deadline - time.perf_counter()) / step_seconds
        steps = done + max(0, int(left // CLICK_STEPS_PER_EPOCH)) * CLICK_STEPS_PER_EPOCH
        trainer.optimizer.halve_every = max(1, steps // 4)
        trainer.make_train_function(force=True)  # the halving step is traced into the graph
    while done < steps:
        per = min(CLICK_STEPS_PER_EPOCH, steps - done)
        epochs = (steps - done) // per
        stream = training_stream(config, pairs, done * config.batch_size, early=False)
        trainer.fit(stream, epochs=epochs, steps_per_epoch=per, shuffle=False, verbose=verbose)
        done += epochs * per
    return network, steps


def clicks_to_90(segmenter, network, samples, *, max_clicks=CHECK_CLICKS):
    """`{"with": [...], "without": [...]}`: per sample, the clicks of the simulated annotator
    (`segment.evaluation.interactive`) to IoU 0.90 (`max_clicks` where never reached) on
    `samples` (`(name, image, truth)`, as `validation_samples` gives them), each image's
    finished mask corrected as serve.py corrects it, with the click `network` and without
    it."""
    counts = {"with": [], "without": []}
    for _, image, truth in samples:
        corrections = model_corrections(segmenter, image, {"with": network, "without": None})
        for name, corrected in corrections.items():
            ious, _ = simulate(corrected, image, truth, max_clicks=max_clicks, until=0.9)
            counts[name].append(noc(ious, 0.9, max_clicks))
    return counts
