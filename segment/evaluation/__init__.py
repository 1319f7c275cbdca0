"""Scoring segmenters on images with known masks, beside classical and stock-Keras baselines.

- `scoring`: one code path for training's validation and `evaluate.py` (`evaluate_samples`).
- `report`: per-image CSV, the summary table, the worst images' contact sheet.
- `baselines`: Otsu, Chan-Vese and GrabCut.
- `plain_unet`: the stock Keras U-Net our recipe is measured against.
"""

from segment.evaluation.baselines import BASELINES, chan_vese, grabcut, otsu
from segment.evaluation.report import (
    COLUMNS,
    LEGEND,
    report_table,
    worst_sheet,
    write_per_image_csv,
    write_report,
)
from segment.evaluation.scoring import (
    evaluate_folder,
    evaluate_samples,
    evaluation_folder,
    image_ious,
    load_methods,
    mean_iou,
    model_method,
    summarize,
)

__all__ = [
    "BASELINES",
    "chan_vese",
    "COLUMNS",
    "evaluate_folder",
    "evaluate_samples",
    "evaluation_folder",
    "grabcut",
    "LEGEND",
    "load_methods",
    "image_ious",
    "mean_iou",
    "model_method",
    "otsu",
    "report_table",
    "summarize",
    "worst_sheet",
    "write_per_image_csv",
    "write_report",
]
