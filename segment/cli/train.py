"""Train the segmenter. With no arguments: synthetic shapes, a 9-minute budget."""

import argparse
import sys

from segment.cli.common import HelpFormatter, add_orientation_flag, fail
from segment.data import DIFFICULTIES, GROUPED_PASTE_PROBABILITY, PASTE_PROBABILITY
from segment.losses import LOSSES
from segment.model import FULL_RESOLUTION_CHOICES
from segment.training import (
    CLICK_MINUTES,
    DATA_LR,
    DATA_MINUTES,
    EARLY_SHARE,
    FEW_STEPS,
    HALVINGS,
    INIT_MINUTES,
    MAX_WORKING_SIZE,
    SMALLEST_EARLY_SIZE,
    SMALLEST_WORKING_SIZE,
    STEPS_PER_EPOCH,
    SYNTHETIC_LR,
    SYNTHETIC_MINUTES,
    SYNTHETIC_SIZE,
    TrainConfig,
    train,
)

EXAMPLES = f"""examples:
  python scripts/train.py                                # synthetic shapes, no download
  python scripts/train.py --data photos/ --out runs/mine # your images, {DATA_MINUTES:g} minutes
  python scripts/train.py --data photos/ --minutes 30    # a longer budget
  python scripts/train.py --loss mse --epochs 4 --mixed-precision
  python scripts/train.py --data more_photos/ --init runs/mine/model.keras  # fine-tune
  python scripts/train.py --resume runs/mine             # continue a killed run

how long:
  Training runs for a wall-clock budget: {SYNTHETIC_MINUTES:g} minutes on synthetic shapes,
  {DATA_MINUTES:g} with --data (--minutes M for another). It measures this machine's speed
  first and fixes the epochs that fit (written to config.json), so the learning-rate schedule
  spans the whole run and a slower machine trains fewer epochs in the same time; if the
  machine slows down after that, training stops at the deadline. --epochs N gives an
  exactly repeatable run instead (the same seed, the same weights when run again on one
  CPU). The rate halves {HALVINGS} times, evenly spread over the run, unless --halve-every
  is given. With --data, {CLICK_MINUTES:g} more minutes then train the click network that
  corrects masks from clicks on serve.py's page (--click-minutes M, 0 for none); a check on
  the validation images follows (well under a minute for a hundred), and it is kept as
  clicks.keras only where it clearly saves clicks there.

--data and the working size:
  Every image is scaled, keeping its aspect ratio, so that its longer side is the working
  size (--size; by default the images' median longer side, at most {MAX_WORKING_SIZE}), and learnt whole.
  On a machine where the budget buys fewer than {FEW_STEPS} steps at that size, training works
  at 3/4 of it (not below {SMALLEST_WORKING_SIZE}): more steps at a smaller size learnt more.
  The model remembers that size: predict.py and evaluate.py scale images the same way.

--data and validation:
  Without a val/ folder, a tenth of the images is held out (--val-fraction), in whole groups
  of near-copies (--groups auto): frames of one video (numbered names whose neighbours look
  alike) and near-duplicate pictures stay on one side, so that validation, and the epoch,
  refinement and part sizes chosen on it, is scored on pictures training has not nearly
  seen. The run prints how validation was drawn, warns if near-duplicates remain, and
  metrics.json records it (validation_split).

The run folder gets config.json, model.keras (the latest epoch within one standard error of
the best on validation), history.csv, metrics.json (validation images segmented as
predict.py segments them, at their own size) and TensorBoard logs/ (tensorboard --logdir
runs). Last, training chooses on the validation images how masks are finished: whether to
refine them with GrabCut, the smallest foreground part to keep (none, or 0.25% to 2% of the
image) and the smallest hole to leave unfilled (none filled, 0.25% or 1% of the image); the
settings that score best as IoU less 0.005 per stray part and per wrong hole count per image,
with GrabCut only where it is clearly better. The model remembers them (--refine, --min-part
and --min-hole in predict.py override them)."""


def _standard_error(results):
    """' (standard error 0.0123 over 28 images)', '... over 3 groups of 210 images)' when the
    validation images fall into groups, or '' where there is none."""
    error = results.get("iou_standard_error")
    if error is None:
        return ""
    groups, images = results.get("iou_standard_error_groups"), results["validation_images"]
    over = (f"{groups} groups of {images} images" if groups is not None and groups < images
            else f"{images} images")
    return f" (standard error {error:.4f} over {over})"


def _add_click_flags(parser):
    clicks = parser.add_mutually_exclusive_group()
    clicks.add_argument("--click-minutes", type=float, default=None, metavar="M",
                        help="--data: then train the click network that corrects masks from "
                        "a user's clicks (serve.py's page, POST /api/segment) for M minutes; 0 "
                        f"for none (default: {CLICK_MINUTES:g})")
    clicks.add_argument("--click-steps", type=int, default=None, metavar="N",
                        help="the click network's training steps instead, exactly repeatable")


def _add_size_flags(parser):
    add = parser.add_argument
    add("--size", type=int, default=None,
        help=f"synthetic: training crop side (default {SYNTHETIC_SIZE}); --data: working size, "
        f"the longer side images are scaled to (default: their median, at most "
        f"{MAX_WORKING_SIZE}, and 3/4 of it where a budget buys fewer than {FEW_STEPS} steps "
        "at that); a multiple of 2**depth")
    add("--early-size", type=int, default=None,
        help=f"side of the first {round(EARLY_SHARE * 100)}%% of the epochs, whose steps are "
        f"cheaper (default: half of --size, at least {SMALLEST_EARLY_SIZE}; 0: every epoch at "
        "--size)")


def build_parser(prog=None):
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the foreground/background segmenter (SegmentationModel.train_step, "
        "StepHalvingSGD, the chosen loss) and write a run folder.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--data", default=None, help="image/mask folder (DIR/images, DIR/masks, or train/ val/ "
        "splits); default: synthetic shapes generated on the fly")
    add("--out", default=None, help="run folder (default: runs/<timestamp>)")
    add("--init", metavar="MODEL", default=None,
        help="fine-tune: start from this model.keras (its run folder's network and working "
        f"size) for {INIT_MINUTES:g} minutes unless --epochs or --minutes says otherwise")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None,
                        help="training epochs, exactly repeatable (default: what fits in --minutes)")
    length.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget; training fits its epochs to it (default: "
                        f"{SYNTHETIC_MINUTES:g} on synthetic shapes, {DATA_MINUTES:g} with --data)")
    _add_click_flags(parser)
    add("--steps-per-epoch", type=int, default=None,
        help=f"batches per epoch, each followed by validation (default: {STEPS_PER_EPOCH}; with "
        "--minutes, enough that validation takes at most a tenth of the time)")
    add("--batch-size", type=int, default=defaults.batch_size, help="images per batch")
    _add_size_flags(parser)
    add("--loss", choices=sorted(LOSSES), default=defaults.loss, help="loss (segment.losses.LOSSES)")
    add("--lr", type=float, default=None,
        help=f"initial learning rate (default: {SYNTHETIC_LR:g} on synthetic shapes, {DATA_LR:g} with --data)")
    add("--momentum", type=float, default=defaults.momentum, help="StepHalvingSGD momentum")
    add("--halve-every", type=int, default=None,
        help=f"epochs between halvings of the rate (default: {HALVINGS} halvings spread over the run)")
    add("--schedule-epochs", type=int, default=None,
        help="with --epochs: spread the rate halvings and the early epochs over this many "
        "epochs instead (a budgeted run records in config.json the ones it planned)")
    add("--seed", type=int, default=defaults.seed,
        help="seed of the weights, the data stream and the validation set")
    add("--difficulty", choices=DIFFICULTIES, default=defaults.difficulty,
        help="synthetic data: a preset, or mixed (every preset in one stream)")
    add("--val-count", type=int, default=defaults.val_count, help="synthetic validation images")
    add("--val-fraction", type=float, default=defaults.val_fraction,
        help="fraction of --data held out when it has no val/ folder")
    add("--groups", default=defaults.groups, metavar="auto|none|FILE",
        help="how --data's validation images are drawn without a val/ folder: auto holds out "
        "whole groups of near-copies (a video's frames, several photos of one subject), none "
        "a random part, FILE a CSV of stem,group rows")
    add("--paste", type=float, default=None, metavar="P",
        help="share of --data samples with another image's object pasted in (default: "
        f"{GROUPED_PASTE_PROBABILITY:g} where the images come in groups, such as a video's "
        f"frames, else {PASTE_PROBABILITY:g})")
    add("--threshold", type=float, default=None,
        help="accept multi-valued --data masks: foreground where value > threshold * max")
    add("--void", type=int, default=None, metavar="VALUE",
        help="the --data masks' value for void pixels (a border nobody labelled, as Pascal "
        "VOC's 255), left out of the loss and the scores (default: found in VOC palettes)")
    add_orientation_flag(parser, "--data images")
    add("--base-filters", type=int, default=defaults.base_filters, help="network width at full resolution")
    add("--depth", type=int, default=defaults.depth, help="2x down-samplings in the U-Net")
    add("--full-resolution", choices=FULL_RESOLUTION_CHOICES, default=defaults.full_resolution,
        help="the network's full-resolution level: light (the stem, then one convolution after "
        "the decoder's last merge) or residual (a residual block on each side, as at every "
        "other level; about 1.26x slower per step, measured on an Intel CPU)")
    add("--context", choices=("none", "sweep"), default=defaults.context,
        help="sweep: add the recurrent row/column SweepContext block at the bottleneck")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--mixed-precision", dest="mixed_precision", action="store_true",
                           default=None, help="bfloat16 on CPU, float16 on GPU (default: on "
                           "where the hardware computes it natively: a GPU, or a CPU with "
                           "AVX512-BF16 or AMX)")
    precision.add_argument("--float32", dest="mixed_precision", action="store_false",
                           help="train in float32 throughout")
    add("--strategy", choices=("default", "mirrored", "multiworker"), default=defaults.strategy,
        help="tf.distribute strategy; multiworker: one process per machine, placed by "
        "TF_CONFIG, with --out on shared storage and --epochs (docs/several-machines.md)")
    add("--jit-compile", action="store_true", help="compile the steps with XLA")
    add("--resume", metavar="DIR", default=None, help="continue a run folder from its last epoch")
    add("--overwrite", action="store_true", help="replace the outputs of an existing --out")
    return parser


# Validation IoU below which a run is taken to have collapsed, to an empty mask as a rule, which
# momentum SGD with too high a rate can do in its first steps (docs/experiments.md).
COLLAPSED_IOU = 0.01


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}
    config = TrainConfig(**options)

    try:
        folder, results = train(config, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError, RuntimeError) as error:
        return fail(error)
    if folder is None:
        print(f"worker done; the chief wrote {config.out}")
        return 0
    print(
        f"validation IoU {results['iou']:.4f}{_standard_error(results)}, "
        f"Dice {results['dice']:.4f}, "
        f"spurious {results['spurious']:.2f}/image, b0 error {results['b0_error']:.2f}/image; "
        f"{results['train_seconds']:.0f} s -> {folder / 'model.keras'}"
    )
    if results["min_part"]:
        without = results["without_min_part"]
        print(
            f"foreground parts smaller than {results['min_part']:.2%} of the image are dropped "
            f"(chosen on validation: without, IoU {without['iou']:.4f}, "
            f"spurious {without['spurious']:.2f}/image)"
        )
    if results["min_hole"]:
        without = results["without_min_hole"]
        print(
            f"holes smaller than {results['min_hole']:.2%} of the image are filled (chosen on "
            f"validation: without, IoU {without['iou']:.4f}, wrong hole counts "
            f"{without['b1_error']:.2f}/image)"
        )
    if results["refine"]:
        without = results["without_refine"]
        print(
            "masks are refined with GrabCut on each image's colours (chosen on validation: "
            f"without, IoU {without['iou']:.4f}, spurious {without['spurious']:.2f}/image)"
        )
    if results["stopped_early"]:
        print("warning: training stopped early (NaN loss); model.keras is the last good epoch",
              file=sys.stderr)
    recorded = TrainConfig.from_json(folder / "config.json")  # its settings, as resolved
    if results.get("stopped_at_deadline"):
        print(f"note: this machine slowed down after the budget was planned: training stopped "
              f"at its deadline after {results['stopped_at_deadline']} epochs "
              f"(config.json planned {recorded.epochs})")
    if results["iou"] < COLLAPSED_IOU:
        print(f"warning: validation IoU {results['iou']:.3f}: training collapsed (to an empty "
              f"or all-foreground mask); train again with a lower --lr than this run's "
              f"{recorded.lr:g}", file=sys.stderr)
    return 0

