"""`SensitivityPruning`: a budgeted ramp, or LOBSTER's plateau schedule.

With `target_sparsity` (the default use): Zhu & Gupta's gradual schedule
(arXiv 1710.01878, Eq. 1), `s(t) = s_f (1 - (1 - (t - t0)/(T - t0))^3)`,
over the optimizer's masks (`budget_schedule.py`, `budget_pruning.py`,
`pruning_criteria.py`): a target size reached in the user's epoch budget.

Without it: LOBSTER (arXiv 2011.09905, Sec. 3.3, Algorithm 1) and SeReNe
(arXiv 2102.03773, Sec. III-C) train with the sensitivity decay until the
validation loss plateaus, then zero every regularized parameter under one
global magnitude threshold `T`, the largest that keeps the validation loss
within `(1 + tolerance)` of its value before pruning (`plateau_schedule.py`,
following `EIDOSLAB/LOBSTER` `src/utilities/pruning/thresholding/`). A NaN
validation loss rolls back to the last good weights instead of pruning.
Structured plateau mode (SeReNe) masks a neuron whose incoming weights are
all zero as a whole, bias included.
"""

import numbers
import re

import keras
import numpy as np

from keras_serene.core import callback_backup
from keras_serene.core import checks
from keras_serene.core import masking as masks_lib
from keras_serene.core import neurons as neurons_lib
from keras_serene.sensitivity import budget_pruning
from keras_serene.sensitivity import pruning_criteria as criteria
from keras_serene.sensitivity.budget_steps import BudgetPruningMixin
from keras_serene.sensitivity.plateau_pruning import PlateauPruningMixin

_BACKUP_NAME = "sensitivity_pruning"


def _number(name, value, low, allow_none=False, integer=False):
    kinds = numbers.Integral if integer else numbers.Real
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(
            f"SensitivityPruning: `{name}` must be "
            f"{'an int' if integer else 'a number'}"
            f"{' or None' if allow_none else ''}. Received {name}={value!r}"
        )
    if not value >= low:
        raise ValueError(
            f"SensitivityPruning: `{name}` must be >= {low}. Received "
            f"{name}={value}"
        )
    return value


def _target(value, structured, criterion):
    """`target_sparsity` checked: None, a float in (0, 1), or (equal-
    fraction criteria) a non-empty `{layer name: float in (0, 1)}`."""
    if not isinstance(value, dict):
        _number("target_sparsity", value, 0.0, allow_none=True)
        if value is not None and not 0 < value < 1:
            raise ValueError(
                "SensitivityPruning: `target_sparsity` must be in (0, 1), a "
                "dict of them per layer, or None. Received target_sparsity="
                f"{value}"
            )
        return None if value is None else float(value)
    if not value or not all(isinstance(k, str) for k in value):
        raise TypeError(
            "SensitivityPruning: a dict `target_sparsity` maps layer names "
            f"to fractions. Received target_sparsity={value!r}"
        )
    for name, fraction in value.items():
        _number(f"target_sparsity[{name!r}]", fraction, 0.0)
        if not 0 < fraction < 1:
            raise ValueError(
                f"SensitivityPruning: `target_sparsity[{name!r}]` must be in "
                f"(0, 1). Received target_sparsity={value!r}"
            )
    if criterion in criteria.GLOBAL_CRITERIA:
        raise ValueError(
            f"SensitivityPruning: criterion={criterion!r} chooses each "
            "layer's share itself; a dict `target_sparsity` fixes them: pass "
            "a float target or an equal-fraction criterion such as "
            f"'magnitude'. Received target_sparsity={value!r}"
        )
    return {name: float(fraction) for name, fraction in value.items()}


@keras.saving.register_keras_serializable(package="keras_serene")
class SensitivityPruning(
    BudgetPruningMixin, PlateauPruningMixin, keras.callbacks.Callback
):
    """Prunes to a target sparsity on a ramp, or at each loss plateau.

    **Budgeted** (`target_sparsity` set): the fraction of regularized entries
    at zero (`structured=True`: of prunable neurons and conv channels
    removed) follows `s(t) = s_f (1 - (1 - (t - t0)/(T - t0))^3)` from
    `begin_epoch` to `end_epoch` (default 70% of `fit`'s epochs), with
    `frequency` pruning steps per epoch (they may fall inside an epoch), and
    holds `s_f` afterwards: the rest of the budget is recovery. Each step
    masks the lowest-ranked entries (`criterion`, one global ranking) so that
    exactly the scheduled fraction is zero; a pruned entry is never revived.
    Structured: a removed neuron's incoming kernel slice (and BN `gamma`) is
    masked, its bias kept: `ks.slim(ks.strip_masks(model))` then removes
    exactly those channels with the outputs unchanged. Groups come from
    `ks.slimming_plan`: model inputs/outputs and pinned groups are not
    prunable, a residual group goes as one, every group keeps a channel.
    The step counter is `optimizer.iterations`, which `.keras` files and
    `keras.callbacks.BackupAndRestore` restore, so a resumed fit continues
    the ramp. No work is done on batches that are not pruning steps.

    **Plateau** (no `target_sparsity`; the papers' schedule): after each
    epoch the monitored validation loss feeds a plateau detector (`patience`
    epochs without a `plateau_tolerance` relative improvement); on a plateau
    the best weights come back and the global threshold `T` is bisected with
    `loss(prune(T)) <= L0 * (1 + tolerance)` on the validation data. A NaN
    loss restores the last good weights and does not prune.

    Each epoch `logs` get (so `History`, `CSVLogger`, TensorBoard show them)
    `sparsity` (fraction of the entries it prunes at zero: the regularized
    ones not in `exclude`),
    `pruning_threshold` (the last threshold or score cut), `alive_neurons`
    (fraction of neurons with a nonzero incoming weight) and, budgeted,
    `scheduled_sparsity` (structured: `scheduled_removed_neurons` and
    `removed_neurons`, so a structured and an unstructured callback in one
    fit log their ramps apart).

    Example:

    ```python
    model.compile(optimizer=ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), decay=1e-4), loss=...)
    model.fit(x, y, validation_split=0.1, epochs=20, callbacks=[
        ks.callbacks.SensitivityPruning(target_sparsity=0.98)])
    ```

    Args:
        target_sparsity: Float in (0, 1), dict, or None. The budgeted
            target; None selects the plateau schedule. A dict `{layer name:
            fraction}` (equal-fraction criteria; ours, after
            Torch-Pruning's `pruning_ratio_dict`) removes that fraction of
            each named layer's neurons or channels on the same ramp and
            leaves the layers not named whole: `{"fc1": 0.9, "fc2": 0.5}`
            sizes each layer for the target hardware. With
            `structured=False` it zeroes that fraction of each named
            layer's entries instead, each layer ranked on its own (every
            layer at one fraction, with `exclude=["bias"]`, is tfmot's
            per-layer sparsity). Defaults to `None`.
        structured: Bool or None. Prune whole neurons / channels. `None`:
            on with a dict `target_sparsity` or when the optimizer's
            sensitivity is per neuron. Defaults to `None`.
        begin_epoch: Number >= 0. Where the ramp starts, counted in the
            optimizer's steps (`optimizer.iterations / steps per epoch`),
            so earlier fits with the same optimizer count. Defaults to `0`.
        end_epoch: Number > begin_epoch, or None: where the target is
            reached; None is 70% of `fit`'s epochs. Defaults to `None`.
        frequency: Int >= 1. Pruning steps per epoch. Defaults to `4`.
        criterion: String, the ranking (see
            `keras_serene.sensitivity.pruning_criteria`): `"magnitude"`
            (|w|; structured: channel L2 norm, equal fraction per layer;
            the papers' magnitude thresholding), `"magnitude_global"` (ours:
            structured ranking across layers by layer-normalised norms),
            `"magnitude_group"` (structured: the L2 norm of the channel's
            producing and consuming weights, Torch-Pruning's group
            magnitude),
            `"taylor"` (ours: |w|·LOBSTER's S), `"taylor_global"`
            (structured: Molchanov et al.'s group Taylor importance
            `(sum w dL/dw)^2` per 64-sample slice, averaged, ranked across
            layers; it beat equal
            fractions on a CNN's channels, see `pruning_criteria`) or
            `"serene"`
            (SeReNe's neuron S, rescaled per layer as NeuronLOBSTER's
            `rescaled`); the last three read `validation_data`. Defaults
            to `"magnitude"`.
        block_size: Int >= 1. Unstructured only: prune blocks of this many
            consecutive entries along each kernel's input axis (one unit's
            weights from neighbouring inputs), ranked by their entries'
            mean score, so the target is met within a block. `4` gives the
            1x4 blocks LiteRT's sparse FULLY_CONNECTED kernel runs fast
            (`ks.to_tflite(..., sparse=True)`); ours, after tfmot's
            `block_size`. Defaults to `1` (entries).
        exclude: List of regex strings. Unstructured only: regularized
            variables whose path matches one (`re.search`, as
            `ks.SensitivityOptimizer`'s `exclude`) are not pruned by this
            callback, nor counted in its target or its `sparsity` log
            (`["bias", "predictions"]` prunes no bias and not the output
            layer; `["^(?!(.*/)?fc1/kernel$)"]` prunes layer fc1's kernel
            alone: a Sequential model's paths start with its name).
            Defaults to `None`.
        monitor: String. The loss the plateau schedule watches. Defaults to
            `"val_loss"`.
        patience: Int >= 1. Plateau patience in epochs (LOBSTER's `pwe`).
            Defaults to `20`.
        tolerance: Float >= 0. Relative loss increase one plateau pruning
            step may cost (LOBSTER's `twt`). Defaults to `0.05`.
        plateau_tolerance: Float > -1. A loss below `best * (1 +
            plateau_tolerance)` resets the plateau counter (LOBSTER: 0.01;
            negative values demand an improvement). Defaults to `0.01`.
        validation_data: Optional `(x, y)` tuple or dataset: the plateau
            search's trial data and the data criteria's batches. Defaults to
            `None`: fit's validation data (plateau schedule).
        backup_dir: None or string. The `keras.callbacks.BackupAndRestore`
            directory: the callback's own state (the plateau counter, best
            weights, threshold, history, the data criteria's sums) is
            written there after every epoch, with a snapshot of the
            variables as each epoch begins, and read back when `fit`
            resumes, so a fit killed between epochs or mid-epoch
            (`BackupAndRestore(save_freq=N)`: the epoch is replayed from
            its start; keep the batch order fixed) ends as the
            uninterrupted one (`keras_serene.core.callback_backup`). A
            budgeted fit killed between epochs needs none: the ramp follows
            the optimizer's step counter, which the backup keeps. Defaults
            to `None`.
        verbose: Int. 1 prints one line per pruning step. Defaults to `1`.

    References:
        - [Zhu & Gupta, 2017](https://arxiv.org/abs/1710.01878), Eq. 1.
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2011.09905),
          Sec. 3.3.
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2102.03773).
    """

    def __init__(
        self,
        target_sparsity=None,
        structured=None,
        begin_epoch=0,
        end_epoch=None,
        frequency=4,
        criterion="magnitude",
        block_size=1,
        exclude=None,
        monitor="val_loss",
        patience=20,
        tolerance=0.05,
        plateau_tolerance=0.01,
        validation_data=None,
        backup_dir=None,
        verbose=1,
    ):
        super().__init__()
        target_sparsity = _target(target_sparsity, structured, criterion)
        _number("begin_epoch", begin_epoch, 0)
        _number("end_epoch", end_epoch, 0, allow_none=True)
        if end_epoch is not None and not end_epoch > begin_epoch:
            raise ValueError(
                "SensitivityPruning: `end_epoch` must be > begin_epoch "
                f"({begin_epoch}). Received end_epoch={end_epoch}"
            )
        _number("frequency", frequency, 1, integer=True)
        _number("block_size", block_size, 1, integer=True)
        # A dict target is structured unless `structured=False` says not.
        per_neuron = isinstance(target_sparsity, dict) and structured is None
        if block_size > 1 and (
            target_sparsity is None or structured or per_neuron
        ):
            raise ValueError(
                "SensitivityPruning: `block_size` > 1 applies to the "
                "budgeted, unstructured schedule (pass `target_sparsity=` "
                "and leave `structured` off). Received "
                f"block_size={block_size}, target_sparsity={target_sparsity}"
                f", structured={structured}"
            )
        _number("patience", patience, 1, integer=True)
        _number("tolerance", tolerance, 0)
        _number("plateau_tolerance", plateau_tolerance, -1)
        if not plateau_tolerance > -1:
            raise ValueError(
                "SensitivityPruning: `plateau_tolerance` must be > -1. "
                f"Received plateau_tolerance={plateau_tolerance}"
            )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                "SensitivityPruning: `monitor` must be a metric name such as "
                f"'val_loss'. Received monitor={monitor!r}"
            )
        if structured not in (None, True, False):
            raise TypeError(
                "SensitivityPruning: `structured` must be None, True or "
                f"False. Received structured={structured!r}"
            )
        if backup_dir is not None and not isinstance(backup_dir, str):
            raise TypeError(
                "SensitivityPruning: `backup_dir` must be None or a path "
                f"string. Received backup_dir={backup_dir!r}"
            )
        self.backup_dir = backup_dir
        self.criterion = criteria.check_criterion(criterion)
        if target_sparsity is None and criterion != "magnitude":
            raise ValueError(
                "SensitivityPruning: `criterion` applies to the budgeted "
                "schedule; the plateau schedule thresholds magnitudes. Pass "
                f"`target_sparsity=`. Received criterion={criterion!r}"
            )
        self.target_sparsity = target_sparsity
        self.begin_epoch = begin_epoch
        self.end_epoch = end_epoch
        self.frequency = int(frequency)
        self.block_size = int(block_size)
        exclude = checks.check_patterns(
            "SensitivityPruning", "exclude", exclude
        )
        if exclude and (structured or per_neuron):
            raise ValueError(
                "SensitivityPruning: `exclude` selects entries to prune; "
                "structured pruning takes its groups from `ks.slimming_plan`"
                f". Received exclude={exclude!r}, structured=True"
            )
        self.exclude = exclude
        self.monitor = monitor
        self.patience = int(patience)
        self.tolerance = float(tolerance)
        self.plateau_tolerance = float(plateau_tolerance)
        self.validation_data = validation_data
        self.structured = structured
        self.verbose = verbose
        self.threshold = 0.0
        self.history = []
        self.init_plateau()

    # -- fit hooks ---------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.optimizer = masks_lib.mask_optimizer(
            self.model, caller="SensitivityPruning"
        )
        masks_lib.ensure_built(self.optimizer, self.model)
        self._structured = self.structured
        if isinstance(self.target_sparsity, dict) and self._structured is None:
            self._structured = True
        elif self._structured is None:
            self._structured = bool(
                getattr(self.optimizer.sensitivity, "per_neuron", False)
            )
        entry_only = {
            key: value
            for key, value, used in (
                ("exclude", self.exclude, bool(self.exclude)),
                ("block_size", self.block_size, self.block_size > 1),
            )
            if used
        }
        if self._structured and entry_only:
            raise ValueError(
                f"SensitivityPruning: {', '.join(map(repr, entry_only))} "
                "select entries to prune, but the optimizer's sensitivity is "
                "per neuron, which makes the pruning structured: pass "
                "`structured=False`. Received "
                + ", ".join(f"{k}={v!r}" for k, v in entry_only.items())
            )
        if (
            self.exclude
            and not self._structured
            and not self._variables(named_only=False)
        ):
            raise ValueError(
                "SensitivityPruning: `exclude` matches every regularized "
                f"variable of model {self.model.name!r}: nothing is left to "
                f"prune. Received exclude={self.exclude!r}"
            )
        self._resume = self.backup_dir is not None
        self.ramp = None
        if self.target_sparsity is None:
            self.plateau_begin()
            return
        self._begin_budget()

    def on_epoch_begin(self, epoch, logs=None):
        resuming, self._resume = self._resume, False
        if resuming:
            self._restore_state(epoch)
        callback_backup.epoch_begins(
            self.backup_dir, _BACKUP_NAME, epoch, self.model, resuming
        )
        if self.ramp is None:
            return
        base = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._base = base
        if self._first_epoch and base >= self.ramp.end_step:
            self._prune_step(base, epoch)  # Holds the target (idempotent).
        self._first_epoch = False
        self._next = self.ramp.next_pruning_step(base + 1)

    def on_train_batch_end(self, batch, logs=None):
        if self.ramp is None or self._next is None:
            return
        step = self._base + batch + 1
        if step < self._next:
            return
        self._prune_step(step, None)
        self._next = self.ramp.next_pruning_step(step + 1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.ramp is None:
            self.plateau_epoch_end(epoch, logs)
        else:
            step = self._base + int(self.params["steps"])
            scheduled = self._scheduled(step)
            if self._channels is None:
                logs["scheduled_sparsity"] = scheduled
            else:  # Its own keys: a second, unstructured ramp may share logs.
                removed = sum(int(r.sum()) for r in self._channels.removed())
                logs["scheduled_removed_neurons"] = scheduled
                logs["removed_neurons"] = removed / self._channels.total
        self._write_logs(logs)
        if self.backup_dir is not None:
            self._save_state(epoch)

    def on_train_end(self, logs=None):
        if self.backup_dir is not None:
            callback_backup.remove(self.backup_dir, _BACKUP_NAME)

    # -- resume ------------------------------------------------------------
    def _save_state(self, epoch):
        best = getattr(self, "_best_weights", None)
        meta = {
            "threshold": self.threshold,
            "history": self.history,
            "plateau": [self.plateau.best, self.plateau.bad_epochs],
            "best_weights": None if best is None else len(best),
        }
        arrays = {f"best_{i}": w for i, w in enumerate(best or ())}
        statistics = getattr(self, "_statistics", None)
        if statistics is not None:  # The data criteria's running sums.
            for i, variable in enumerate(self._net.trainable_variables):
                if id(variable) in statistics:
                    arrays[f"statistic_{i}"] = statistics[id(variable)]
        callback_backup.save(self.backup_dir, _BACKUP_NAME, epoch, meta, arrays)

    def _restore_state(self, epoch):
        saved = callback_backup.load(self.backup_dir, _BACKUP_NAME, epoch)
        if saved is None:
            return
        meta, arrays = saved
        self.threshold = meta["threshold"]
        self.history = meta["history"]
        self.plateau.best, self.plateau.bad_epochs = meta["plateau"]
        count = meta["best_weights"]
        self._best_weights = (
            None
            if count is None
            else [arrays[f"best_{i}"] for i in range(count)]
        )
        if self.ramp is not None and any(
            k.startswith("statistic_") for k in arrays
        ):
            self._statistics = {
                id(variable): arrays[f"statistic_{i}"]
                for i, variable in enumerate(self._net.trainable_variables)
                if f"statistic_{i}" in arrays
            }

    # -- shared ------------------------------------------------------------
    def _variables(self, named_only=True):
        """The variables this callback prunes: regularized, not excluded,
        and (unstructured dict target, `named_only`) of a layer the dict
        names."""
        found = [
            v
            for v in self.optimizer.regularized_variables
            if not any(re.search(p, v.path) for p in self.exclude)
        ]
        per_layer = isinstance(self.target_sparsity, dict)
        if named_only and per_layer and not self._structured:
            found = [
                v
                for v in found
                if budget_pruning.layer_of(v, self.target_sparsity)
            ]
        return found

    def _sparsity(self):
        total = zeros = 0
        for variable in self._variables():
            value = keras.ops.convert_to_numpy(variable)
            total += value.size
            zeros += int(np.count_nonzero(value == 0))
        return zeros / total if total else 0.0

    def _write_logs(self, logs):
        logs["sparsity"] = self._sparsity()
        logs["pruning_threshold"] = float(self.threshold)
        alive = total = 0
        for _, weights in neurons_lib.neuron_layers(self.model):
            live = neurons_lib.alive_neurons(weights)
            if live is not None:
                alive += int(live.sum())
                total += live.size
        if total:
            logs["alive_neurons"] = alive / total

    def _say(self, message):
        """Prints one verbose line, on a line of its own only when fit's
        progress bar is there to break (no blank line under verbose=0)."""
        bar = (self.params or {}).get("verbose", 0)
        print(("\n" if bar else "") + message)

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "structured": self.structured,
            "begin_epoch": self.begin_epoch,
            "end_epoch": self.end_epoch,
            "frequency": self.frequency,
            "criterion": self.criterion,
            "block_size": self.block_size,
            "exclude": list(self.exclude),
            "monitor": self.monitor,
            "patience": self.patience,
            "tolerance": self.tolerance,
            "plateau_tolerance": self.plateau_tolerance,
            "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
