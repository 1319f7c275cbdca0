"""Serve a trained model over HTTP: a web page to drop images on, and an API (rembg-style)."""

import argparse
import socket

from segment.cli.common import (
    HelpFormatter,
    add_model_flags,
    add_orientation_flag,
    fail,
    positive,
)
from segment.imageio import DataError
from segment.inference import load_click_network, load_segmenter, model_to_use

EPILOG = """\
examples:
  python scripts/serve.py                                  # newest runs/*/model.keras
  python scripts/serve.py --model runs/mine/model.onnx --port 8080
  python scripts/serve.py --model runs/mine/model.keras --label new_photos/
  curl -F file=@photo.jpg "http://127.0.0.1:8000/api/segment?output=cutout" -o cutout.png

endpoints:
  /                 the page: drop an image, see overlay and cut-out, move the threshold
  POST /api/segment multipart field "file"; ?output=mask|prob|overlay|cutout, threshold,
                    tta, min_area, min_part, min_hole, fill_holes, refine;
                    answers a PNG
  GET /api/health   model, backend, input size multiple, default settings
  /api/label...     with --label: the folder's photographs, their masks, saving a mask
  /docs             the API's OpenAPI documentation

It listens on 127.0.0.1 only, unless --host says otherwise (0.0.0.0: every interface; the
server has no authentication). Uploads stay in memory; nothing is written to disk, but with
--label the masks accepted on the page, inside DIR/masks/ only, under the photographs' names.
Needs the serve extra: pip install -e ".[serve]"
"""


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    add_model_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=positive, default=8000, help="TCP port")
    parser.add_argument("--workers", type=positive, default=2,
                        help="images segmented at once (a bounded thread pool)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0,
                        help="largest upload accepted, in MiB (larger: 413)")
    parser.add_argument("--max-megapixels", type=float, default=40.0,
                        help="largest image accepted, width x height in millions (larger: 413)")
    parser.add_argument("--label", metavar="DIR", default=None,
                        help="label a folder of photographs on the page: DIR/images (or DIR) "
                        "shown one by one with the model's mask, clicks to correct it, and "
                        "accept writes DIR/masks/<stem>.png (never over a mask without asking); "
                        "where there is no model, masks come from clicks alone")
    add_orientation_flag(parser, "uploads")
    return parser


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    try:
        import uvicorn

        from segment.deploy.server import create_app
    except ImportError as error:
        return fail(f"serving needs the serve extra ({error.name} is missing): "
                    'pip install -e ".[serve]"')
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        return fail("--max-upload-mb and --max-megapixels must be positive")
    if args.port > 65535:
        return fail(f"--port {args.port} is not a TCP port (1 to 65535)")
    try:  # uvicorn reports a busy port only in its log; find out first
        with socket.socket() as probe:
            probe.bind((args.host, args.port))
    except OSError as error:
        return fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    try:
        model_path = model_to_use(args.model, args.runs_dir)
    except DataError as error:
        if args.label is None:
            return fail(error)
        model_path = None  # labelling from clicks alone
    try:
        model = None if model_path is None else load_segmenter(model_path)
        click_network = None if model_path is None else load_click_network(model_path)
    except ValueError as error:
        return fail(error)
    try:
        app = create_app(
            model,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_pixels=int(args.max_megapixels * 1e6),
            workers=args.workers,
            keep_orientation=args.keep_orientation,
            label=args.label,
            click_network=click_network,
        )
    except DataError as error:  # the folder to label
        return fail(error)
    if args.label is not None:
        listing = app.state.label_folder.listing()
        print(f"labelling {listing['count']} photographs in {args.label} "
              f"({listing['labelled']} with masks already)", flush=True)
    served = model_path or "no model (masks from clicks alone)"
    if click_network is not None:
        served = f"{served} with its click network"
    print(f"serving {served} on http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

