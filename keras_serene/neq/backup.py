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
backup does.
"""

import json
import os

import keras
import numpy as np

FILENAME = "equilibrium_freezing.npz"
_FIELDS = ("phi", "state", "velocity", "frozen", "applied")


def save_state(directory, epoch, records, history):
    """Writes the records' state after `epoch` (0-based) has ended."""
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "meta": np.array(json.dumps({"epoch": epoch, "history": history}))
    }
    for i, record in enumerate(records):
        for field in _FIELDS:
            arrays[f"{i}_{field}"] = getattr(record, field)
        for j, maps in enumerate(record.previous or ()):
            arrays[f"{i}_previous_{j}"] = keras.ops.convert_to_numpy(maps)
    path = os.path.join(directory, FILENAME)
    temporary = path + ".tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)  # never a half-written file


def load_state(directory, epoch, records):
    """Restores the records' state saved after `epoch - 1`; returns history.

    Returns None (and changes nothing) when there is no file, or it was
    saved after another epoch or for other layers.
    """
    path = os.path.join(directory, FILENAME)
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if meta["epoch"] != epoch - 1:
            return None
        for i, record in enumerate(records):
            if f"{i}_phi" not in data or data[f"{i}_phi"].shape != (
                record.size,
            ):
                return None
        for i, record in enumerate(records):
            for field in _FIELDS:
                setattr(record, field, np.array(data[f"{i}_{field}"]))
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
    path = os.path.join(directory, FILENAME)
    if os.path.exists(path):
        os.remove(path)
