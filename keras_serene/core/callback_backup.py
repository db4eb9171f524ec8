"""Callback state on disk, so a fit resumed by `BackupAndRestore` ends the same.

`keras.callbacks.BackupAndRestore` saves the weights and the optimizer state
(our masks with it: they are `MaskingOptimizer` variables) at each epoch end,
not the callbacks' own state: NEq's velocities (arXiv 2207.09455, Sec. 3),
LOBSTER's plateau counter and best weights (arXiv 2011.09905, Sec. 3.3). A
callback given `backup_dir=` (the `BackupAndRestore` directory) writes its
state with `save` after every epoch, reads it back with `load` when `fit`
resumes at the next epoch, and `remove`s it when `fit` completes, as the
backup does. One `.npz` per callback and epoch: named arrays plus a JSON
`meta` dict; the last two epochs are kept.

A kill mid-epoch is the harder case: `BackupAndRestore(save_freq=N)` saves
the weights after some batch `b` of epoch `e`, and on resume Keras runs
epoch `e` again from its first batch, from those part-trained weights
(`_initial_epoch` is the only position it restores). The epoch then sees
`b` batches twice. So the callback also snapshots the model's and the
optimizer's variables as they are when each epoch begins (`snapshot`), and
on resume puts them back (`rewind`): the interrupted epoch is replayed from
its true start, and with the same batches (`shuffle=False`, or a dataset
in a fixed order) the fit ends bit-identical. Two generations are kept
because Keras's last batch-level save in epoch `e` still reads "epoch `e`"
after that epoch has ended.
"""

import json
import os
import warnings

import numpy as np

#: Generations (epochs) of each file kept on disk.
KEEP = 2


def _path(directory, name, epoch):
    return os.path.join(directory, f"{name}-{epoch}.npz")


def _epochs_on_disk(directory, name):
    found = []
    if not os.path.isdir(directory):
        return found
    prefix = f"{name}-"
    for file in os.listdir(directory):
        stem = file[len(prefix) : -len(".npz")]
        if file.startswith(prefix) and file.endswith(".npz"):
            if stem.lstrip("-").isdigit():
                found.append(int(stem))
    return sorted(found)


def _plain(value):
    if isinstance(value, np.generic):  # numpy scalars in logs and histories
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save(directory, name, epoch, meta, arrays):
    """Writes `arrays` (dict name -> array) and `meta` after `epoch`
    (0-based) ended; atomically, so a kill never leaves half a file."""
    os.makedirs(directory, exist_ok=True)
    path = _path(directory, name, epoch)
    temporary = path + ".tmp"
    text = json.dumps({"epoch": epoch, **meta}, default=_plain)
    payload = {"meta": np.array(text)}
    with open(temporary, "wb") as f:
        np.savez(f, **payload, **arrays)
    os.replace(temporary, path)
    for old in _epochs_on_disk(directory, name):
        if old <= epoch - KEEP or old > epoch:  # stale, or a later fit's
            os.remove(_path(directory, name, old))


def load(directory, name, epoch):
    """`(meta, arrays)` saved after `epoch - 1`, or None (no such file: a
    fit that does not resume that backup)."""
    path = _path(directory, name, epoch - 1)
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        meta.pop("epoch")
        arrays = {k: np.array(data[k]) for k in data.files if k != "meta"}
    return meta, arrays


def remove(directory, name):
    """Deletes the callback's files (fit completed)."""
    for epoch in _epochs_on_disk(directory, name):
        os.remove(_path(directory, name, epoch))
    for epoch in _epochs_on_disk(directory, name + _SNAPSHOT):
        os.remove(_path(directory, name + _SNAPSHOT, epoch))


_SNAPSHOT = ".epoch_begin"


def _state_variables(model):
    optimizer = getattr(model, "optimizer", None)
    extra = list(optimizer.variables) if optimizer is not None else []
    return list(model.variables) + extra


def snapshot(directory, name, epoch, model):
    """Saves the model's and its optimizer's variables as epoch `epoch`
    begins (before any of its batches)."""
    arrays = {
        f"v{i}": np.asarray(v.numpy())
        for i, v in enumerate(_state_variables(model))
    }
    save(directory, name + _SNAPSHOT, epoch - 1, {}, arrays)


def rewind(directory, name, epoch, model):
    """Puts back the variables `snapshot` saved as `epoch` began; True if
    it did (False: no snapshot of that epoch). A snapshot of another model
    (other variable count or shapes) is left alone with a warning: the
    resume is then only as exact as Keras's own."""
    saved = load(directory, name + _SNAPSHOT, epoch)
    if saved is None:
        return False
    arrays = saved[1]
    variables = _state_variables(model)
    mismatch = [
        (v.path, tuple(arrays[f"v{i}"].shape), tuple(v.shape))
        for i, v in enumerate(variables)
        if f"v{i}" in arrays and tuple(arrays[f"v{i}"].shape) != tuple(v.shape)
    ]
    if len(arrays) != len(variables) or mismatch:
        detail = (
            f"variable {mismatch[0][0]!r} was saved with shape "
            f"{mismatch[0][1]}, the model's is {mismatch[0][2]}"
            if mismatch
            else f"{len(arrays)} variables saved, the model and its "
            f"optimizer have {len(variables)}"
        )
        warnings.warn(
            f"{name}: the epoch-begin snapshot in backup_dir={directory!r} "
            f"is not of this model ({detail}), so epoch {epoch} is not "
            "rewound: a mid-epoch resume replays it from the weights "
            "Keras restored.",
            stacklevel=3,
        )
        return False
    for i, variable in enumerate(variables):
        variable.assign(arrays[f"v{i}"])
    return True


def epoch_begins(directory, name, epoch, model, resuming):
    """What a callback with `backup_dir=` does as each epoch begins: on the
    first epoch of a resumed fit, `rewind` (after the callback has read its
    own state back); then `snapshot`. Nothing when `directory` is None."""
    if directory is None:
        return
    if resuming:
        rewind(directory, name, epoch, model)
    snapshot(directory, name, epoch, model)
