"""The loss benchmark's pictures: a bar chart of the scores and a sheet of sample masks."""

import math
import os

import cv2
import numpy as np

from segment.inference import error_picture
from segment.metrics import evaluate_masks

__all__ = ["bar_chart", "samples_sheet"]


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _BLACK, _GRAY = (255, 255, 255), (0, 0, 0), (120, 120, 120)
_BAR = (70, 130, 200)
_HIGHLIGHT = (230, 120, 40)  # the composite loss's bar, the one the benchmark is about


def _text(canvas, text, origin, *, scale=0.45, colour=_BLACK, align="left", thickness=1):
    (width, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x, y = origin
    if align == "right":
        x -= width
    elif align == "center":
        x -= width // 2
    cv2.putText(canvas, text, (int(x), int(y)), _FONT, scale, colour, thickness, cv2.LINE_AA)


def bar_chart(summary, *, footer):
    """IoU, B0 error and spurious per loss as three horizontal-bar panels, uint8 RGB.

    Each bar is the mean over seeds; the whisker spans ± one standard deviation.
    """
    panels = [("iou", "IoU (higher is better)", "{:.3f}"),
              ("b0_error", "B0 error / image (lower is better)", "{:.2f}"),
              ("spurious", "spurious specks / image (lower is better)", "{:.2f}")]
    names = list(summary)
    row_height, top, bottom = 30, 46, 40
    name_width, bar_width, value_width = 100, 200, 110
    panel_width = name_width + bar_width + value_width
    height = top + row_height * len(names) + bottom
    canvas = np.full((height, panel_width * len(panels), 3), 255, np.uint8)

    for index, (column, title, number_format) in enumerate(panels):
        left = index * panel_width
        axis_x = left + name_width
        _text(canvas, title, (left + panel_width // 2, 24), scale=0.5, align="center",
              thickness=1)
        extents = [stats[column][0] + stats[column][1] for stats in summary.values()
                   if math.isfinite(stats[column][0])]
        limit = max(extents + [1e-9])
        if column == "iou":
            limit = max(limit, 1.0)  # IoU is read against its full range
        scale = bar_width / limit
        for row, name in enumerate(names):
            mean, std, runs = summary[name][column]
            centre = top + row * row_height + row_height // 2
            _text(canvas, name, (axis_x - 8, centre + 5), align="right")
            if not math.isfinite(mean):
                _text(canvas, "NaN (diverged)", (axis_x + 6, centre + 5), colour=(200, 0, 0))
                continue
            colour = _HIGHLIGHT if name == "composite" else _BAR
            end = axis_x + round(mean * scale)
            cv2.rectangle(canvas, (axis_x, centre - 9), (end, centre + 9), colour, -1)
            label = number_format.format(mean)
            whisker_end = end
            if runs > 1:
                low, high = axis_x + round(max(mean - std, 0) * scale), end + round(std * scale)
                cv2.line(canvas, (low, centre), (high, centre), _BLACK, 1, cv2.LINE_AA)
                for x in (low, high):
                    cv2.line(canvas, (x, centre - 5), (x, centre + 5), _BLACK, 1, cv2.LINE_AA)
                label += " +- " + number_format.format(std)  # Hershey fonts have no "±"
                whisker_end = max(end, high)
            _text(canvas, label, (whisker_end + 6, centre + 5), scale=0.4)
        axis_bottom = top + row_height * len(names)
        cv2.line(canvas, (axis_x, top - 6), (axis_x, axis_bottom), _BLACK, 1)
        cv2.line(canvas, (axis_x, axis_bottom), (axis_x + bar_width, axis_bottom), _GRAY, 1)
        for fraction in (0.0, 0.5, 1.0):
            x = axis_x + round(fraction * bar_width)
            cv2.line(canvas, (x, axis_bottom), (x, axis_bottom + 4), _GRAY, 1)
            _text(canvas, f"{fraction * limit:.3g}", (x, axis_bottom + 16), scale=0.35,
                  colour=_GRAY, align="center")
        if index:
            cv2.line(canvas, (left, 8), (left, height - 30), (220, 220, 220), 1)
    _text(canvas, footer, (8, height - 8), scale=0.4, colour=(60, 60, 60))
    return canvas


_CELL = 128  # samples.png cell side in pixels
_HEADER = 24


def _cell(picture):
    """`picture` (uint8 RGB) enlarged with hard pixel edges to a square cell."""
    return cv2.resize(picture, (_CELL, _CELL), interpolation=cv2.INTER_NEAREST)


def _label(cell, text):
    """Small white text with a dark outline at the bottom of a cell."""
    for colour, thickness in ((_BLACK, 3), (_WHITE, 1)):
        cv2.putText(cell, text, (4, _CELL - 6), _FONT, 0.38, colour, thickness, cv2.LINE_AA)
    return cell


def samples_sheet(images, masks, predictions_by_loss):
    """Rows of `image | truth | one prediction per loss`, uint8 RGB.

    Predictions are coloured against the truth: white correct foreground, red false
    foreground, blue missed foreground; each cell is labelled with its IoU and specks.
    """
    titles = ["image", "truth", *predictions_by_loss]
    width = _CELL * len(titles)
    header = np.full((_HEADER, width, 3), 30, np.uint8)
    for column, title in enumerate(titles):
        _text(header, title, (column * _CELL + _CELL // 2, 16), colour=_WHITE, align="center")
    rows = [header]
    for index, (image, truth) in enumerate(zip(images, masks)):
        cells = [_cell(np.round(image * 255).astype(np.uint8)),
                 _cell(np.repeat(truth[..., None].astype(np.uint8) * 255, 3, axis=2))]
        for predictions in predictions_by_loss.values():
            metrics = evaluate_masks(predictions[index], truth)
            cell = _cell(error_picture(predictions[index], truth))
            cells.append(_label(cell, f"IoU {metrics['iou']:.2f}  spur {metrics['spurious']:.0f}"))
        row = np.concatenate(cells, axis=1)
        row[:, _CELL::_CELL] = 30  # thin separators between cells and rows
        row[-1] = 30
        rows.append(row)
    legend = np.full((_HEADER, width, 3), 30, np.uint8)
    _text(legend, "white: correct foreground   red: false foreground   blue: missed",
          (6, 16), scale=0.4, colour=_WHITE)
    rows.append(legend)
    return np.concatenate(rows, axis=0)


def pyplot():
    """matplotlib's pyplot, drawing to files only (the plot extra; ImportError without it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path):
    """Write a matplotlib figure as a PNG atomically (a hidden temporary file, then renamed)
    and close it."""
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=90)
    pyplot().close(figure)
    os.replace(temporary, path)
