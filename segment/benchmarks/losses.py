"""Loss-variant benchmark: one segmenter per loss and seed, scored on one fixed test set.

Every loss trains the same network (the residual `build_model` of depth 3 in FULL) on the same
synthetic data stream, for the same steps, with the same StepHalvingSGD settings; seed `s`
fixes both the initial weights (equal across losses) and the training stream. Each model is
scored with `segment.metrics` on one test set drawn from a seed no training stream uses.
Outputs in --out:

  results.csv   one row per loss and seed: per-image mean metrics and training seconds
  results.md    mean ± standard deviation over seeds per loss, best value in bold
  results.png   IoU, B0 error and spurious specks per loss, with the spread over seeds
  samples.png   the first test images as segmented by each loss (seed 0)
  settings.json what every row was trained with; a rerun must match it
  predictions/  the thresholded test predictions of every run (<loss>_seed<seed>.npy)

The benchmark resumes: rows already in results.csv are kept and their runs skipped, and each
row is appended as soon as its run ends, so a killed benchmark loses at most one run.
"""

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from segment.benchmarks.figures import bar_chart, samples_sheet
from segment.cli.common import HelpFormatter, choice_list, fail, positive
from segment.data import PRESETS, synthetic_arrays, synthetic_dataset
from segment.imageio import write_png
from segment.losses import LOSSES
from segment.metrics import evaluate_masks
from segment.model import build_model
from segment.optimizers import StepHalvingSGD

EPILOG = """\
examples:
  python scripts/benchmark_losses.py --out bench/losses                 # all losses, 3 seeds
  python scripts/benchmark_losses.py --out bench/ --losses mse,composite --seeds 5
  python scripts/benchmark_losses.py --out /tmp/bench --quick           # seconds (the tests)

Rerunning the same command continues a killed benchmark; adding losses or seeds to a finished
one trains only the new runs. Other sizes, steps or rates need a new --out (or --overwrite).
"""

CSV_COLUMNS = (
    "loss", "seed", "iou", "dice", "boundary_f1", "hd95", "b0_error", "b1_error", "spurious",
    "train_seconds",
)
METRIC_COLUMNS = CSV_COLUMNS[2:-1]
# Table heading, number format and whether a higher value is better, per reported column.
COLUMNS = {
    "iou": ("IoU", "{:.3f}", True),
    "dice": ("Dice", "{:.3f}", True),
    "boundary_f1": ("boundary F1", "{:.3f}", True),
    "hd95": ("HD95 px", "{:.2f}", False),
    "b0_error": ("B0 err", "{:.2f}", False),
    "b1_error": ("B1 err", "{:.2f}", False),
    "spurious": ("spurious", "{:.2f}", False),
    "train_seconds": ("train s", "{:.0f}", False),
}
# The test set's seed: far from the training streams' seeds 0, 1, 2, ...
TEST_SEED = 2_000_003
OUTPUTS = ("results.csv", "results.md", "results.png", "samples.png", "settings.json")

# Full-run settings: 7 losses x 3 seeds in about 15-20 minutes on 2 CPU cores. The network is
# residual build_model() of depth 3; lr 0.4 is the rate the MSE-type losses need (their gradients are
# small), used for every loss so that they all see the same optimizer.
FULL = {"losses": ",".join(LOSSES), "seeds": 3, "steps": 200, "size": 64, "batch_size": 8,
        "lr": 0.4, "test_count": 64, "base_filters": 16, "depth": 3}
QUICK = {"losses": "mse,composite", "seeds": 1, "steps": 3, "size": 32, "batch_size": 4,
         "lr": 0.4, "test_count": 4, "base_filters": 4, "depth": 2}
SAMPLE_COUNT = 4  # test images in samples.png


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides every row of a benchmark; stored as settings.json and checked on resume."""

    steps: int
    size: int
    batch_size: int
    lr: float
    momentum: float  # StepHalvingSGD's
    halve_every: int  # steps between halvings of the rate
    difficulty: str  # synthetic preset of the training streams and the test set
    test_count: int
    test_seed: int
    base_filters: int
    depth: int


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--out", type=Path, metavar="DIR", default=Path("bench/losses"),
        help="benchmark folder (created; an earlier benchmark there is continued)")
    add("--losses", type=choice_list(LOSSES, what="loss(es)"), default=None, metavar="NAMES",
        help=f"comma-separated, from {', '.join(LOSSES)} (default: all; quick: {QUICK['losses']})")
    add("--seeds", type=positive, default=None, metavar="N",
        help=f"seeds 0..N-1 per loss (default: {FULL['seeds']}; quick: {QUICK['seeds']})")
    add("--steps", type=positive, default=None, metavar="N",
        help=f"training steps per run (default: {FULL['steps']}; quick: {QUICK['steps']})")
    add("--size", type=positive, default=None, metavar="PX",
        help=f"side of training and test images (default: {FULL['size']}; quick: {QUICK['size']})")
    add("--batch-size", type=positive, default=None, metavar="N",
        help=f"default: {FULL['batch_size']}; quick: {QUICK['batch_size']}")
    add("--lr", type=float, default=None,
        help=f"StepHalvingSGD's initial rate, the same for every loss (default: {FULL['lr']})")
    add("--momentum", type=float, default=0.9)
    add("--halve-every", type=positive, default=None, metavar="STEPS",
        help="steps between halvings of the rate (default: a third of --steps, so that the "
             "rate halves twice, the shape of scripts/train.py's schedule)")
    add("--difficulty", choices=tuple(PRESETS), default="hard",
        help="synthetic preset of the training streams and of the test set")
    add("--test-count", type=positive, default=None, metavar="N",
        help=f"test images (default: {FULL['test_count']}; quick: {QUICK['test_count']})")
    add("--quick", action="store_true",
        help=f"smoke-test sizes: {QUICK['size']} px, base_filters {QUICK['base_filters']}, "
             f"depth {QUICK['depth']}, {QUICK['steps']} steps; seconds per run")
    add("--overwrite", action="store_true",
        help="start afresh in --out, replacing an earlier benchmark's outputs")
    return parser


def settings_from_args(args):
    """`(settings, losses, seeds)`: flags given win, the rest come from FULL or QUICK."""
    preset = QUICK if args.quick else FULL

    def pick(name):
        value = getattr(args, name)
        return preset[name] if value is None else value

    steps = pick("steps")
    settings = Settings(
        steps=steps, size=pick("size"), batch_size=pick("batch_size"), lr=float(pick("lr")),
        momentum=float(args.momentum),
        halve_every=args.halve_every or max(1, math.ceil(steps / 3)),
        difficulty=args.difficulty, test_count=pick("test_count"), test_seed=TEST_SEED,
        base_filters=preset["base_filters"], depth=preset["depth"],
    )
    losses = args.losses if args.losses is not None else preset["losses"].split(",")
    return settings, losses, list(range(pick("seeds")))


def check_settings(settings):
    multiple = 2**settings.depth
    if settings.size % multiple:
        raise ValueError(
            f"--size must be a multiple of {multiple} (2 ** depth) for depth={settings.depth}, "
            f"got {settings.size}"
        )
    if not settings.lr > 0:
        raise ValueError(f"--lr must be > 0, got {settings.lr}")
    if not 0.0 <= settings.momentum <= 1.0:
        raise ValueError(f"--momentum must be in [0, 1], got {settings.momentum}")


# --------------------------------------------------------------------------------------------
# Training and scoring


@functools.lru_cache(maxsize=2)
def test_set(settings):
    """The fixed test set: `(images, masks)`, masks as bool `(count, size, size)`."""
    images, masks = synthetic_arrays(
        settings.test_count, size=settings.size, difficulty=settings.difficulty,
        seed=settings.test_seed,
    )
    return images, masks[..., 0] > 0.5


def score(predictions, masks):
    """Per-image mean of each metric of METRIC_COLUMNS.

    Where exactly one of prediction and truth is empty, `segment.metrics.hd95` scores the
    image diagonal; should it ever give inf there, the HD95 mean is taken over the finite
    images (NaN when there are none) so that one such image cannot make the whole row inf.
    """
    rows = [evaluate_masks(prediction, mask) for prediction, mask in zip(predictions, masks)]
    means = {name: float(np.mean([row[name] for row in rows])) for name in METRIC_COLUMNS}
    finite = [row["hd95"] for row in rows if math.isfinite(row["hd95"])]
    means["hd95"] = float(np.mean(finite)) if finite else math.nan
    return means


def one_mask_empty(predictions, masks):
    """Images where exactly one of prediction and truth is empty (HD95 has no true value)."""
    return int(np.sum(predictions.any(axis=(1, 2)) != masks.any(axis=(1, 2))))


def train_one(loss_name, seed, settings):
    """Train one segmenter with `loss_name` from `seed` and score it on the test set.

    Returns:
        `(metrics, predictions, seconds)`: the per-image means of METRIC_COLUMNS (all NaN if
        the loss became NaN, which stops training), the bool test predictions
        `(count, size, size)` and the training time in seconds.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)  # same initial weights for every loss at this seed
    # The residual network these figures were first measured on (docs/benchmarks.md).
    model = build_model(base_filters=settings.base_filters, depth=settings.depth,
                        full_resolution="residual")
    model.compile(
        optimizer=StepHalvingSGD(
            learning_rate=settings.lr, momentum=settings.momentum,
            halve_every=settings.halve_every,
        ),
        loss=LOSSES[loss_name](),
        jit_compile=False,  # as scripts/train.py: XLA measured slower on CPU for this model
    )
    stream = synthetic_dataset(
        size=settings.size, batch_size=settings.batch_size, difficulty=settings.difficulty,
        seed=seed,
    )
    started = time.perf_counter()
    history = model.fit(
        stream, epochs=1, steps_per_epoch=settings.steps, shuffle=False,
        callbacks=[keras.callbacks.TerminateOnNaN()], verbose=0,
    )
    seconds = time.perf_counter() - started

    images, masks = test_set(settings)
    probabilities = model.predict(images, batch_size=settings.batch_size, verbose=0)[..., 0]
    predictions = probabilities > 0.5
    diverged = model.stop_training or not np.all(np.isfinite(history.history["loss"]))
    if diverged:
        return dict.fromkeys(METRIC_COLUMNS, math.nan), predictions, seconds
    return score(predictions, masks), predictions, seconds


# --------------------------------------------------------------------------------------------
# The benchmark folder


def prepare_folder(out, settings, *, overwrite):
    """Create `out`, or check that it holds a benchmark with these settings.

    Raises:
        ValueError: `out` is a file, a non-empty folder that holds no benchmark, or a benchmark
            with other settings (unless `overwrite`).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    settings_path = out / "settings.json"
    wanted = dataclasses.asdict(settings)
    if overwrite:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for path in (out / "predictions").glob("*.npy"):
            path.unlink()
    elif settings_path.exists():
        stored = json.loads(settings_path.read_text(encoding="utf-8"))
        changed = {key: (stored.get(key), value) for key, value in wanted.items()
                   if stored.get(key) != value}
        if changed:
            shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(
                f"--out {out} holds a benchmark with other settings ({shown}); use another "
                "--out, or --overwrite to start afresh"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(
            f"--out {out} is not empty and holds no benchmark (no settings.json); use another "
            "--out, or --overwrite to write into it anyway"
        )
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")


def read_rows(path):
    """Rows of results.csv keyed by `(loss, seed)`, numbers as floats ({} if no file)."""
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(
                f"{path}: expected the columns {','.join(CSV_COLUMNS)}, got "
                f"{','.join(reader.fieldnames or ())}"
            )
        rows = {}
        for row in reader:
            values = {name: float(row[name]) for name in CSV_COLUMNS[2:]}
            rows[row["loss"], int(row["seed"])] = {"loss": row["loss"], "seed": int(row["seed"]),
                                                   **values}
    return rows


def append_row(path, row):
    """Append one row, writing the header first into a new file; flushed at once."""
    is_new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        if is_new:
            writer.writeheader()
        writer.writerow({name: _csv_value(row[name]) for name in CSV_COLUMNS})


def _csv_value(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def predictions_path(out, loss_name, seed):
    return out / "predictions" / f"{loss_name}_seed{seed}.npy"


def save_predictions(path, predictions):
    temporary = path.with_name(f".{path.stem}.tmp.npy")
    np.save(temporary, predictions)
    os.replace(temporary, path)  # a killed run leaves no half-written file behind


# --------------------------------------------------------------------------------------------
# Reports


def summarize(rows, losses, seeds):
    """`{loss: {column: (mean, std, runs)}}` over the seeds that have rows; std is the
    sample standard deviation (0 with one seed). NaN (diverged) runs make the mean NaN."""
    summary = {}
    for loss_name in losses:
        runs = [rows[loss_name, seed] for seed in seeds if (loss_name, seed) in rows]
        if not runs:
            continue
        summary[loss_name] = {}
        for column in COLUMNS:
            values = np.array([run[column] for run in runs], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[loss_name][column] = (float(values.mean()), std, len(values))
    return summary


def _best(summary, column):
    higher_is_better = COLUMNS[column][2]
    means = [stats[column][0] for stats in summary.values() if math.isfinite(stats[column][0])]
    if not means:
        return None
    return max(means) if higher_is_better else min(means)


def results_table(summary):
    """Markdown table: one row per loss, mean ± std per column, best mean in bold."""
    headings = [heading for heading, _, _ in COLUMNS.values()]
    lines = ["| loss | runs | " + " | ".join(headings) + " |",
             "|---|---:" + "|---:" * len(headings) + "|"]
    best = {column: _best(summary, column) for column in COLUMNS}
    for loss_name, stats in summary.items():
        cells = []
        for column, (_, number_format, _) in COLUMNS.items():
            mean, std, runs = stats[column]
            if not math.isfinite(mean):
                cells.append("NaN")
                continue
            text = number_format.format(mean)
            if runs > 1:
                text += f" ± {number_format.format(std)}"
            # Bold every loss whose mean rounds to the best, so ties are shown as ties.
            if best[column] is not None and number_format.format(mean) == number_format.format(
                best[column]
            ):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {loss_name} | {stats['iou'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def composite_against_mse(summary):
    """The issue's target, composite against plain MSE, as lines of text ([] without both)."""
    if "composite" not in summary or "mse" not in summary:
        return []
    composite, mse = summary["composite"], summary["mse"]

    def ratio(column):
        return composite[column][0] / mse[column][0] if mse[column][0] > 0 else math.nan

    iou_change = composite["iou"][0] - mse["iou"][0]
    checks = [
        ("spurious", ratio("spurious"), "x{:.2f}", ratio("spurious") <= 0.5, "at most x0.50"),
        ("B0 error", ratio("b0_error"), "x{:.2f}", ratio("b0_error") <= 0.5, "at most x0.50"),
        ("IoU", iou_change, "{:+.3f}", iou_change >= -0.01, "at least -0.010"),
    ]
    lines = ["Composite against MSE (means over seeds; target in brackets):", ""]
    for name, value, number_format, met, target in checks:
        verdict = "met" if met else "missed"
        lines.append(f"- {name}: {number_format.format(value)} ({target}): {verdict}")
    return lines


def write_report(path, summary, *, settings, seeds, one_empty):
    model = (f"build_model(base_filters={settings.base_filters}, depth={settings.depth}, "
             'full_resolution="residual")')
    optimizer = (f"StepHalvingSGD(learning_rate={settings.lr}, momentum={settings.momentum}, "
                 f"halve_every={settings.halve_every})")
    legend = f"""\
Each cell is the mean ± sample standard deviation over {len(seeds)} seed(s), 0 to {len(seeds) - 1};
each seed's value is a per-image mean over the same {settings.test_count} `{settings.difficulty}`
test images of {settings.size} px (data seed {settings.test_seed}). Every loss trains `{model}`
for {settings.steps} steps of {settings.batch_size} images with `{optimizer}`. Seed s fixes the
initial weights and the training stream, so at each seed every loss starts from the same
weights and sees the same images. Best mean in bold: higher is better for IoU, Dice and
boundary F1, lower for the rest.

- HD95 px: 95th-percentile distance between the outlines; an image where exactly one of
  prediction and truth is empty scores its diagonal. Such images, summed over seeds:
  {one_empty}.
- B0 err, B1 err: |predicted - true| number of objects (8-connected) and of holes.
- spurious: predicted specks that touch no true foreground pixel, per image. An empty
  prediction scores 0 here and a low B0 error, so read these columns next to IoU.
- train s: seconds of training per run (shared machines make these noisy).
- NaN: the loss became NaN and training stopped (TerminateOnNaN).
"""
    comparison = composite_against_mse(summary)
    text = "# Loss-variant benchmark\n\n" + results_table(summary) + "\n\n" + legend
    if comparison:
        text += "\n" + "\n".join(comparison) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def write_outputs(out, rows, *, settings, losses, seeds):
    """results.md, results.png and samples.png from the rows of the requested runs."""
    summary = summarize(rows, losses, seeds)
    images, masks = test_set(settings)
    one_empty = []
    seed_zero = {}
    for loss_name in summary:
        count = 0
        for seed in seeds:
            path = predictions_path(out, loss_name, seed)
            if (loss_name, seed) in rows and path.exists():
                predictions = np.load(path)
                count += one_mask_empty(predictions, masks)
                if seed == 0:
                    seed_zero[loss_name] = predictions[:SAMPLE_COUNT]
        one_empty.append(f"{loss_name} {count}")
    write_report(out / "results.md", summary, settings=settings, seeds=seeds,
                 one_empty=", ".join(one_empty))
    footer = (f"mean +- sample std over {len(seeds)} seed(s); {settings.test_count} "
              f"{settings.difficulty} test images, {settings.size} px; {settings.steps} steps")
    write_png(out / "results.png", bar_chart(summary, footer=footer))
    if seed_zero:
        write_png(out / "samples.png",
                  samples_sheet(images[:SAMPLE_COUNT], masks[:SAMPLE_COUNT], seed_zero))
    return summary


# --------------------------------------------------------------------------------------------


def run_benchmark(out, settings, losses, seeds):
    """Train and score every (loss, seed) not yet in results.csv; returns all rows."""
    csv_path = out / "results.csv"
    rows = read_rows(csv_path)
    todo = [(loss_name, seed) for seed in seeds for loss_name in losses
            if (loss_name, seed) not in rows]
    if len(todo) < len(losses) * len(seeds):
        print(f"{len(losses) * len(seeds) - len(todo)} run(s) already in {csv_path}; "
              f"{len(todo)} to go")
    progress = tqdm(todo, desc="runs", unit="run", disable=None)
    for loss_name, seed in progress:
        progress.set_postfix_str(f"{loss_name} seed {seed}")
        metrics, predictions, seconds = train_one(loss_name, seed, settings)
        save_predictions(predictions_path(out, loss_name, seed), predictions)
        row = {"loss": loss_name, "seed": seed, **metrics, "train_seconds": seconds}
        append_row(csv_path, row)  # after the predictions: a row in the csv means both exist
        rows[loss_name, seed] = row
        tqdm.write(f"{loss_name} seed {seed}: IoU {metrics['iou']:.3f}, b0 error "
                   f"{metrics['b0_error']:.2f}, spurious {metrics['spurious']:.2f}, "
                   f"{seconds:.0f} s")
    return rows


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    settings, losses, seeds = settings_from_args(args)
    try:
        check_settings(settings)
        prepare_folder(args.out, settings, overwrite=args.overwrite)
        rows = run_benchmark(args.out, settings, losses, seeds)
    except ValueError as error:
        return fail(error)
    summary = write_outputs(args.out, rows, settings=settings, losses=losses, seeds=seeds)
    print(results_table(summary))
    print(f"wrote results.csv, results.md, results.png, samples.png to {args.out}")
    return 0

