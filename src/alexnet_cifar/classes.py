"""What the network gets wrong, class by class: the training's record of its predictions, and the
tables derived from it without retraining.

After every evaluation the training keeps each image's predicted class, from the same logits as
the epoch's accuracy (flip-averaged where ``tta_flip`` is on), and writes them with the history:
``runs/{run}/predictions.npz`` (:data:`alexnet_cifar.layout.PREDICTIONS_FILE`) with

- ``test``: uint8, epochs x test images, the predicted class;
- ``val`` and ``val_index`` (with validation images): uint8, epochs x validation images, and which
  training images those are (int64, indexes into the prepared data's training split).

:func:`read_predictions` checks a file against the run's history and the data before anything is
derived from it; :func:`class_table`, :func:`confusion_table` and :func:`class_settings` derive the
per-class accuracy per epoch, the confusion counts at the peak and the last epoch, and the per-class
statistics over seeds.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .data import CLASSES
from .errors import UserError

CLASS_COLUMNS = ["epoch", "class", "accuracy"]
CONFUSION_COLUMNS = ["which", "epoch", "true", "predicted", "count"]
CLASS_SETTINGS_COLUMNS = ["setting", "model", "epoch", "class", "n", "mean", "sd"]
_FIX = "the training writes this file: delete the run's outputs and rerun its training"


class PredictionsError(UserError, ValueError):
    """A predictions file that cannot be read or does not fit its run; the message names the file,
    what was expected and what was found."""


def write_predictions(path: str | os.PathLike, test: np.ndarray, val: np.ndarray | None = None,
                      val_index: np.ndarray | None = None) -> None:
    """Write the record atomically (uncompressed: about 0.5 MB for 50 epochs of 10,000 images)."""
    arrays = {"test": np.asarray(test, dtype=np.uint8)}
    if val is not None:
        arrays.update(val=np.asarray(val, dtype=np.uint8), val_index=np.asarray(val_index, dtype=np.int64))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: numpy adds no ".npz"
        np.savez(handle, **arrays)


def read_predictions(path: str | os.PathLike, epochs: int, test_images: int, *, validated: bool,
                     train_images: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``path``, checked: ``test`` of shape (``epochs``, ``test_images``) and, for a
    run with validation (``validated``), ``val`` of shape (``epochs``, images held out) and
    ``val_index`` (distinct indexes below ``train_images``); every class in 0-9."""
    path = Path(path)

    def fail(problem: str) -> PredictionsError:
        return PredictionsError(f"{path}: {problem}; {_FIX}")

    if not path.is_file():
        raise PredictionsError(f"{path} does not exist: run the training first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise fail(f"it cannot be read as an .npz ({exc})") from exc
    wanted = ["test", *(["val", "val_index"] if validated else [])]
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise fail(f"it has no array {', '.join(map(repr, missing))} (found {sorted(arrays) or 'none'})")
    held = arrays["val_index"] if validated else None
    if held is not None:
        if held.ndim != 1 or held.dtype.kind not in "iu" or len(np.unique(held)) != len(held) or (
                train_images is not None and len(held) and (held.min() < 0 or held.max() >= train_images)):
            raise fail(f"'val_index' should be distinct indexes of training images (0 to {train_images}), "
                       f"found {held.dtype} of shape {held.shape}")
    for key, images in (("test", test_images), *((("val", len(held)),) if held is not None else ())):
        values = arrays[key]
        if values.dtype.kind not in "iu" or values.shape != (epochs, images):
            raise fail(f"'{key}' should be integer classes of shape ({epochs} epochs, {images} images), as the "
                       f"history and the data say, found {values.dtype} of shape {values.shape}")
        outside = (values < 0) | (values >= len(CLASSES))
        if outside.any():
            epoch, image = np.argwhere(outside)[0]
            # A run with num_classes above 10 may truly predict such an output: per-class results
            # are defined over CIFAR-10's classes only, so the message names that case too.
            raise PredictionsError(
                f"{path}: '{key}' should hold classes 0-{len(CLASSES) - 1}, found {values[epoch, image]} (epoch "
                f"{epoch + 1}, image {image}; {int(outside.sum())} such); either the file is damaged ({_FIX}), "
                f"or the run has num_classes above {len(CLASSES)} and predicted an output that is no CIFAR-10 "
                f"class: per-class results need num_classes {len(CLASSES)}")
    return {key: arrays[key] for key in wanted}


def class_table(test: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Each class's test accuracy (%) per epoch, one row per epoch and class (:data:`CLASS_COLUMNS`);
    empty where the test set holds no image of the class."""
    correct = test == labels[None, :]
    rows = []
    for epoch in range(1, len(test) + 1):
        for index, name in enumerate(CLASSES):
            of_class = labels == index
            accuracy = 100.0 * correct[epoch - 1, of_class].mean() if of_class.any() else None
            rows.append({"epoch": epoch, "class": name, "accuracy": accuracy})
    return pd.DataFrame(rows, columns=CLASS_COLUMNS)


def confusion_table(test: np.ndarray, labels: np.ndarray, peak_epoch: int | None) -> pd.DataFrame:
    """The confusion counts (true x predicted class, every pair, zeros included) at the run's peak
    epoch (``which`` = peak) and at its last epoch (last), both also when they are the same epoch;
    only the last for a run without a peak (:data:`CONFUSION_COLUMNS`)."""
    blocks = ([("peak", peak_epoch)] if peak_epoch is not None else []) + [("last", len(test))]
    rows = []
    for which, epoch in blocks:
        counts = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
        np.add.at(counts, (labels, test[epoch - 1]), 1)
        rows += [{"which": which, "epoch": epoch, "true": true, "predicted": predicted, "count": int(counts[t, p])}
                 for t, true in enumerate(CLASSES) for p, predicted in enumerate(CLASSES)]
    return pd.DataFrame(rows, columns=CONFUSION_COLUMNS)


def confusion_matrix(table: pd.DataFrame, which: str) -> tuple[int, np.ndarray]:
    """(epoch, counts true x predicted) of one block of a confusion table."""
    block = table[table["which"] == which]
    counts = block.pivot(index="true", columns="predicted", values="count").loc[list(CLASSES), list(CLASSES)]
    return int(block["epoch"].iloc[0]), counts.to_numpy()


def class_settings(table: pd.DataFrame, tables: Mapping[str, pd.DataFrame],
                   facts: Mapping[str, Mapping]) -> pd.DataFrame:
    """Per setting, epoch and class: n, mean and sample sd of the class's test accuracy over the
    setting's seeds (:data:`CLASS_SETTINGS_COLUMNS`), as replicates.csv takes the accuracy: a run
    that diverged counts only for the epochs before the one it diverged in; sd empty where n = 1.
    ``table`` is the run table (replicates.run_table), ``tables`` each run's class table."""
    from .replicates import completed_epochs, diverged_epoch

    parts = [completed_epochs(tables[row.run], diverged_epoch(facts[row.run])).assign(setting=row.setting,
                                                                                      model=row.model)
             for row in table.itertuples(index=False)]
    frames = [part for part in parts if len(part)]
    if not frames:
        return pd.DataFrame(columns=CLASS_SETTINGS_COLUMNS)
    stats = (pd.concat(frames, ignore_index=True).astype({"accuracy": float})
             .groupby(["setting", "model", "epoch", "class"], sort=False)["accuracy"]
             .agg(n="count", mean="mean", sd="std").reset_index())
    return stats[CLASS_SETTINGS_COLUMNS]
