"""Segmenting files named on a command line and writing their outputs."""

import glob
import sys
from pathlib import Path

from tqdm import tqdm

from segment.imageio import DataError, is_image_file, read_image, write_png
from segment.inference.masks import finish_mask
from segment.inference.predict import predict_probability
from segment.inference.render import OUTPUT_KINDS, output_path, render_output, to_uint8

__all__ = ["collect_inputs", "segment_files"]


def collect_inputs(inputs, *, recursive=False):
    """Image files named by command-line arguments, in order, without duplicates.

    A folder gives its image files (by extension, hidden files skipped), descending into
    sub-folders only if `recursive`. A glob pattern is expanded here (with `**` when
    `recursive`) so it works even when the shell did not expand it. Any other argument is taken
    as a file as given, even a missing one or one with another extension, so that reading it
    reports what is wrong with it.

    Args:
        inputs: paths, folders or glob patterns.
        recursive: descend into sub-folders. Defaults to False.

    Returns:
        `(paths, unmatched)`: the `pathlib.Path`s found, and the arguments that matched nothing.
    """
    paths, unmatched, seen = [], [], set()

    def add(path):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for argument in inputs:
        argument = str(argument)
        if Path(argument).is_dir():
            found = _images_in_folder(Path(argument), recursive=recursive)
        elif glob.has_magic(argument):
            found = []
            for match in sorted(glob.glob(argument, recursive=recursive)):
                match = Path(match)
                if match.is_dir():
                    found.extend(_images_in_folder(match, recursive=recursive))
                elif is_image_file(match) and not match.name.startswith("."):
                    found.append(match)
        else:
            found = [Path(argument)]
        if not found:
            unmatched.append(argument)
        for path in found:
            add(path)
    return paths, unmatched


def _images_in_folder(folder, *, recursive):
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and is_image_file(path) and not path.name.startswith(".")
    )


def segment_files(
    paths,
    model,
    out_dir,
    *,
    save=("mask",),
    overwrite=False,
    threshold=None,
    refine=None,
    min_area=0,
    fill_holes=0,
    min_part=None,
    min_hole=None,
    **predict_options,
):
    """Segment image files and write their outputs, carrying on past bad files.

    Each file that cannot be done gets one line on stderr, naming it and the reason. Outputs
    are written atomically as `out_dir/<stem>_<kind>.png`. An input file is never overwritten,
    even with `overwrite`, and two inputs with the same stem do not overwrite each other.

    Args:
        paths: image files.
        model: a `keras.Model` (see `load_segmenter`).
        out_dir: existing folder for the outputs.
        save: output kinds to write, from `OUTPUT_KINDS`. Defaults to ("mask",).
        overwrite: replace outputs already in `out_dir`. Defaults to False.
        threshold: see `predict_mask`. Defaults to the model's own.
        refine: see `predict_mask`. Defaults to the model's own.
        min_area: see `predict_mask`. Defaults to 0 (off).
        fill_holes: see `predict_mask`. Defaults to 0 (off).
        min_part: see `predict_mask`. Defaults to the model's own.
        min_hole: see `predict_mask`. Defaults to the model's own.
        **predict_options: passed to `predict_probability` (`tile`, `overlap`, `tta`, ...).

    Returns:
        `(done, failed)`: the paths done, and `(path, reason)` for each that failed.
    """
    unknown = set(save) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"Unknown output kinds {sorted(unknown)}; expected {OUTPUT_KINDS}")
    paths = [Path(path) for path in paths]
    finish = dict(threshold=threshold, refine=refine, min_area=min_area, fill_holes=fill_holes,
                  min_part=min_part, min_hole=min_hole)
    inputs = {path.resolve() for path in paths}
    written_by = {}  # output file -> the input it was written for, in this run
    done, failed = [], []
    for path in tqdm(paths, desc="segmenting", unit="image", disable=None):
        try:
            targets = {kind: output_path(out_dir, path, kind) for kind in save}
            _check_targets(path, targets.values(), inputs, written_by, overwrite=overwrite)
            image = read_image(path)
            probability = predict_probability(model, image, **predict_options)
            mask = finish_mask(model, image, probability, **finish)
            # The outputs need 8-bit colour only; the float image is four times larger.
            image = to_uint8(image)
            for kind, target in targets.items():
                write_png(target, render_output(kind, image, probability, mask))
                written_by[target.resolve()] = path
        except Exception as error:  # one bad file must not end the batch
            reason = str(error) if isinstance(error, DataError) else _describe(error)
            reason = reason if reason.startswith(str(path)) else f"{path}: {reason}"
            tqdm.write(reason.splitlines()[0], file=sys.stderr)
            failed.append((path, reason))
        else:
            done.append(path)
    return done, failed


def _check_targets(path, targets, inputs, written_by, *, overwrite):
    for target in targets:
        key = target.resolve()
        if key in inputs:
            raise DataError(f"{path}: output {target} would overwrite an input file")
        if key in written_by:
            raise DataError(f"{path}: output {target} was already written for {written_by[key]}")
        if target.exists() and not overwrite:
            raise DataError(f"{path}: output {target} exists; use --overwrite to replace it")


def _describe(error):
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__

