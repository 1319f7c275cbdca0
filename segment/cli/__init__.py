"""The `segment` command: every job of the project behind one installed command.

    segment train --data photos/ --out runs/mine
    segment predict photos/ --out masks/ --save overlay,cutout
    segment benchmark speed --quick

Each job takes the flags and prints the help of its script (`segment train` is
`python scripts/train.py`); `segment JOB --help` shows them. The job's module is imported only
when the job runs.
"""

import importlib
import sys

__all__ = ["BENCHMARKS", "JOBS", "main"]

# job -> (module with `main(argv=None, prog=None) -> int`, what the job does)
JOBS = {
    "train": ("segment.cli.train", "train a segmenter and write a run folder"),
    "predict": ("segment.cli.predict", "segment images: masks, probabilities, overlays, cut-outs"),
    "evaluate": ("segment.cli.evaluate", "score a model and classical baselines on image/mask pairs"),
    "export": ("segment.cli.export", "export a model to ONNX, LiteRT, OpenVINO or a SavedModel"),
    "serve": ("segment.cli.serve", "a local web page and HTTP API for a model"),
    "generate": ("segment.cli.generate", "write a synthetic image/mask dataset"),
    "contact-sheet": ("segment.cli.contact_sheet", "a picture of synthetic samples per difficulty"),
    "import-masks": ("segment.cli.import_masks", "masks from COCO or LabelMe polygon exports"),
    "benchmark": (None, "measure: losses, real photographs, speed, robustness, serving, groups, "
                        "clicks, a training step's profile"),
}
BENCHMARKS = {
    "losses": ("segment.benchmarks.losses", "every loss on the same network, data and steps"),
    "real": ("segment.benchmarks.real", "our recipe against a plain Keras U-Net at equal time"),
    "speed": ("segment.benchmarks.speed", "training and prediction speed against stock Keras"),
    "robustness": ("segment.benchmarks.robustness", "masks under noise, blur and low contrast"),
    "serving": ("segment.benchmarks.serving", "the HTTP API under concurrent requests"),
    "grouping": ("segment.benchmarks.grouping", "how well --groups auto finds known groups"),
    "interactive": ("segment.benchmarks.interactive",
                    "clicks to a good mask, with a simulated annotator"),
    "profile": ("segment.benchmarks.profile", "where a training step's time goes"),
}


def _usage(prog, table, what):
    width = max(map(len, table))
    lines = [f"usage: {prog} {what} ...", ""]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in table.items()]
    lines += ["", f"{prog} {what} --help shows the flags of each."]
    return "\n".join(lines)


def _dispatch(argv, prog, table, what):
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, table, what), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: error: unknown {what.lower()} {name!r}; choose from {', '.join(table)}",
              file=sys.stderr)
        return 2
    module, _ = table[name]
    if module is None:  # the benchmarks, one level down
        return _dispatch(rest, f"{prog} {name}", BENCHMARKS, "BENCHMARK")
    return importlib.import_module(module).main(rest, prog=f"{prog} {name}")


def main(argv=None):
    """Run `segment JOB ...`; the job's exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        from segment import __version__

        print(f"segment {__version__}")
        return 0
    return _dispatch(argv, "segment", JOBS, "JOB")
