"""The project's recipe against a plain stock-Keras U-Net on real photographs, at equal time.

For each seed, every method trains for the same wall-clock budget on DIR's training images and
is then scored on DIR/test, every image at its own size, with `segment.metrics`. A DIR with no
test/ (DIR/images + DIR/masks) is split here, once, by whole groups of near-copies
(`segment.data.find_groups`: a video's frames, near-duplicate photographs), a fifth of the
images held out for the test, so that no method is scored on near-copies of what it learnt;
the split is kept in --out/split/ and used by every method:

  ours:<loss>  `python scripts/train.py --data DIR --minutes M --loss <loss>` exactly
               (segment.training.train: InstanceNormalize, SegmentationModel.train_step,
               StepHalvingSGD), predicted as `predict.py --model` predicts
  plain        the plain U-Net of segment.evaluation.plain_unet: Conv-BatchNorm-ReLU, Adam, binary
               cross-entropy, whole images squashed to 128x128 with flips, stock `fit`
  grabcut, otsu  classical baselines (no training; scored once)

Outputs in --out:

  results.csv    one row per method and seed: per-image mean test metrics, training seconds
  results.md     mean ± standard deviation over seeds per method
  per_image.csv  every test image's metrics per method, seed 0
  worst.png      the test images where ours (first loss, seed 0) scores lowest, every method
                 beside it (red: false foreground, blue: missed)
  runs/          our run folders (config.json, model.keras, history.csv, metrics.json) and
                 the plain U-Nets (plain-seed<N>.keras, .json)
  split/         for a DIR without test/: train/ and test/ as links to DIR's files
  settings.json  what every row was made with; a rerun must match it

The benchmark resumes: methods and seeds already in results.csv are skipped, and each row is
written as soon as its run ends.
"""

import argparse
import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np

from segment.cli.common import HelpFormatter, choice_list, fail, positive
from segment.data import dataset_splits, find_groups, find_pairs, split_by_groups
from segment.evaluation import (
    COLUMNS,
    evaluate_folder,
    model_method,
    summarize,
    worst_sheet,
    write_per_image_csv,
)
from segment.evaluation.baselines import BASELINES
from segment.evaluation.plain_unet import plain_segmenter, train_plain_unet
from segment.imageio import DataError, write_png, write_text
from segment.inference import load_segmenter
from segment.losses import LOSSES
from segment.metrics import METRIC_NAMES
from segment.training import TrainConfig, train

EPILOG = """\
examples:
  python scripts/benchmark_real.py --data ../data/kvasir-seg --minutes 10
  python scripts/benchmark_real.py --data DIR --minutes 5 --losses composite,mse,bce,dice \\
      --seeds 3 --no-plain --baselines none --out bench/real-losses

DIR holds train/ (and optionally val/) and test/ image/mask folders, or images/ and masks/
to be split by whole groups. Rerunning the same command continues a killed benchmark; more
seeds or losses train only the new runs.
"""

CSV_COLUMNS = ("method", "seed", *METRIC_NAMES, "train_seconds")
# Tiny models and budgets for the test suite: seconds, not minutes.
QUICK = {"base_filters": 4, "depth": 2, "steps_per_epoch": 2, "batch_size": 2, "size": 32}


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--data", type=Path, required=True, default=argparse.SUPPRESS, metavar="DIR",
        help="dataset with train/ and test/ image/mask folders, or one images/ + masks/ "
        "folder to split by whole groups")
    add("--minutes", type=float, default=10.0, help="training wall-clock per method and seed")
    add("--out", type=Path, default=Path("bench/real"), metavar="DIR",
        help="benchmark folder (created; an earlier benchmark there is continued)")
    add("--losses", type=choice_list(LOSSES, what="loss(es)"), default="composite",
        metavar="NAMES", help=f"our recipe once per loss, comma-separated, from {', '.join(LOSSES)}")
    add("--seeds", type=positive, default=1, metavar="N", help="seeds 0..N-1 per trained method")
    add("--no-plain", action="store_true", help="leave out the plain stock U-Net")
    add("--baselines", type=choice_list(BASELINES, what="baseline(s)", allow_none=True),
        default=",".join(("grabcut", "otsu")), metavar="NAMES",
        help=f"classical baselines, from {', '.join(BASELINES)}; none for none")
    add("--worst", type=int, default=6, metavar="N", help="rows of worst.png (0: no sheet)")
    add("--size", type=positive, default=None,
        help="our recipe's working size (default: chosen from the data, as train.py does)")
    add("--quick", action="store_true",
        help="tiny networks and sizes for a smoke test (seconds per run)")
    return parser


# The share of a folder without test/ held out for the test, in whole groups.
TEST_FRACTION = 0.2


def _benchmark_data(data, folder):
    """`(dataset folder, train pairs, test pairs)`: `data` with its own train/ and test/, or a
    split of `data` by whole groups, linked into `folder` (once; later runs reuse it)."""
    splits = dataset_splits(data)
    if "train" in splits and "test" in splits:
        return data, find_pairs(splits["train"]), find_pairs(splits["test"])
    if "all" not in splits:
        raise DataError(f"{data}: needs train/ and test/ image/mask folders, or images/ and masks/")
    if not (folder / "test").is_dir():
        pairs = find_pairs(splits["all"])
        # A fifth in whole groups, as before validation took more groups: splits made then hold.
        split = split_by_groups(pairs, find_groups(pairs), val_fraction=TEST_FRACTION, seed=0,
                                min_groups=1)
        if split is None:
            raise DataError(f"{data}: one group of near-copies holds nearly every image; give "
                            "train/ and test/ folders")
        for name, part in zip(("train", "test"), split):
            _link_pairs(part, folder / name)
        print(f"test split: {len(split[1])} of {len(pairs)} images, in whole groups of "
              f"near-copies, kept in {folder}", flush=True)
    return folder, find_pairs(folder / "train"), find_pairs(folder / "test")


def _link_pairs(pairs, folder):
    """An images/ + masks/ folder of links to `pairs` (copies where links cannot be made)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        for source, sub in ((Path(image), "images"), (Path(mask), "masks")):
            target = folder / sub / source.name
            try:
                target.symlink_to(source.resolve())
            except OSError:
                shutil.copy2(source, target)


def _settings(args):
    # The network is train.py's; recorded so that a folder of runs of another network (the
    # residual full-resolution level, before it) is not continued with this one.
    return {"data": str(args.data.resolve()), "minutes": args.minutes, "quick": args.quick,
            "size": args.size, "full_resolution": TrainConfig().full_resolution}


def _prepare(out, settings):
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    path = out / "settings.json"
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != settings:
            raise DataError(
                f"--out {out} holds a benchmark with other settings ({stored}); use another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise DataError(f"--out {out} is not empty and holds no benchmark (no settings.json)")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings, indent=2) + "\n")


def _read_rows(path):
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {**row, "seed": int(row["seed"]), **{key: float(row[key]) for key in CSV_COLUMNS[2:]}}
            for row in csv.DictReader(handle)
        ]


def _append_row(path, row):
    is_new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        if is_new:
            writer.writeheader()
        writer.writerow({key: row[key] for key in CSV_COLUMNS})


def _train_ours(args, data, loss, seed, folder):
    """Our recipe's segmenter, trained (or reloaded from a finished run folder)."""
    if not (folder / "metrics.json").exists():
        options = QUICK if args.quick else ({"size": args.size} if args.size else {})
        config = TrainConfig(
            data=str(data), out=str(folder), minutes=args.minutes, loss=loss, seed=seed,
            click_minutes=0,  # segmentation against segmentation, at equal time
            **options,
        )
        train(config, overwrite=True, verbose=0)
    seconds = json.loads((folder / "metrics.json").read_text())["total_seconds"]
    return model_method(load_segmenter(folder / "model.keras")), seconds


def _train_plain(args, train_pairs, seed, path):
    """The plain U-Net's segmenter, trained (or reloaded from its saved model)."""
    info_path = path.with_suffix(".json")
    if not info_path.exists():
        model, info = train_plain_unet(train_pairs, minutes=args.minutes, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        write_text(info_path, json.dumps(info) + "\n")
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    return plain_segmenter(model), json.loads(info_path.read_text())["seconds"]


def _results_table(rows):
    """Markdown: mean ± std over seeds of each method's per-image means."""
    names = [name for name in COLUMNS if name != "seconds"] + ["train_seconds"]
    headings = [COLUMNS[name][0] if name in COLUMNS else "train s" for name in names]
    lines = ["| method | runs | " + " | ".join(headings) + " |", "|---" * (len(names) + 2) + "|"]
    for method in dict.fromkeys(row["method"] for row in rows):
        runs = [row for row in rows if row["method"] == method]
        cells = []
        for name in names:
            values = np.array([row[name] for row in runs])
            number = COLUMNS[name][1] if name in COLUMNS else "{:.0f}"
            cells.append(f"{number.format(values.mean())} ± {number.format(values.std())}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args):
    _prepare(args.out, _settings(args))
    data, train_pairs, test_pairs = _benchmark_data(args.data, args.out / "split")
    results_path = args.out / "results.csv"
    rows = _read_rows(results_path)
    done = {(row["method"], row["seed"]) for row in rows}

    trained = [f"ours:{loss}" for loss in args.losses] + ([] if args.no_plain else ["plain"])
    runs = [(method, seed) for seed in range(args.seeds) for method in trained]
    runs += [(name, 0) for name in args.baselines]
    per_image_path = args.out / "per_image.csv"
    # Seed 0's methods with per-image rows: a run stopped between a method's two writes is
    # scored again rather than left out of worst.png.
    scored = {row["method"] for row in _read_per_image(per_image_path)}
    need_sheet = args.worst > 0 and not (args.out / "worst.png").exists()
    methods_seed0 = {}
    for method, seed in runs:
        if (method, seed) in done and not (need_sheet and seed == 0):
            continue
        print(f"{method}, seed {seed}: {'training' if method in trained else 'scoring'}",
              flush=True)
        if method.startswith("ours:"):
            folder = args.out / "runs" / f"{method.replace(':', '-')}-seed{seed}"
            segmenter, seconds = _train_ours(args, data, method.split(":", 1)[1], seed, folder)
        elif method == "plain":
            path = args.out / "runs" / f"plain-seed{seed}.keras"
            segmenter, seconds = _train_plain(args, train_pairs, seed, path)
        else:
            segmenter, seconds = BASELINES[method], 0.0
        if seed == 0:
            methods_seed0[method] = segmenter
        if (method, seed) in done and (seed != 0 or method in scored):
            continue
        image_rows = evaluate_folder(test_pairs, {method: segmenter})
        if seed == 0:  # first: a row in results.csv means its per-image rows are written
            _merge_per_image(per_image_path, image_rows)
        if (method, seed) in done:
            continue
        mean = summarize(image_rows)[method]
        row = {"method": method, "seed": seed, **mean, "train_seconds": seconds}
        _append_row(results_path, row)
        rows.append(row)
        print(f"  IoU {mean['iou']:.3f}, spurious {mean['spurious']:.2f}/image, "
              f"{seconds:.0f} s of training", flush=True)

    table = _results_table(rows)
    write_text(args.out / "results.md", f"# {args.data.name}: test split, {len(test_pairs)} images, "
               f"{args.minutes:g} minutes of training per run\n\n{table}\n")
    if need_sheet and methods_seed0:
        image_rows = _read_per_image(per_image_path)
        first = trained[0] if trained else next(iter(methods_seed0))
        ordered = {first: methods_seed0[first], **methods_seed0}
        write_png(args.out / "worst.png",
                  worst_sheet(test_pairs, ordered, image_rows, count=args.worst))
    return table


def _read_per_image(path):
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [{**row, **{key: float(row[key]) for key in (*METRIC_NAMES, "seconds")}}
                for row in csv.DictReader(handle)]


def _merge_per_image(path, new_rows):
    methods = {row["method"] for row in new_rows}
    kept = [row for row in _read_per_image(path) if row["method"] not in methods]
    write_per_image_csv(path, kept + new_rows)


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        table = run(args)
    except (DataError, ValueError) as error:
        return fail(error)
    print(table)
    print(f"wrote results.csv, results.md, per_image.csv, worst.png to {args.out}")
    return 0

