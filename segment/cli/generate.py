"""Write a synthetic shape dataset: train/, val/, test/ image/mask folders and manifest.json."""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from tqdm import tqdm

import segment
from segment import data
from segment.cli.common import HelpFormatter, fail
from segment.imageio import DataError, write_text

EPILOG = """example:
  python scripts/generate_data.py --out data/shapes --count 2000 --difficulty hard --seed 1

Sample i (numbered across all splits) is the same for a given --seed, --size and --difficulty
(with the same package versions); it equals sample i of segment.data.synthetic_arrays with
those arguments and stream=segment.data.DATASET_STREAM, a stream that training never draws
from, so a generated test set holds no training image."""


def split_counts(count, fractions):
    """Samples per split for fractions like "0.8,0.1,0.1" (largest remainders get the rest)."""
    try:
        values = [float(part) for part in fractions.split(",")]
    except ValueError:
        raise ValueError(
            f"--split must be three numbers like 0.8,0.1,0.1, got {fractions!r}"
        ) from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise ValueError(
            f"--split needs three fractions >= 0 that sum to 1 (train,val,test), got {fractions!r}"
        )
    exact = [count * value for value in values]
    counts = [int(share) for share in exact]
    by_remainder = sorted(range(3), key=lambda split: exact[split] - counts[split], reverse=True)
    for split in by_remainder[: count - sum(counts)]:
        counts[split] += 1
    return dict(zip(data.SPLIT_NAMES, counts))


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/shapes"), help="dataset folder to write"
    )
    parser.add_argument("--count", type=int, default=1000, help="number of samples over all splits")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument(
        "--difficulty", choices=list(data.DIFFICULTIES), default="medium",
        help="generator preset, or mixed (a stream of several presets)"
    )
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing its train/, val/, test/ and manifest.json",
    )
    return parser


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)

    try:
        if args.count < 1 or args.size < 8:
            raise ValueError(
                f"--count must be >= 1 and --size >= 8, got {args.count} and {args.size}"
            )
        counts = split_counts(args.count, args.split)
        if args.out.exists() and not args.out.is_dir():
            raise DataError(f"{args.out}: exists and is not a folder")
        if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
            raise DataError(
                f"{args.out}: folder is not empty; pass --overwrite to replace its dataset"
            )
        config = data.generator_config(args.difficulty)
    except ValueError as error:  # DataError is a ValueError
        return fail(error)

    try:
        _write_dataset(args, counts, config)
    except OSError as error:
        return fail(f"cannot write {args.out}: {error.strerror or error}")
    written = ", ".join(f"{split}/ {n}" for split, n in counts.items() if n)
    print(
        f"wrote {args.out}: {written} image/mask pairs "
        f"({args.size}x{args.size}, {args.difficulty}) and manifest.json"
    )
    return 0


def _write_dataset(args, counts, config):
    # Only what this script writes is removed, so a mistyped --out cannot lose other files.
    for name in data.SPLIT_NAMES:
        shutil.rmtree(args.out / name, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=args.count, desc="generating", unit="image") as progress:
        start = 0
        for split, split_count in counts.items():
            for index in range(start, start + split_count):
                image, mask = data.make_sample(
                    data.sample_rng(args.seed, index, data.DATASET_STREAM), args.size, config
                )
                # One pair at a time keeps memory flat for any --count; stems number the stream.
                data.write_folder(args.out / split, [image], [mask], stems=[f"{index:06d}"])
                progress.update()
            start += split_count

    manifest = {
        "generator": dataclasses.asdict(config),
        "difficulty": args.difficulty,
        "seed": args.seed,
        "size": args.size,
        "counts": counts,
        "segment_version": segment.__version__,
    }
    write_text(args.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")

