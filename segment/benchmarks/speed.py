"""Throughput of the custom pieces against stock Keras, in one run.

Training images/s of the segmenter as written (InstanceNormalize, StepHalvingSGD,
SegmentationModel's own train_step) against the same network built from stock Keras
(GroupNormalization(groups=-1), SGD + ExponentialDecay, plain keras.Model), in float32 and in
mixed_bfloat16; the default network as `train.py` builds and compiles it (its size, batch and
composite loss), in both; the cost of the composite loss; XLA; achieved GFLOP/s against the
CPU's nominal float32 peak; inference and tiled-prediction speed per backend (Keras float32 and
mixed_bfloat16, and the exported model in onnxruntime, LiteRT and OpenVINO); and the synthetic
generator.

Every measurement is repeated, the repeats of all variants are interleaved (variant A, B, C,
then A, B, C again, ...) and the median is reported, so that load from other processes hits
every variant alike: on a shared machine compare the ratios, not the absolute numbers.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from segment.benchmarks.machine import cpu_peak
from segment.benchmarks.speed_table import POLICIES, markdown_table
from segment.cli.common import HelpFormatter
from segment.data import synthetic_arrays, synthetic_dataset
from segment.imageio import DataError
from segment.inference import predict_probability
from segment.layers import InstanceNormalize
from segment.losses import CompositeLoss
from segment.model import SegmentationModel, build_model
from segment.optimizers import StepHalvingSGD
from segment.training import TrainConfig, resolve_config
from segment.training.config import EARLY_SHARE, early_size, halve_every_steps
from segment.training.recipe import build_network, compile_network

EPILOG = """\
examples:
  python scripts/benchmark_speed.py                      # full run, a few minutes on 2 cores
  python scripts/benchmark_speed.py --json speed.json    # also write the numbers as JSON
  python scripts/benchmark_speed.py --quick              # tiny sizes, seconds (the test suite)
  python scripts/benchmark_speed.py --repeats 5 --no-xla
  python scripts/benchmark_speed.py --quick --xla --json /tmp/speed.json

The table printed at the end is Markdown, ready for docs/benchmarks.md.
"""

LEARNING_RATE = 0.01
HALVE_EVERY = 1000

# Sizes of the full run and of --quick (which the test suite runs).
FULL = {
    "size": 128, "batch_size": 16, "steps": 5, "repeats": 3,
    "inference_size": 256, "inference_batch": 8,
    "tiled_size": 2048, "tile": 512, "overlap": 64,
    "generator_batches": 8, "base_filters": 16, "depth": 3, "full_resolution": "residual",
}
QUICK = {
    "size": 32, "batch_size": 4, "steps": 3, "repeats": 1,
    "inference_size": 32, "inference_batch": 2,
    "tiled_size": 96, "tile": 64, "overlap": 16,
    "generator_batches": 2, "base_filters": 4, "depth": 2, "full_resolution": "residual",
}


# --------------------------------------------------------------------------------------------
# Models


def forward_flops(settings, height, width):
    """FLOPs of one image's forward pass through the convolutions, counted analytically.

    `2 * H_out * W_out * C_in * C_out * k_h * k_w` per Conv2D (one multiply and one add per
    weight per output pixel). Bias, normalisation and activations are left out: a few FLOPs per
    element against hundreds. The shapes come from the same network built at a fixed size.
    """
    model = build_model(
        (height, width, 3), base_filters=settings["base_filters"], depth=settings["depth"],
        full_resolution=settings["full_resolution"],
    )
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, out_height, out_width, _ = layer.output.shape
            total += 2 * out_height * out_width * int(np.prod(layer.kernel.shape))
    return total


def stock_twin(model):
    """The same network from stock Keras: GroupNormalization(groups=-1), plain keras.Model.

    Every InstanceNormalize is replaced by `GroupNormalization(groups=-1)` with the same
    epsilon and dtype policy; everything else is cloned as it is and the weights are copied,
    so the two compute the same function.
    """

    def clone(layer):
        if isinstance(layer, InstanceNormalize):
            return keras.layers.GroupNormalization(
                groups=-1, epsilon=layer.epsilon, dtype=layer.dtype_policy, name=layer.name
            )
        return layer.__class__.from_config(layer.get_config())

    cloned = keras.models.clone_model(model, clone_function=clone)
    twin = keras.Model(cloned.input, cloned.output, name=f"{model.name}_stock")
    twin.set_weights(model.get_weights())
    if isinstance(twin, SegmentationModel) or twin.count_params() != model.count_params():
        raise RuntimeError(
            f"The stock twin must be a plain keras.Model with {model.count_params()} "
            f"parameters, got {type(twin).__name__} with {twin.count_params()}"
        )
    return twin


def build_pair(policy, settings):
    """(custom, stock) models under `policy`, with the same weights."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        custom = build_model(base_filters=settings["base_filters"], depth=settings["depth"],
                             full_resolution=settings["full_resolution"])
        stock = stock_twin(custom)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return custom, stock


def compile_custom(model, loss="mse", jit_compile=False):
    model.compile(
        optimizer=StepHalvingSGD(LEARNING_RATE, momentum=0.9, halve_every=HALVE_EVERY),
        loss=loss,
        jit_compile=jit_compile,
    )
    return model


def compile_stock(model, loss="mse"):
    schedule = keras.optimizers.schedules.ExponentialDecay(
        LEARNING_RATE, HALVE_EVERY, 0.5, staircase=True
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss=loss, jit_compile=False
    )
    return model


# --------------------------------------------------------------------------------------------
# Timing


class BatchClock(keras.callbacks.Callback):
    """Records when each training batch ends.

    The rate is taken between the first and the last batch of a `fit` call, which leaves out
    the iterator start-up and the end-of-epoch work that `fit` does once per call.
    """

    def on_train_begin(self, logs=None):
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def training_rate(model, images, masks, batch_size):
    """Images per second of `model.fit` over the batches after the first."""
    clock = BatchClock()
    model.fit(
        images, masks, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
        callbacks=[clock],
    )
    timed_batches = len(clock.times) - 1
    return batch_size * timed_batches / (clock.times[-1] - clock.times[0])


def interleaved(measures, repeats, description):
    """`repeats` interleaved calls of each `name -> function returning a value`.

    Returns:
        dict `name -> list of values`, one per repeat, in repeat order.
    """
    values = {name: [] for name in measures}
    with tqdm(total=repeats * len(measures), desc=description, unit="run", leave=True) as bar:
        for _ in range(repeats):
            for name, measure in measures.items():
                bar.set_postfix_str(name)
                values[name].append(measure())
                bar.update()
    return values


def paired_ratio(numerators, denominators):
    """Median over repeats of the ratio within each repeat.

    Both values of a pair were measured one right after the other, under the same load, so
    their ratio is steadier than the ratio of two medians.
    """
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def _seconds(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# The benchmark


def exported_backends(model, folder):
    """`{"onnxruntime": ..., "litert": ..., "openvino": ..., "openvino_float32": ...}`: `model`
    exported into `folder` and loaded (OpenVINO in its own precision, bfloat16 where the CPU
    computes it natively, and in float32), or `{}` without the export extra
    (`pip install -e ".[export]"`)."""
    try:
        from segment.deploy.export import export_model
        from segment.inference import load_exported

        backends = {}
        for format, name, suffix in (("onnx", "onnxruntime", ".onnx"), ("litert", "litert", ".tflite"),
                                     ("openvino", "openvino", ".xml")):
            backends[name] = load_exported(export_model(model, folder / f"model{suffix}", format))
        backends["openvino_float32"] = load_exported(folder / "model.xml", precision="float32")
        return backends
    except DataError as error:
        print(f"exported backends left out: {error}", flush=True)
        return {}


def run_benchmark(settings, *, xla=True):
    """Measure everything; returns the results dict that `--json` writes."""
    saved = {name: value for name, value in settings.items() if name != "default"}
    results = {"cpu": cpu_peak(), "settings": {**saved, "xla": xla}, "samples": {}}
    models = _compiled_models(settings, xla=xla)
    _measure_training(results, models, settings, xla=xla)
    # Inference, per backend: the custom model in Keras (float32, mixed_bfloat16) and, when
    # the export extra is installed, its float32 weights exported to ONNX, LiteRT and OpenVINO.
    backends = {policy: models[f"custom_{policy}"] for policy in POLICIES}
    with tempfile.TemporaryDirectory() as folder:
        backends.update(exported_backends(models["custom_float32"], Path(folder)))
    results["backends"] = list(backends)
    if "openvino" in backends:
        results["openvino_precision"] = backends["openvino"].precision
    _measure_inference(results, backends, settings)
    _measure_tiled(results, backends, settings)
    _measure_generator(results, settings)
    return results


def default_config(quick, **changes):
    """The `TrainConfig` of `train.py` with no arguments (tiny with `quick`), with the
    `changes` given that are not None."""
    config = TrainConfig(epochs=1, steps_per_epoch=10, early_size=16 if quick else None)
    if quick:
        config.size, config.base_filters, config.depth, config.batch_size = 32, 4, 2, 2
    for name, value in changes.items():
        if value is not None:
            setattr(config, name, value)
    return resolve_config(config, None)


def network_settings(config):
    """The settings of a `TrainConfig`'s network that `forward_flops` reads."""
    return {"base_filters": config.base_filters, "depth": config.depth,
            "full_resolution": config.full_resolution}


def build_default(policy, config):
    """The network `train.py` builds from `config`, compiled as it compiles it (composite loss,
    `StepHalvingSGD` at its rate), under `policy`."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_network(config)
        compile_network(model, config, halve_every=halve_every_steps(config))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def _compiled_models(settings, *, xla):
    """The custom and stock networks, compiled, by name (`custom_float32`, ...), and the
    default network as `train.py` builds it (`default_float32`, ...)."""
    print("building the custom and stock models in float32 and mixed_bfloat16 ...", flush=True)
    models = {}
    for policy in POLICIES:
        custom, stock = build_pair(policy, settings)
        models[f"custom_{policy}"] = compile_custom(custom)
        models[f"stock_{policy}"] = compile_stock(stock)
        models[f"default_{policy}"] = build_default(policy, settings["default"])
        # Its own model, so that neither is traced for both sizes.
        models[f"default_early_{policy}"] = build_default(policy, settings["default"])
    models["custom_float32_composite"] = compile_custom(
        build_pair("float32", settings)[0], loss=CompositeLoss()
    )
    if xla:
        for policy in POLICIES:
            models[f"custom_{policy}_xla"] = compile_custom(
                build_pair(policy, settings)[0], jit_compile=True
            )
    return models


def _measure_training(results, models, settings, *, xla):
    """Training images per second of every model, and the ratios between them."""
    size, batch_size, steps = settings["size"], settings["batch_size"], settings["steps"]
    repeats, default = settings["repeats"], settings["default"]
    images, masks = synthetic_arrays(batch_size * steps, size=size, seed=0)
    # The default network trains on its own batches and size, for as many steps, and at the
    # size of a run's early epochs.
    default_data = synthetic_arrays(default.batch_size * steps, size=default.size, seed=0)
    early_data = synthetic_arrays(default.batch_size * steps, size=early_size(default), seed=0)

    def train(name):
        if name.startswith("default_early_"):
            return lambda: training_rate(models[name], *early_data, default.batch_size)
        if name.startswith("default_"):
            return lambda: training_rate(models[name], *default_data, default.batch_size)
        return lambda: training_rate(models[name], images, masks, batch_size)

    for name in tqdm(models, desc="warm-up (tracing, compiling)", unit="model"):
        train(name)()
    samples = interleaved({name: train(name) for name in models}, repeats, "training")
    rates = {name: statistics.median(values) for name, values in samples.items()}

    # Every repeat's value is kept too, to judge the noise behind each median.
    results["samples"]["train_img_s"] = samples
    train_flops = 3 * forward_flops(settings, size, size)
    results["training_gflop_per_image"] = train_flops / 1e9
    for policy in POLICIES:
        custom, stock = rates[f"custom_{policy}"], rates[f"stock_{policy}"]
        results[f"train_custom_{policy}_img_s"] = custom
        results[f"train_stock_{policy}_img_s"] = stock
        results[f"train_ratio_custom_stock_{policy}"] = paired_ratio(
            samples[f"custom_{policy}"], samples[f"stock_{policy}"]
        )
        results[f"train_custom_{policy}_gflops"] = custom * train_flops / 1e9
        if xla:
            results[f"train_custom_{policy}_xla_img_s"] = rates[f"custom_{policy}_xla"]
            results[f"xla_speedup_{policy}"] = paired_ratio(
                samples[f"custom_{policy}_xla"], samples[f"custom_{policy}"]
            )
    for kind in ("custom", "stock"):
        results[f"bf16_speedup_{kind}"] = paired_ratio(
            samples[f"{kind}_mixed_bfloat16"], samples[f"{kind}_float32"]
        )
    default_flops = 3 * forward_flops(network_settings(default), default.size, default.size)
    results["default_network"] = {"size": default.size, "batch_size": default.batch_size,
                                  **network_settings(default), "loss": default.loss}
    results["default_gflop_per_image"] = default_flops / 1e9
    for policy in POLICIES:
        results[f"train_default_{policy}_img_s"] = rates[f"default_{policy}"]
        results[f"train_default_{policy}_gflops"] = rates[f"default_{policy}"] * default_flops / 1e9
    results["bf16_speedup_default"] = paired_ratio(
        samples["default_mixed_bfloat16"], samples["default_float32"])
    _measure_run(results, samples, default)
    results["train_custom_float32_composite_img_s"] = rates["custom_float32_composite"]
    results["composite_loss_cost_ratio"] = paired_ratio(
        samples["custom_float32"], samples["custom_float32_composite"]
    )


def _measure_run(results, samples, default):
    """The default recipe over a run, its first EARLY_SHARE of steps at the early size, against
    every step at the full size: images/s over the run (per repeat), their ratio, GFLOP/s."""
    side = early_size(default)
    flops = {s: 3 * forward_flops(network_settings(default), s, s) for s in (side, default.size)}
    results.update(early_size=side, early_gflop_per_image=flops[side] / 1e9)
    for policy in POLICIES:
        early, full = samples[f"default_early_{policy}"], samples[f"default_{policy}"]
        run = [1 / (EARLY_SHARE / a + (1 - EARLY_SHARE) / b) for a, b in zip(early, full)]
        results[f"train_default_early_{policy}_img_s"] = statistics.median(early)
        results[f"train_default_run_{policy}_img_s"] = statistics.median(run)
        results[f"run_speedup_{policy}"] = paired_ratio(run, full)
        results[f"train_default_run_{policy}_gflops"] = statistics.median(run) * (
            EARLY_SHARE * flops[side] + (1 - EARLY_SHARE) * flops[default.size]) / 1e9


def _measure_inference(results, backends, settings):
    """Images per second of one batch at `inference_size`, per backend."""
    repeats = settings["repeats"]
    inference_size, inference_batch = settings["inference_size"], settings["inference_batch"]
    batch = synthetic_arrays(inference_batch, size=inference_size, seed=1)[0]

    def infer(name):
        model = backends[name]
        return lambda: inference_batch / _seconds(lambda: model.predict_on_batch(batch))

    for name in backends:
        infer(name)()  # traces the predict function (sizes the graph) at this size
    inference = interleaved({name: infer(name) for name in backends}, repeats, "inference")
    results["samples"]["inference_img_s"] = inference
    results["inference_bf16_speedup"] = paired_ratio(
        inference["mixed_bfloat16"], inference["float32"]
    )
    inference_flops = forward_flops(settings, inference_size, inference_size)
    results["inference_gflop_per_image"] = inference_flops / 1e9
    for name, values in inference.items():
        results[f"inference_{name}_img_s"] = statistics.median(values)
        results[f"inference_{name}_gflops"] = statistics.median(values) * inference_flops / 1e9
        results[f"inference_{name}_speedup"] = paired_ratio(values, inference["float32"])


def _measure_tiled(results, backends, settings):
    """Seconds for one large image through tiled prediction, per backend."""
    repeats = settings["repeats"]
    large = synthetic_arrays(1, size=settings["tiled_size"], seed=2)[0][0]

    def tiled(name):
        model = backends[name]
        return lambda: _seconds(
            lambda: predict_probability(
                model, large, tile=settings["tile"], overlap=settings["overlap"]
            )
        )

    for name in backends:
        tiled(name)()
    tiled_seconds = interleaved({name: tiled(name) for name in backends}, repeats, "tiled")
    results["samples"]["tiled_seconds"] = tiled_seconds
    for name, values in tiled_seconds.items():
        results[f"tiled_{name}_seconds"] = statistics.median(values)
        results[f"tiled_{name}_speedup"] = paired_ratio(tiled_seconds["float32"], values)


def _measure_generator(results, settings):
    """Images per second of the synthetic generator's tf.data stream, as training reads it."""
    repeats, size, batch_size = settings["repeats"], settings["size"], settings["batch_size"]
    stream = iter(synthetic_dataset(size=size, batch_size=batch_size, seed=3))
    next(stream)  # starts the pipeline's workers

    def generate():
        count = settings["generator_batches"]
        return count * batch_size / _seconds(lambda: [next(stream) for _ in range(count)])

    results["generator_img_s"] = statistics.median(
        interleaved({"generator": generate}, repeats, "generator")["generator"]
    )


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and one repeat: seconds, for tests (numbers meaningless)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"interleaved repeats per measurement; unset: {FULL['repeats']}, "
                             f"or {QUICK['repeats']} with --quick")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training batches per timed fit, at least 2; unset: {FULL['steps']}, "
                             f"or {QUICK['steps']} with --quick")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                        help="also train with XLA (jit_compile=True); unset: on, or off with "
                             "--quick (compiling takes longer than the rest of a quick run)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the results to this JSON file")
    return parser


def parse_args(argv, prog=None):
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for name in ("repeats", "steps"):
        value = getattr(args, name)
        minimum = 2 if name == "steps" else 1
        if value is not None and value < minimum:
            parser.error(f"--{name} must be at least {minimum}, got {value}")
    return args


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    # Seven models are traced on purpose; TensorFlow's retracing warning would only be noise.
    tf.get_logger().setLevel("ERROR")
    settings = dict(QUICK if args.quick else FULL)
    for name in ("repeats", "steps"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    xla = (not args.quick) if args.xla is None else args.xla
    results = run_benchmark({**settings, "default": default_config(args.quick)}, xla=xla)
    table = markdown_table(results)
    print()
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0

