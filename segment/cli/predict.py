"""Segment your own images with a trained model: masks, probabilities, overlays, cut-outs."""

import argparse
import sys
from pathlib import Path

from segment.cli.common import (
    HelpFormatter,
    add_inference_flags,
    add_model_flags,
    add_orientation_flag,
    choice_list,
    fail,
    inference_options,
    non_negative,
    positive,
)
from segment.imageio import keep_stored_orientation
from segment.inference import (
    OUTPUT_KINDS,
    collect_inputs,
    load_segmenter,
    model_to_use,
    segment_files,
    tile_window,
)

EPILOG = """\
examples:
  python scripts/predict.py photos/ --out masks/ --save overlay,cutout
  python scripts/predict.py "scans/**/*.tif" --recursive --model runs/unet/model.keras --out out/

scale: working size or tiling?
  A model trained with train.py --data learnt whole images scaled to a working size, and
  remembers it: each image is scaled (aspect ratio kept) so that its longer side is that
  size, segmented, and the result scaled back to the image's own size. A model
  trained on synthetic shapes learnt at the images' own scale: an image larger than --tile is
  cut into overlapping tiles that are blended without seams, so any size works in bounded
  memory. --resize S overrides the model's choice (longer side S; 0: the image's own scale).
  Every model train.py makes averages its predictions over the four flips (--tta), and a
  --data model also over five scales around its working size (--scales
  0.75,0.875,1,1.125,1.25), the range it was trained over; --no-tta and --scales 1 make one
  pass.
  The threshold, too, is the model's own unless --threshold is given, and so is how a mask
  is finished: train.py chooses on its validation images whether to refine it with GrabCut
  (--refine/--no-refine override it), the smallest foreground part kept (parts below 0.25% to
  2% of the image, or none; --min-part 0 keeps every part) and the smallest hole left (holes
  below 0.25% or 1% of the image filled, or none; --min-hole 0 fills none).
"""


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders or glob patterns (PNG, JPEG, BMP, TIFF)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder for the outputs")
    add_model_flags(parser)
    parser.add_argument("--recursive", action="store_true",
                        help="descend into sub-folders of input folders; ** in patterns")
    parser.add_argument("--save", type=choice_list(OUTPUT_KINDS, what="output kind(s)"), default=[], metavar="KINDS",
                        help="extra outputs, comma-separated: prob, overlay, cutout "
                             "(the mask is always written)")
    parser.add_argument("--tile", type=positive, default=512,
                        help="largest side fed to the network at once; larger images are tiled")
    parser.add_argument("--overlap", type=non_negative, default=64,
                        help="pixels shared by neighbouring tiles, blended across")
    parser.add_argument("--batch-size", type=positive, default=4,
                        help="tiles per network call")
    parser.add_argument("--min-area", type=non_negative, default=0,
                        help="remove foreground regions smaller than this many pixels (0: off)")
    parser.add_argument("--fill-holes", type=non_negative, default=0,
                        help="fill holes smaller than this many pixels (0: off); a hole is "
                             "background enclosed by foreground, not a gap open to the edge")
    add_inference_flags(parser)
    add_orientation_flag(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist in --out")
    parser.add_argument("--allow-input-dir", action="store_true",
                        help="allow --out to be a folder that holds input images")
    return parser


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    keep_stored_orientation(args.keep_orientation)

    paths, unmatched = collect_inputs(args.inputs, recursive=args.recursive)
    for argument in unmatched:
        print(f"warning: {argument}: no images found", file=sys.stderr)
    if not paths:
        return fail("no input images found")

    out_dir = args.out.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        return fail(f"--out {args.out} is a file, not a folder")
    # Outputs among the inputs would be segmented again on the next run; with --recursive that
    # holds for any folder below an input folder too.
    input_folders = {path.resolve().parent for path in paths}
    if args.recursive:
        trees = [Path(arg).resolve() for arg in args.inputs if Path(arg).is_dir()]
        input_folders.update(out_dir for tree in trees if out_dir.is_relative_to(tree))
    if out_dir in input_folders and not args.allow_input_dir:
        return fail(f"--out {args.out} holds input images; choose another folder "
                    "or pass --allow-input-dir")

    try:
        model_path = model_to_use(args.model, args.runs_dir)
        model = load_segmenter(model_path)
        tile_window(model, tile=args.tile, overlap=args.overlap)
    except ValueError as error:  # a bad model file (DataError) or a tile the model cannot use
        return fail(error)
    print(f"model: {model_path}")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return fail(f"cannot create --out {args.out}: {error.strerror or error}")
    done, failed = segment_files(
        paths,
        model,
        args.out,
        save=["mask", *(kind for kind in args.save if kind != "mask")],
        overwrite=args.overwrite,
        min_area=args.min_area,
        fill_holes=args.fill_holes,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        **inference_options(args),
    )
    print(f"done: {len(done)}, failed: {len(failed)}, outputs in {args.out}")
    return 1 if failed else 0

