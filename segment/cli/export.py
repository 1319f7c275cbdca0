"""Export a trained segmenter for deployment: ONNX, LiteRT (.tflite), OpenVINO (.xml + .bin) or a
TensorFlow SavedModel."""

import argparse
from pathlib import Path

from segment.cli.common import HelpFormatter, fail
from segment.deploy.export import FORMATS, default_path, export_model
from segment.imageio import DataError
from segment.inference import load_segmenter

EPILOG = """\
examples:
  python scripts/export.py --model runs/mine/model.keras --format onnx
  python scripts/export.py --model runs/mine/model.keras --format litert --out phone/seg.tflite
  python scripts/export.py --model runs/mine/model.keras --format openvino  # the fastest on CPUs
  python scripts/predict.py photos/ --model runs/mine/model.onnx --out masks/

Height and width stay dynamic in every format: the exported model takes any image size the
network takes, and predict.py/evaluate.py tile and scale for it as for the .keras model.
What inference needs besides the network (working size, threshold, flip and scale averaging,
smallest part kept, smallest hole left, GrabCut refinement, size multiple) travels with the
file: ONNX metadata_props "segment", a <file>.json sidecar beside a .tflite (keep the two
together), the OpenVINO model's rt_info "segment" (keep model.xml and model.bin together),
segment.json inside a SavedModel folder.

OpenVINO computes in bfloat16 on CPUs that do so natively (AVX512-BF16, AMX), as training's
mixed precision does, and compiles the network once per input shape.

Needs the export extra: pip install -e ".[export]"
"""


def build_parser(prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--model", required=True, type=Path, metavar="PATH",
                        help="the trained model.keras (loaded in safe mode)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS),
                        help="onnx (onnxruntime), litert (.tflite), openvino (.xml + .bin) or "
                             "saved_model (a folder)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="where to write (default: beside the model: model.onnx, "
                             "model.tflite, model.xml, model_saved_model/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    out = args.out or default_path(args.model, args.format)
    try:
        if args.model.suffix.lower() != ".keras":
            raise DataError(f"{args.model}: export takes the trained .keras model")
        model = load_segmenter(args.model)
        written = export_model(model, out, args.format, overwrite=args.overwrite)
    except (DataError, ValueError, OSError) as error:
        return fail(error)
    print(f"{args.format}: {written}")
    return 0

