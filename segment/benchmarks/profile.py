"""Where a training step's time goes: the default network as `train.py` builds it, taken apart.

A step of `model.fit` on the training stream is split by measuring, interleaved and repeated
(the median is reported), what each part adds:

- the input pipeline alone: batches drawn from the training stream, no network;
- the forward pass (`training=True`), then forward, loss and gradients under
  `tf.GradientTape` without the optimizer, then `train_on_batch` on a batch in memory (all of
  it but the input pipeline and `fit`'s loop);
- the same gradient pass with MSE in place of the composite loss (what the loss terms
  cost), and with `InstanceNormalize` left out of the network (what normalisation costs);
- `fit` itself on the stream, as training runs.

The convolutions' FLOPs are counted (`segment.benchmarks.speed.forward_flops`; a backward
pass is counted as twice the forward), giving GFLOP/s against the CPU's nominal peak. With
`--onednn`, a few steps run again in a child process with oneDNN's verbose log, which names
each kernel that ran, its instruction set, and its time: the share of each kind of primitive
and whether it ran in bfloat16 on AVX512-BF16 or AMX.
"""

import argparse
import collections
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time

import keras
import tensorflow as tf

from segment.benchmarks.machine import cpu_peak
from segment.benchmarks.speed import (
    BatchClock,
    default_config,
    forward_flops,
    interleaved,
    network_settings,
)
from segment.cli.common import HelpFormatter
from segment.training import TrainConfig
from segment.training.devices import precision
from segment.training.inputs import training_stream
from segment.training.recipe import build_network, compile_network

EPILOG = """\
examples:
  python -m segment benchmark profile                  # the default synthetic network, ~3 minutes
  python -m segment benchmark profile --onednn --json profile.json
  python -m segment benchmark profile --base-filters 32   # a wider network than the default
  python -m segment benchmark profile --batch-size 4 --size 96   # smaller steps
  python -m segment benchmark profile --quick          # tiny sizes, seconds (the test suite)
"""


def _without_normalisation(config):
    """The same network with every InstanceNormalize replaced by an identity."""
    import segment.model as model_module

    original = model_module.InstanceNormalize
    model_module.InstanceNormalize = lambda name: keras.layers.Identity(name=name)
    try:
        return build_network(config)
    finally:
        model_module.InstanceNormalize = original


def _compiled(model, config):
    compile_network(model, config, halve_every=1000)
    return model


def _gradient_pass(model):
    @tf.function
    def run(images, masks):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=images, y=masks, y_pred=model(images, training=True),
                                      training=True)
        return tape.gradient(loss, model.trainable_variables)
    return run


def _timed(function, steps):
    function()  # traced, warmed
    started = time.perf_counter()
    for _ in range(steps):
        function()
    return (time.perf_counter() - started) / steps


def measure(config, *, steps, repeats):
    """Seconds per step of each part, medians over `repeats` interleaved rounds."""
    keras.utils.set_random_seed(config.seed)
    stream = iter(training_stream(config, None, 0, early=False))
    images, masks = next(stream)
    models = {
        "default": _compiled(build_network(config), config),
        "mse": _compiled(build_network(config), dataclasses.replace(config, loss="mse")),
        "no_norm": _compiled(_without_normalisation(config), config),
    }
    forward = tf.function(lambda x: models["default"](x, training=True))
    gradients = {name: _gradient_pass(model) for name, model in models.items()}

    def fit():
        clock = BatchClock()
        models["default"].fit(training_stream(config, None, 0, early=False), epochs=1,
                              steps_per_epoch=steps + 1, verbose=0, callbacks=[clock])
        return (clock.times[-1] - clock.times[0]) / steps

    parts = {
        "input pipeline": lambda: _timed(lambda: next(stream), steps),
        "forward": lambda: _timed(lambda: forward(images), steps),
        "forward + loss + gradients": lambda: _timed(
            lambda: gradients["default"](images, masks), steps),
        "the same, MSE loss": lambda: _timed(lambda: gradients["mse"](images, masks), steps),
        "the same, no normalisation": lambda: _timed(
            lambda: gradients["no_norm"](images, masks), steps),
        "train_on_batch (no input pipeline)": lambda: _timed(
            lambda: models["default"].train_on_batch(images, masks), steps),
        "fit on the stream": fit,
    }
    values = interleaved(parts, repeats, "profiling")
    return {name: statistics.median(seconds) for name, seconds in values.items()}


def onednn_kernels(config, *, steps):
    """oneDNN's verbose log of `steps` training steps in a child process, summed:
    `(sum_onednn_log, sum_onednn_convolutions)` of it."""
    code = ("import json, sys; from segment.benchmarks.profile import _child_steps; "
            "_child_steps(json.loads(sys.argv[1]), int(sys.argv[2]))")
    environment = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    output = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dataclasses.asdict(config)), str(steps)],
        env=environment, text=True, capture_output=True, check=True).stdout
    lines = output.splitlines()
    return sum_onednn_log(lines, steps), sum_onednn_convolutions(lines, steps)


def _timed_calls(lines):
    """`(fields, index of "exec")` of each oneDNN kernel call after `--- timed steps ---`."""
    timing = False
    for line in lines:
        if line == "--- timed steps ---":
            timing = True
        fields = line.split(",")
        if timing and line.startswith("onednn_verbose") and "exec" in fields:
            yield fields, fields.index("exec")


def sum_onednn_log(lines, steps):
    """Milliseconds and calls per step for each (primitive kind, implementation) in oneDNN
    verbose `lines` (`onednn_verbose,...,exec,cpu,KIND,IMPLEMENTATION,...,MS`) after the
    line `--- timed steps ---`, sorted by time."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for fields, at in _timed_calls(lines):
        kind, implementation = fields[at + 2], fields[at + 3]
        totals[(kind, implementation)][0] += float(fields[-1])
        totals[(kind, implementation)][1] += 1
    return {f"{kind} {implementation}": {"ms_per_step": round(ms / steps, 2),
                                         "calls_per_step": round(calls / steps, 1)}
            for (kind, implementation), (ms, calls) in
            sorted(totals.items(), key=lambda item: -item[1][0])}


# oneDNN's convolution problem descriptor, e.g. mb8_ic16oc32_ih64oh64kh3sh1dh0ph1_iw64ow64kw3...
_PASSES = {"forward_training": "forward", "forward_inference": "forward",
           "backward_data": "backward (data)", "backward_weights": "backward (weights)"}
_PROBLEM = re.compile(r"(?:g(\d+))?mb(\d+)_ic(\d+)oc(\d+)_.*?oh(\d+)kh(\d+).*?ow(\d+)kw(\d+)")


def sum_onednn_convolutions(lines, steps):
    """Convolutions in oneDNN verbose `lines` after `--- timed steps ---`, per pass (forward,
    backward to the data, backward to the weights) and kernel size: milliseconds, GFLOP (a
    multiply-add counted as two, from each call's problem descriptor) and GFLOP/s, per step."""
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    for fields, at in _timed_calls(lines):
        problem = _PROBLEM.search(fields[-2])
        if fields[at + 2] != "convolution" or problem is None:
            continue
        groups, batch, inputs, outputs, height, kh, width, kw = (
            int(value) if value else 1 for value in problem.groups())
        flops = 2 * batch * height * width * outputs * (inputs // groups) * kh * kw
        key = f"{_PASSES.get(fields[at + 4], fields[at + 4])} {kh}x{kw}"
        totals[key][0] += float(fields[-1])
        totals[key][1] += flops
    return {key: {"ms_per_step": round(ms / steps, 2),
                  "gflop_per_step": round(flops / steps / 1e9, 3), "gflops": round(flops / ms / 1e6)}
            for key, (ms, flops) in sorted(totals.items(), key=lambda item: -item[1][0])}


def _child_steps(settings, steps):
    config = TrainConfig(**settings)
    with precision(config.mixed_precision):
        model = _compiled(build_network(config), config)
        images, masks = next(iter(training_stream(config, None, 0, early=False)))
        for _ in range(3):
            model.train_on_batch(images, masks)
        print("--- timed steps ---", flush=True)
        for _ in range(steps):
            model.train_on_batch(images, masks)
        print("--- done ---", flush=True)


def report(config, seconds, kernels=None, convolutions=None):
    """The Markdown table, and the figures as a dict."""
    flops = (3 * forward_flops(network_settings(config), config.size, config.size)
             * config.batch_size)
    peak = cpu_peak()
    step = seconds["fit on the stream"]
    lines = [
        f"Training step of the network (base filters {config.base_filters}, depth "
        f"{config.depth}): {config.size}x{config.size}, batch "
        f"{config.batch_size}, {'bfloat16' if config.mixed_precision else 'float32'}; "
        f"{peak['model']}, {peak['cores']} cores, {peak['simd']}",
        "",
        "| part | ms per step | share of the fit step |",
        "|---|---|---|",
    ]
    for name, value in seconds.items():
        lines.append(f"| {name} | {value * 1000:.1f} | {value / step:.0%} |")
    derived = {
        "loss terms (composite - MSE)":
            seconds["forward + loss + gradients"] - seconds["the same, MSE loss"],
        "normalisation (with - without)":
            seconds["forward + loss + gradients"] - seconds["the same, no normalisation"],
        "optimizer and Keras's step (train_on_batch - gradients)":
            seconds["train_on_batch (no input pipeline)"] - seconds["forward + loss + gradients"],
        "fit's loop and the stream (fit - train_on_batch)":
            seconds["fit on the stream"] - seconds["train_on_batch (no input pipeline)"],
    }
    for name, value in derived.items():
        lines.append(f"| {name} | {value * 1000:.1f} | {value / step:.0%} |")
    gflops = flops / step / 1e9
    lines += [
        "",
        f"Convolution FLOPs per step (forward counted, backward as twice it): {flops / 1e9:.1f} "
        f"GFLOP; {gflops:.0f} GFLOP/s and {config.batch_size / step:.1f} images/s in fit, "
        f"{flops / seconds['forward + loss + gradients'] / 1e9:.0f} GFLOP/s in the gradient "
        f"pass alone; nominal float32 peak {peak['peak_gflops_fp32']:.0f} GFLOP/s "
        f"({peak['flops_per_cycle_per_core']} FLOP/cycle/core at {peak['nominal_ghz']:.2f} GHz).",
    ]
    if kernels:
        lines += ["", "| oneDNN primitive, implementation | ms per step | calls per step |",
                  "|---|---|---|"]
        lines += [f"| {name} | {value['ms_per_step']} | {value['calls_per_step']} |"
                  for name, value in kernels.items()]
    if convolutions:
        lines += ["", "| oneDNN convolutions, pass and kernel | ms per step | GFLOP per step | "
                  "GFLOP/s |", "|---|---|---|---|"]
        lines += [f"| {name} | {value['ms_per_step']} | {value['gflop_per_step']} | "
                  f"{value['gflops']} |" for name, value in convolutions.items()]
    figures = {"config": {k: getattr(config, k) for k in ("size", "batch_size", "base_filters",
                                                           "depth", "mixed_precision")},
               "seconds": seconds, "derived_seconds": derived, "gflop_per_step": flops / 1e9,
               "gflops": gflops, "images_per_second": config.batch_size / step,
               "machine": peak, "onednn": kernels, "onednn_convolutions": convolutions}
    return "\n".join(lines), figures


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed measurement")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds; the median is reported")
    parser.add_argument("--onednn", action="store_true",
                        help="also sum oneDNN's verbose log over the steps, per kernel")
    parser.add_argument("--base-filters", type=int, metavar="N",
                        help="the network's first width, doubling at each level (default: "
                             "train.py's)")
    parser.add_argument("--depth", type=int, metavar="N",
                        help="the network's downsampling levels (default: train.py's)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="images per step (default: train.py's)")
    parser.add_argument("--size", type=int, metavar="N",
                        help="the side of the training crops, a multiple of 2 ** depth "
                             "(default: train.py's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the test suite)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return parser


def main(argv=None, prog=None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "base_filters", "depth", "batch_size", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    config = default_config(args.quick, base_filters=args.base_filters, depth=args.depth,
                            batch_size=args.batch_size, size=args.size)
    if config.size % 2**config.depth:
        parser.error(f"--size must be a multiple of {2**config.depth} (2 ** depth), "
                     f"got {config.size}")
    with precision(config.mixed_precision):
        seconds = measure(config, steps=args.steps, repeats=args.repeats)
    kernels, convolutions = (onednn_kernels(config, steps=args.steps) if args.onednn
                             else (None, None))
    table, figures = report(config, seconds, kernels, convolutions)
    print(table)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(figures, file, indent=2, default=float)
    return 0
