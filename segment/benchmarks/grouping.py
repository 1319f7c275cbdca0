"""How well `--groups auto` finds the groups of a folder whose true groups are known.

The true group of each image comes from a CSV of `stem,group` rows (--truth), or else from its
name: `bear_00012` is in group `bear`. Reported: the groups found, their purity (the share of
images whose found group's majority is their own true group: 1 means no two true groups were
merged), how many found groups each true group is spread over (1 means none was split), and
how far apart the thumbnails are within and between true groups, which is what the limits of
`segment.data.groups` are chosen from. --unnamed hides the names, so that only the
thumbnails can group the images.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segment.cli.common import HelpFormatter, fail
from segment.data import find_groups, find_pairs, read_groups_file, thumbnail
from segment.data.groups import NEAR_DUPLICATE, RUN_NEIGHBOUR, run_name
from segment.imageio import DataError

__all__ = ["build_parser", "grouping_report", "main"]

EPILOG = """\
examples:
  python scripts/benchmark_grouping.py --data frames/all                 # groups from names
  python scripts/benchmark_grouping.py --data shuffled/ --truth shuffled/groups.csv --unnamed
"""


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", type=Path, required=True, default=argparse.SUPPRESS,
                        metavar="DIR", help="an images/ + masks/ folder")
    parser.add_argument("--truth", type=Path, default=None, metavar="FILE",
                        help="CSV of stem,group rows (default: the name before the frame number)")
    parser.add_argument("--unnamed", action="store_true",
                        help="hide the names: group by the thumbnails alone")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the report as JSON")
    return parser


def _distances(thumbnails, truth):
    """Per true group: the largest distance between frames next to each other in name order,
    and the distance to the closest image of another group."""
    neighbour, other = [], []
    truth = np.asarray(truth)
    for group in np.unique(truth):
        inside = thumbnails[truth == group]
        if len(inside) > 1:
            neighbour.append(float(np.sqrt(((inside[1:] - inside[:-1]) ** 2).mean(-1)).max()))
        outside = thumbnails[truth != group]
        if len(outside):
            squares = ((inside[:, None] - outside[None]) ** 2).mean(-1)
            other.append(float(np.sqrt(squares.min())))
    return neighbour, other


def grouping_report(pairs, truth, *, unnamed=False):
    """The report's figures for `pairs` whose true group labels are `truth`."""
    thumbnails = np.stack([thumbnail(image) for image, _ in tqdm(
        pairs, desc="thumbnails", unit="image", disable=None)])
    named = [(Path(f"image{index:07d}x"), None) for index in range(len(pairs))] if unnamed else pairs
    found = np.asarray(find_groups(named, thumbnails=thumbnails))
    truth = np.asarray(truth)
    majority = sum(np.unique(truth[found == group], return_counts=True)[1].max()
                   for group in np.unique(found))
    spread = [len(np.unique(found[truth == group])) for group in np.unique(truth)]
    neighbour, other = _distances(thumbnails, truth)
    return {
        "images": len(pairs), "true_groups": int(len(np.unique(truth))),
        "found_groups": int(len(np.unique(found))), "purity": majority / len(pairs),
        "found_per_true_group": float(np.mean(spread)),
        "largest_found_group": int(np.bincount(found).max()),
        "neighbour_distance_max": float(np.max(neighbour)) if neighbour else None,
        "closest_other_group": float(np.min(other)) if other else None,
        "near_duplicate_limit": NEAR_DUPLICATE, "run_limit": RUN_NEIGHBOUR, "unnamed": unnamed,
    }


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    try:
        pairs = find_pairs(args.data)
        if args.truth is not None:
            truth = read_groups_file(args.truth, pairs)
        else:
            truth = [run_name(Path(image).stem) for image, _ in pairs]
    except DataError as error:
        return fail(error)
    report = grouping_report(pairs, truth, unnamed=args.unnamed)
    print(f"{report['images']} images in {report['true_groups']} true groups: found "
          f"{report['found_groups']} groups, purity {report['purity']:.3f}, each true group in "
          f"{report['found_per_true_group']:.2f} found groups, the largest found group "
          f"{report['largest_found_group']} images")
    if report["neighbour_distance_max"] is not None and report["closest_other_group"] is not None:
        print(f"thumbnail distances: neighbouring frames up to "
              f"{report['neighbour_distance_max']:.3f}, another group's closest image "
              f"{report['closest_other_group']:.3f} (near-duplicate limit {NEAR_DUPLICATE})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
