"""Robustness report: how mask quality holds up as noise grows and contrast fades.

One fixed held-out set of synthetic `medium` scenes, drawn without noise from a stream no
training run uses, is degraded step by step along three axes, identically for every model:

  gaussian      additive Gaussian noise, sigma 0 to 0.2 (intensities in [0, 1])
  salt_pepper   impulse noise, 0 to 10% of the pixels set to black or white
  contrast      contrast scaled around the mean, from 1 (as drawn) down to 0.1

plus one combined point, sigma 0.15 with 5% salt and pepper. Every model segments every image
as `predict.py --model` does (with its own mask settings, unless --min-part, --min-hole or
--refine/--no-refine say otherwise: `--min-part 0 --min-hole 0 --no-refine` compares the
networks' own masks); the outputs in --out are

  results.csv   per model, axis and strength: per-image mean IoU, spurious parts, B0/B1 errors
  results.md    the same as Markdown tables
  results.png   IoU and spurious parts per image against strength, one line per model
                (needs matplotlib: pip install -e ".[plot]")
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segment.benchmarks.figures import pyplot, save_figure
from segment.cli.common import HelpFormatter, fail, part_share, positive
from segment.data import (
    add_gaussian_noise,
    add_salt_and_pepper,
    scale_contrast,
    synthetic_arrays,
)
from segment.evaluation import evaluate_samples, model_method, summarize
from segment.imageio import DataError, write_text
from segment.inference import load_segmenter

EPILOG = """\
examples:
  python scripts/evaluate_robustness.py --models runs/default/model.keras runs/mse/model.keras \\
      --names composite,mse --out bench/robustness
  python scripts/evaluate_robustness.py --models runs/NAME/model.keras --count 16 --out /tmp/r
"""

# The held-out set's stream: far from every training seed, and its own stream number.
SEED = 3_000_017
STREAM = 2
AXES = {
    "gaussian": (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2),
    "salt_pepper": (0.0, 0.0125, 0.025, 0.0375, 0.05, 0.0625, 0.075, 0.0875, 0.1),
    "contrast": (1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1),
    "combined": (1.0,),  # sigma 0.15 and 5% salt and pepper at once
}
AXIS_LABELS = {
    "gaussian": "Gaussian noise sigma",
    "salt_pepper": "salt-and-pepper fraction",
    "contrast": "contrast factor",
}
CSV_COLUMNS = ("model", "axis", "strength", "iou", "dice", "spurious", "b0_error", "b1_error")


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--models", nargs="+", type=Path, required=True, default=argparse.SUPPRESS,
        metavar="PATH", help="model files (.keras, .onnx, .tflite, .xml) to compare")
    add("--names", default=None, help="comma-separated names for the models (default: the "
        "names of their run folders)")
    add("--out", type=Path, required=True, default=argparse.SUPPRESS, metavar="DIR",
        help="folder for results.csv, results.md and results.png")
    add("--count", type=positive, default=64, help="held-out images")
    add("--size", type=positive, default=128, help="image side")
    add("--min-part", type=part_share, default=None, metavar="SHARE",
        help="drop foreground parts smaller than this share of the image; 0: keep every part "
             "(default: each model's own)")
    add("--min-hole", type=part_share, default=None, metavar="SHARE",
        help="fill holes smaller than this share of the image; 0: fill none (default: each "
             "model's own)")
    add("--refine", action=argparse.BooleanOptionalAction, default=None,
        help="refine the masks with GrabCut (default: each model's own setting)")
    add("--overwrite", action="store_true", help="replace an earlier report in --out")
    return parser


def degrade(image, axis, strength, rng):
    """One held-out image degraded along `axis`; `rng` is the image's own, so every model and
    strength sees the same noise pattern, scaled."""
    image = image.copy()
    if axis == "gaussian":
        image = add_gaussian_noise(rng, image, strength)
    elif axis == "salt_pepper":
        image = add_salt_and_pepper(rng, image, strength)
    elif axis == "contrast":
        image = scale_contrast(image, strength)
    else:
        image = add_salt_and_pepper(rng, add_gaussian_noise(rng, image, 0.15), 0.05)
    return np.clip(image, 0, 1)


def held_out_set(count, size):
    """`(images, masks)`: `medium` scenes with their noise switched off."""
    images, masks = synthetic_arrays(
        count, size=size, difficulty="medium", seed=SEED, stream=STREAM,
        noise_std=(0.0, 0.0), salt_pepper=(0.0, 0.0),
    )
    return images, masks[..., 0] > 0.5


def sweep(methods, images, masks):
    """Rows of `CSV_COLUMNS` for every method, axis and strength."""
    rows = []
    conditions = [(axis, strength) for axis, strengths in AXES.items() for strength in strengths]
    for axis, strength in tqdm(conditions, desc="conditions", disable=None):
        samples = [
            (f"{index:04d}", degrade(image, axis, strength, np.random.default_rng([SEED, index])),
             mask)
            for index, (image, mask) in enumerate(zip(images, masks))
        ]
        summary = summarize(evaluate_samples(samples, methods, warm_up=False, progress=False))
        for name, means in summary.items():
            rows.append({"model": name, "axis": axis, "strength": strength,
                         **{key: means[key] for key in CSV_COLUMNS[3:]}})
    return rows


def markdown(rows, names):
    """One table per axis: strength down, IoU and spurious parts per model across."""
    parts = []
    for axis in AXES:
        axis_rows = [row for row in rows if row["axis"] == axis]
        title = "sigma 0.15 + 5% salt and pepper" if axis == "combined" else AXIS_LABELS[axis]
        header = "| " + title + " | " + " | ".join(
            f"{name} IoU | {name} spurious" for name in names) + " |"
        lines = [header, "|---" * (1 + 2 * len(names)) + "|"]
        for strength in AXES[axis]:
            cells = []
            for name in names:
                row = next(r for r in axis_rows if r["model"] == name and r["strength"] == strength)
                cells += [f"{row['iou']:.3f}", f"{row['spurious']:.2f}"]
            label = "both" if axis == "combined" else f"{strength:g}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(path, rows, names):
    """IoU (top) and spurious parts per image (bottom) against strength, per axis."""
    plt = pyplot()
    axes_names = list(AXIS_LABELS)
    figure, grid = plt.subplots(2, len(axes_names), figsize=(4 * len(axes_names), 6.5),
                                sharey="row")
    for column, axis in enumerate(axes_names):
        for name in names:
            points = sorted((row["strength"], row["iou"], row["spurious"]) for row in rows
                            if row["model"] == name and row["axis"] == axis)
            strengths, iou_values, spurious_values = zip(*points)
            grid[0, column].plot(strengths, iou_values, marker="o", label=name)
            grid[1, column].plot(strengths, spurious_values, marker="o", label=name)
        grid[1, column].set_xlabel(AXIS_LABELS[axis])
        if axis == "contrast":
            for row in grid[:, column]:
                row.invert_xaxis()  # weaker contrast, to the right, is harder
    grid[0, 0].set_ylabel("IoU (per-image mean)")
    grid[1, 0].set_ylabel("spurious parts per image")
    for cell in grid.flat:
        cell.grid(alpha=0.3)
    grid[0, 0].legend()
    figure.suptitle("Held-out medium scenes, degraded (every model sees the same images)")
    figure.tight_layout()
    save_figure(figure, path)


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    names = (args.names.split(",") if args.names
             else [path.parent.name or path.stem for path in args.models])
    try:
        if len(names) != len(args.models) or len(set(names)) != len(names):
            raise DataError(f"--names must give {len(args.models)} distinct names, got {names}")
        if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
            raise DataError(f"--out {args.out} is not empty; pass --overwrite to replace it")
        finish = {"min_part": args.min_part, "min_hole": args.min_hole, "refine": args.refine}
        methods = {name: model_method(load_segmenter(path), **finish)
                   for name, path in zip(names, args.models)}
    except DataError as error:
        return fail(error)
    images, masks = held_out_set(args.count, args.size)
    rows = sweep(methods, images, masks)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, names)
    write_text(args.out / "results.md", table)
    print(table)
    try:
        plot(args.out / "results.png", rows, names)
    except ImportError:
        print("note: no results.png: matplotlib is not installed (pip install -e \".[plot]\")",
              file=sys.stderr)
    print(f"wrote results.csv, results.md, results.png to {args.out}")
    return 0

