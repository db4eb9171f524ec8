"""Callback state on disk, so a fit resumed by `BackupAndRestore` ends the same.

`keras.callbacks.BackupAndRestore` saves the weights and the optimizer state
(our masks with it: they are `MaskingOptimizer` variables) at each epoch end,
not the callbacks' own state: NEq's velocities (arXiv 2207.09455, Sec. 3),
LOBSTER's plateau counter and best weights (arXiv 2011.09905, Sec. 3.3). A
callback given `backup_dir=` (the `BackupAndRestore` directory) writes its
state with `save` after every epoch, reads it back with `load` when `fit`
resumes at the next epoch, and `remove`s it when `fit` completes, as the
backup does. One `.npz` per callback: named arrays plus a JSON `meta` dict.
"""

import json
import os

import numpy as np


def _path(directory, name):
    return os.path.join(directory, f"{name}.npz")


def _plain(value):
    if isinstance(value, np.generic):  # numpy scalars in logs and histories
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save(directory, name, epoch, meta, arrays):
    """Writes `arrays` (dict name -> array) and `meta` after `epoch`
    (0-based) ended; atomically, so a kill never leaves half a file."""
    os.makedirs(directory, exist_ok=True)
    path = _path(directory, name)
    temporary = path + ".tmp.npz"
    text = json.dumps({"epoch": epoch, **meta}, default=_plain)
    payload = {"meta": np.array(text)}
    np.savez(temporary, **payload, **arrays)
    os.replace(temporary, path)


def load(directory, name, epoch):
    """`(meta, arrays)` saved after `epoch - 1`, or None (no file, or a
    file from another epoch: a fit that does not resume that backup)."""
    path = _path(directory, name)
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if meta.pop("epoch") != epoch - 1:
            return None
        arrays = {k: np.array(data[k]) for k in data.files if k != "meta"}
    return meta, arrays


def remove(directory, name):
    """Deletes the state file (fit completed)."""
    path = _path(directory, name)
    if os.path.exists(path):
        os.remove(path)
