"""Clicks to a good mask: corrections from clicks, with a simulated annotator.

Each image is segmented, then corrected click by click by an annotator simulated as the
interactive segmentation literature scores it (`segment.evaluation.interactive`): after each
answer it clicks inside the largest wrong region, at its pixel farthest from the region's
boundary. Two methods side by side, from the same protocol:

  model     the network's mask (as predict.py finishes it) corrected with
            `segment.inference.correct_mask`; the probability is predicted once per image;
            with the model's click network (clicks.keras beside it) where there is one, as
            serve.py corrects
  model-probability
            where there is a click network: the same without it (the segmenter's
            probability alone)
  grabcut   `correct_mask` from the clicks alone, without a network
  server    with --server URL: a running serve.py, asked as the page asks it: the photograph
            and every click so far, in one request per click (seconds per click: the whole
            request, the network's prediction included)

Reported per method: NoC@85 and NoC@90 (the mean number of clicks to reach IoU 0.85 and 0.90;
--max-clicks where never reached), the mean IoU after 0, 1, 3 and 5 clicks, the median seconds
per click (the correction alone, not the network, but for `server`) and the images. The
outputs in --out are

  results.json       the table's figures per method, and the mean IoU after every click
  per_image.csv      per method and image: NoC@85, NoC@90 and the IoU after every click
  report.md          the table
  iou_by_clicks.png  mean IoU against clicks, a line per method
                     (needs matplotlib: pip install -e ".[plot]")
"""

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segment.benchmarks.figures import pyplot, save_figure
from segment.cli.common import HelpFormatter, fail, positive
from segment.data import find_pairs, read_pair
from segment.evaluation import evaluation_folder
from segment.evaluation.interactive import model_corrections, noc, simulate
from segment.imageio import DataError, write_text
from segment.inference import (
    correct_mask,
    load_click_network,
    load_segmenter,
)

__all__ = ["build_parser", "interactive_report", "main", "markdown"]

EPILOG = """\
examples:
  python scripts/benchmark_interactive.py --data data/kvasir-seg/train --limit 40 \\
      --model runs/kvasir/model.keras --out bench/interactive
  python scripts/benchmark_interactive.py --data data/shapes --max-clicks 5   # clicks alone
  python scripts/benchmark_interactive.py --data test_photos/ --server http://127.0.0.1:8000
"""

TARGETS = {"noc85": 0.85, "noc90": 0.90}
IOU_AFTER = (0, 1, 3, 5)  # clicks after which the table shows the mean IoU


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--data", type=Path, required=True, default=argparse.SUPPRESS, metavar="DIR",
        help="an images/ + masks/ folder, or a dataset whose test/ split is used")
    add("--model", type=Path, default=None, metavar="PATH",
        help="a .keras model (or an exported one) to correct; without it only the clicks-alone "
             "method runs")
    add("--server", default=None, metavar="URL",
        help="also (or, without --model, only) a running serve.py at URL, through its API")
    add("--no-grabcut", dest="grabcut", action="store_false",
        help="leave out the clicks-alone method (GrabCut), which takes most of the time")
    add("--max-clicks", type=positive, default=20, metavar="N", help="clicks per image")
    add("--limit", type=positive, default=None, metavar="N",
        help="the first N images (default: all)")
    add("--out", type=Path, default=None, metavar="DIR",
        help="folder for results.json, per_image.csv, report.md and iou_by_clicks.png "
             "(default: print the table only)")
    return parser


def methods_for(model, server=None, *, grabcut=True, click_network=None):
    """Methods by name, each `(image, path) -> segmenter(image, clicks) -> bool mask`:
    whatever the image alone gives (the network's probability) is computed once, outside the
    clicks; `server`'s answers are all requests; `grabcut=False` leaves the clicks-alone
    method out. With the model's `click_network`, "model" corrects with it (as serve.py
    does) and "model-probability" without it."""
    methods = {}
    if model is not None:
        networks = {"model": click_network}
        if click_network is not None:
            networks["model-probability"] = None
        last = {}  # the last image's corrections: one prediction serves every network

        def corrected_model(name):
            def segmenter(image, path):
                if last.get("path") != path:
                    last.update(path=path, corrections=model_corrections(model, image, networks))
                return last["corrections"][name]
            return segmenter

        methods.update({name: corrected_model(name) for name in networks})
    if grabcut:
        methods["grabcut"] = lambda image, path: (
            lambda image, clicks: correct_mask(image, None, clicks))
    if server is not None:
        methods["server"] = _server_method(server)
    return methods


def _server_method(url):
    """The corrections of a running serve.py: the photograph's file and every click so far in
    one `POST /api/segment`, as the page sends them."""
    try:
        import httpx
    except ImportError:
        raise DataError('--server needs httpx: pip install -e ".[dev]"') from None
    client = httpx.Client(timeout=300)
    url = url.rstrip("/")

    def method(image, path):
        data = Path(path).read_bytes()

        def segmenter(image, clicks):
            form = {"clicks": json.dumps([dataclasses.asdict(click) for click in clicks])}
            try:
                answer = client.post(f"{url}/api/segment", data=form if clicks else None,
                                     files={"file": (Path(path).name, data)})
            except httpx.HTTPError as error:
                raise DataError(f"--server {url}: {error}") from None
            if answer.status_code != 200:
                raise DataError(f"--server {url}: {answer.status_code} for {Path(path).name}: "
                                f"{answer.text[:200]}")
            with Image.open(io.BytesIO(answer.content)) as picture:
                return np.asarray(picture) > 127

        return segmenter

    return method


def run_images(methods, pairs, max_clicks):
    """Per-image rows: method, image, the IoU after every click and the seconds per click."""
    rows = []
    for image_path, mask_path in tqdm(pairs, desc="images", unit="image", disable=None):
        image, truth = read_pair(image_path, mask_path)
        for name, method in methods.items():
            ious, seconds = simulate(method(image, image_path), image, truth,
                                     max_clicks=max_clicks)
            rows.append({"method": name, "image": Path(image_path).stem, "ious": ious,
                         "seconds": seconds})
    return rows


def interactive_report(rows, max_clicks):
    """The figures per method: NoC, mean IoU after some clicks, seconds per click, images."""
    report = {}
    for name in dict.fromkeys(row["method"] for row in rows):
        own = [row for row in rows if row["method"] == name]
        curves = np.array([row["ious"] for row in own], np.float64)
        seconds = [value for row in own for value in row["seconds"]]
        figures = {key: float(np.mean([noc(row["ious"], target, max_clicks) for row in own]))
                   for key, target in TARGETS.items()}
        figures |= {f"iou_{clicks}": float(curves[:, clicks].mean()) if clicks <= max_clicks
                    else None for clicks in IOU_AFTER}
        figures["seconds_per_click"] = float(np.median(seconds)) if seconds else None
        figures["images"] = len(own)
        figures["mean_iou_by_clicks"] = [round(float(value), 5) for value in curves.mean(0)]
        report[name] = figures
    return report


def _cell(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report, max_clicks):
    """The report as one Markdown table, a row per method."""
    lines = ["| method | NoC@85 | NoC@90 | " + " | ".join(f"IoU@{k}" for k in IOU_AFTER)
             + " | s/click | images |",
             "|---" * (5 + len(IOU_AFTER)) + "|"]
    for name, figures in report.items():
        cells = [_cell(figures["noc85"], 2), _cell(figures["noc90"], 2)]
        cells += [_cell(figures[f"iou_{k}"], 3) for k in IOU_AFTER]
        cells += [_cell(figures["seconds_per_click"], 3), str(figures["images"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    note = (f"NoC@85, NoC@90: mean clicks to reach IoU 0.85, 0.90 ({max_clicks} where never "
            "reached); IoU@k: mean IoU after k clicks; s/click: median seconds per correction.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def per_image_csv(rows, max_clicks):
    """per_image.csv's text: a row per method and image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "image", *TARGETS, "seconds_per_click",
                     *(f"iou_{k}" for k in range(max_clicks + 1))])
    for row in rows:
        seconds = f"{np.median(row['seconds']):.4f}" if row["seconds"] else ""
        writer.writerow([row["method"], row["image"],
                         *(noc(row["ious"], target, max_clicks) for target in TARGETS.values()),
                         seconds, *(f"{value:.4f}" for value in row["ious"])])
    return buffer.getvalue()


def plot(path, report):
    """Mean IoU against the number of clicks, a line per method."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
    for name, figures in report.items():
        curve = figures["mean_iou_by_clicks"]
        axis.plot(range(len(curve)), curve, marker="o", markersize=3, label=name)
    axis.set_xlabel("clicks")
    axis.set_ylabel("mean IoU")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def write_outputs(out, report, rows, table, settings):
    """results.json, per_image.csv, report.md and (with matplotlib) iou_by_clicks.png; the
    names of the files written."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps({**settings, "methods": report}, indent=2) + "\n")
    write_text(out / "per_image.csv", per_image_csv(rows, settings["max_clicks"]))
    write_text(out / "report.md", table)
    written = ["results.json", "per_image.csv", "report.md"]
    try:
        plot(out / "iou_by_clicks.png", report)
        written.append("iou_by_clicks.png")
    except ImportError:
        print("note: no iou_by_clicks.png: the plot needs the plot extra "
              "(pip install -e \".[plot]\")", file=sys.stderr)
    return written


def main(argv=None, prog=None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.grabcut and args.model is None and args.server is None:
        parser.error("--no-grabcut leaves nothing to run without --model or --server")
    try:
        folder = evaluation_folder(args.data)
        pairs = find_pairs(folder)[: args.limit]
        model = None if args.model is None else load_segmenter(args.model)
        click_network = None if args.model is None else load_click_network(args.model)
        methods = methods_for(model, args.server, grabcut=args.grabcut,
                              click_network=click_network)
        rows = run_images(methods, pairs, args.max_clicks)
    except DataError as error:
        return fail(error)
    report = interactive_report(rows, args.max_clicks)
    table = markdown(report, args.max_clicks)
    print(table)
    if args.out is not None:
        settings = {"data": str(folder), "model": None if args.model is None else str(args.model),
                    "server": args.server, "max_clicks": args.max_clicks, "images": len(pairs)}
        written = write_outputs(args.out, report, rows, table, settings)
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0
