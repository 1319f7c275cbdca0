"""The run folder: created, resumed or replaced; its history and atomic model saves."""

import csv
import io
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from segment.imageio import DataError, write_text

BACKUP = "backup"


def prepare_run_folder(config, *, resume, overwrite):
    """The run folder, checked and created; also whether this call created it."""
    if resume:
        folder = Path(resume)
        if not (folder / "config.json").is_file():
            raise DataError(f"{folder}: not a run folder (no config.json) to resume")
        if not (folder / BACKUP).exists() and (folder / "model.keras").exists():
            raise DataError(f"{folder}: this run already finished; start a new one with --out")
        return folder, False
    folder = Path(config.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise DataError(
            f"{folder}: already exists and is not empty; pass --resume {folder} to continue it "
            "or --overwrite to replace it"
        )
    created = not folder.exists()
    if overwrite and folder.exists():
        for name in ("model.keras", "history.csv", "metrics.json"):
            (folder / name).unlink(missing_ok=True)
        for name in (BACKUP, "logs"):
            if (folder / name).exists():
                shutil.rmtree(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    config.out = str(folder)
    config.to_json(folder / "config.json")
    return folder, created


def unfinished(folder):
    """Whether `folder` holds a run that stopped before its end (it has a backup)."""
    return folder is not None and (Path(folder) / BACKUP).exists()


def history_best(path, initial_epoch):
    """Keep the history of completed epochs only; return the best val_iou in it."""
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < initial_epoch]
    if rows:
        kept = io.StringIO(newline="")
        writer = csv.DictWriter(kept, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, kept.getvalue())
    else:
        path.unlink()
    scores = [float(row["val_iou"]) for row in rows if row.get("val_iou")]
    return max(scores) if scores else None


def save_atomically(model, model_path):
    """Save `model` (compiled, optimizer state and all) over `model_path`, atomically."""
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".model.") as scratch:
        staged = Path(scratch) / model_path.name
        model.save(staged)
        staged.replace(model_path)

