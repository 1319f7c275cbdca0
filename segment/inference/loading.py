"""Opening model files: `.keras` archives in safe mode, exported files through their runtimes."""

import re
from pathlib import Path

import keras

from segment.imageio import DataError
from segment.inference.exported import load_exported

__all__ = ["CLICK_NETWORK", "find_latest_model", "load_click_network", "load_segmenter",
           "model_to_use"]

# The click network `train.py --data` saves beside model.keras (segment.training.clicks).
CLICK_NETWORK = "clicks.keras"


def load_segmenter(path):
    """Load a saved segmenter in Keras safe mode, for inference only.

    A native `.keras` archive is loaded in Keras safe mode, which refuses Python lambdas
    (stored as bytecode) and classes that are not registered with Keras; nothing in the file
    is unpickled or evaluated. An exported `.onnx`, `.tflite` or `.xml` file
    (`scripts/export.py`) is opened with onnxruntime, LiteRT or OpenVINO
    (`segment.inference.exported.load_exported`).

    Args:
        path: a `model.keras` file written by training, or an exported model.

    Returns:
        The `keras.Model`, uncompiled (or the exported model behind the same interface).

    Raises:
        DataError: the file is missing, not a Keras model, corrupt, or holds code or classes
            that safe mode refuses; the one-line message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    if path.suffix.lower() in (".onnx", ".tflite", ".xml"):
        return load_exported(path)
    if path.suffix.lower() != ".keras":
        raise DataError(
            f"{path}: not a model file (.keras, or .onnx/.tflite/.xml from scripts/export.py)"
        )
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras reports bad files as ValueError, TypeError, KeyError...
        raise DataError(f"{path}: {_load_failure_reason(error)}") from None


def load_click_network(model_path):
    """The click network saved beside the model at `model_path` (`CLICK_NETWORK` in the
    same folder), loaded as `load_segmenter` loads; None where there is none (an exported
    model, a synthetic-shapes run, a run from before click networks).

    Raises:
        DataError: the file is there but cannot be loaded (as `load_segmenter`).
    """
    path = Path(model_path).with_name(CLICK_NETWORK)
    if Path(model_path).suffix.lower() != ".keras" or not path.is_file():
        return None
    return load_segmenter(path)


def _load_failure_reason(error):
    """One line saying why Keras refused a model file."""
    message = str(error)
    if "lambda" in message.lower() and "safe_mode" in message:
        return "model holds a Python lambda (arbitrary code); refused in safe mode"
    # Unknown classes come wrapped in a long "could not be deserialized" message.
    unknown = re.search(r"Could not locate (class|function) '([^']+)'", message)
    if unknown:
        kind, name = unknown.groups()
        return f"model uses {kind} '{name}', which is not registered with Keras here; refused"
    if isinstance(error, KeyError) or "not found" in message.lower():
        return "not a Keras model file (corrupt or another format)"
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return f"cannot load model ({first_line[:200]})"


def find_latest_model(runs_dir="runs"):
    """The most recently written `runs_dir/*/model.keras`, by modification time.

    Args:
        runs_dir: folder holding one sub-folder per training run. Defaults to "runs".

    Returns:
        `pathlib.Path` of the newest model, or None if there is none.
    """
    candidates = [path for path in Path(runs_dir).glob("*/model.keras") if path.is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def model_to_use(path, runs_dir="runs"):
    """`path`, or when it is None the newest model in `runs_dir` (`find_latest_model`).

    Raises:
        DataError: no path given and no model in `runs_dir`.
    """
    path = path or find_latest_model(runs_dir)
    if path is None:
        raise DataError("no model found; train one with python scripts/train.py")
    return Path(path)

