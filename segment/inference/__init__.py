"""Running a trained segmenter on users' images: loading, prediction, masks, outputs.

- `loading`: `.keras` files in safe mode (`load_segmenter`), exported files (`exported`).
- `segment.model.InferenceSettings`: what a saved model tells prediction (working size,
  threshold, flips, scales, how masks are finished).
- `predict`: any-size prediction (`predict_probability`, `predict_mask`), on `tiling`.
- `masks`: threshold, GrabCut refinement, small parts and holes (`finish_mask`).
- `clicks`: a mask corrected by a user's clicks (`parse_clicks`, `correct_mask`).
- `render`: mask, probability, overlay and cut-out pictures.
- `files`: segmenting files named on a command line (`segment_files`).

Typical use:

    model = load_segmenter("runs/shapes/model.keras")
    probability = predict_probability(model, read_image("photo.jpg"))
    mask = predict_mask(model, read_image("photo.jpg"))
"""

from segment.inference.clicks import Click, correct_mask, parse_clicks
from segment.inference.exported import METADATA_KEY, ExportedSegmenter, load_exported
from segment.inference.files import collect_inputs, segment_files
from segment.inference.loading import (
    CLICK_NETWORK,
    find_latest_model,
    load_click_network,
    load_segmenter,
    model_to_use,
)
from segment.inference.masks import (
    REFINE_SIDE,
    REFINE_SURE,
    clean_mask,
    finish_mask,
    refine_mask,
)
from segment.inference.predict import predict_mask, predict_probability
from segment.inference.render import (
    OUTPUT_KINDS,
    error_picture,
    output_path,
    render_output,
    render_outputs,
)
from segment.inference.tiling import size_multiple, tile_window
from segment.model import InferenceSettings, check_min_part, check_scales

__all__ = [
    "check_min_part",
    "check_scales",
    "CLICK_NETWORK",
    "clean_mask",
    "Click",
    "collect_inputs",
    "correct_mask",
    "error_picture",
    "ExportedSegmenter",
    "find_latest_model",
    "finish_mask",
    "InferenceSettings",
    "load_click_network",
    "load_exported",
    "load_segmenter",
    "METADATA_KEY",
    "model_to_use",
    "OUTPUT_KINDS",
    "output_path",
    "parse_clicks",
    "predict_mask",
    "predict_probability",
    "refine_mask",
    "REFINE_SIDE",
    "REFINE_SURE",
    "render_output",
    "render_outputs",
    "segment_files",
    "size_multiple",
    "tile_window",
]
