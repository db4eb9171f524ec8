"""NEq's state on disk, so a fit resumed by `BackupAndRestore` ends the same.

`keras.callbacks.BackupAndRestore` saves the weights and the optimizer state
at each epoch end (the masks with it: they are `MaskingOptimizer`
variables), not the callbacks' state. NEq's decisions depend on the previous
epoch's probe outputs, `phi` and the velocity (Bragagnolo et al., NeurIPS
2022, arXiv 2207.09455, Sec. 3), which no model variable holds. With
`EquilibriumFreezing(backup_dir=...)` the callback writes them at every
epoch end to `equilibrium_freezing.npz` in that directory (pass the
`BackupAndRestore` directory) and, when `fit` resumes at the epoch after the
one saved, reads them back; the file goes when `fit` completes, as the
backup does (`keras_serene.core.callback_backup`).
"""

import keras
import numpy as np

from keras_serene.core import callback_backup

NAME = "equilibrium_freezing"
_FIELDS = ("phi", "state", "velocity", "frozen", "applied", "forced")


def save_state(directory, epoch, records, history):
    """Writes the records' state after `epoch` (0-based) has ended."""
    arrays = {}
    for i, record in enumerate(records):
        for field in _FIELDS:
            arrays[f"{i}_{field}"] = getattr(record, field)
        arrays[f"{i}_frozen_for"] = np.array(record.frozen_for)
        for j, maps in enumerate(record.previous or ()):
            arrays[f"{i}_previous_{j}"] = keras.ops.convert_to_numpy(maps)
    callback_backup.save(directory, NAME, epoch, {"history": history}, arrays)


def load_state(directory, epoch, records):
    """Restores the records' state saved after `epoch - 1`; returns history.

    Returns None (and changes nothing) when there is no file, or it was
    saved after another epoch or for other layers.
    """
    saved = callback_backup.load(directory, NAME, epoch)
    if saved is None:
        return None
    meta, data = saved
    for i, record in enumerate(records):
        keys = [f"{i}_{field}" for field in _FIELDS + ("frozen_for",)]
        if any(key not in data for key in keys):
            return None
        if data[f"{i}_phi"].shape != (record.size,):
            return None
    for i, record in enumerate(records):
        for field in _FIELDS:
            setattr(record, field, np.array(data[f"{i}_{field}"]))
        record.frozen_for = int(data[f"{i}_frozen_for"])
        batches = sorted(
            (k for k in data if k.startswith(f"{i}_previous_")),
            key=lambda k: int(k.rsplit("_", 1)[1]),
        )
        record.previous = [
            keras.ops.convert_to_tensor(data[k]) for k in batches
        ]
    return meta["history"]


def remove_state(directory):
    """Deletes the state file (fit completed)."""
    callback_backup.remove(directory, NAME)
