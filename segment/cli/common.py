"""What the commands share: help layout, checked argument types, the inference flags."""

import argparse
import sys
from pathlib import Path

from segment.model import check_min_part, check_scales

__all__ = [
    "HelpFormatter", "add_inference_flags", "add_model_flags", "add_orientation_flag", "choice_list", "fail", "inference_options",
    "non_negative", "part_share", "positive", "probability", "scale_list",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, keeps the epilog's line breaks, and leaves out empty defaults (flags)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def fail(message):
    """Print `error: message` on stderr; the exit status of a command refused its input."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def part_share(text):
    """A share of an image's pixels in [0, 1), e.g. `0.01` (`segment.model.check_min_part`)."""
    try:
        return check_min_part(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share of the image's pixels in [0, 1), such as 0.01, got {text!r}"
        ) from None


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def scale_list(text):
    """Comma-separated positive factors, e.g. `0.75,1,1.25` (`segment.model.check_scales`)."""
    try:
        return list(check_scales(part for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive factors such as 0.75,1,1.25, got {text!r}"
        ) from None


def choice_list(choices, *, what, allow_none=False):
    """An argparse type for comma-separated names from `choices` (`"none"` -> [] if allowed)."""

    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        if allow_none and names == ["none"]:
            return []
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


# The flags that override what a model saved for prediction (`segment.model.InferenceSettings`):
# flag -> (keyword of `segment.inference.predict_mask`, argparse settings).
_INFERENCE_FLAGS = {
    "--threshold": ("threshold", dict(
        type=probability, default=None, metavar="P",
        help="probability above which a pixel is foreground (default: the one saved with the "
             "model, 0.5 unless training chose one)")),
    "--resize": ("resize", dict(
        type=non_negative, default=None, metavar="S",
        help="scale each image so its longer side is S before segmenting it; 0: its own scale "
             "(default: the model's working size, saved with it)")),
    "--tta": ("tta", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="average predictions over the four flips (4x slower, smoother masks; default: "
             "the model's own setting, on for models train.py made)")),
    "--scales": ("scales", dict(
        type=scale_list, default=None, metavar="FACTORS",
        help="comma-separated factors of the working size (or of the image's own size) to "
             "predict at and average, e.g. 1 for one pass (default: the model's own, 0.75 to "
             "1.25 in steps of 1/8 for --data models)")),
    "--refine": ("refine", dict(
        action=argparse.BooleanOptionalAction, default=None,
        help="refine each mask with GrabCut on the image's own colours (default: the model's "
             "own setting, on where training found it scored better on the validation images)")),
    "--min-part": ("min_part", dict(
        type=part_share, default=None, metavar="SHARE",
        help="drop foreground parts smaller than this share of the image's pixels, e.g. 0.01; "
             "0: none (default: the model's own, chosen on validation by train.py)")),
    "--min-hole": ("min_hole", dict(
        type=part_share, default=None, metavar="SHARE",
        help="fill holes smaller than this share of the image's pixels, e.g. 0.0025; 0: none "
             "(default: the model's own, chosen on validation by train.py)")),
}


def add_model_flags(parser):
    """`--model PATH` and `--runs-dir DIR`, where the newest model is found without --model
    (`segment.inference.model_to_use` reads them back)."""
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="model file (.keras, or .onnx/.tflite/.xml from export.py); defaults "
                             "to the newest RUNS_DIR/*/model.keras")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="where to look for a model when --model is not given")


def add_orientation_flag(parser, what="images"):
    """`--keep-orientation`: read `what` as stored, not turned upright by EXIF orientation."""
    parser.add_argument(
        "--keep-orientation", action="store_true",
        help=f"read {what} as their pixels are stored; by default a photo is turned upright by "
        "its EXIF orientation, as viewers show it, and every output has the upright size")


def add_inference_flags(parser):
    """Add the flags that override a model's saved prediction settings (`inference_options`
    reads them back)."""
    group = parser.add_argument_group("prediction settings (default: the model's own)")
    for flag, (_, settings) in _INFERENCE_FLAGS.items():
        group.add_argument(flag, **settings)
    return group


def inference_options(args):
    """The keywords of `segment.inference.predict_mask` that `add_inference_flags` set."""
    return {keyword: getattr(args, keyword) for keyword, _ in _INFERENCE_FLAGS.values()}
