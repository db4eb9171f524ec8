"""`SensitivityPruning`: LOBSTER's plateau + bisection thresholding in `fit`.

LOBSTER (arXiv 2011.09905, Sec. 3.3, Algorithm 1) and SeReNe (arXiv
2102.03773, Sec. III-C) train with the sensitivity decay until the validation
loss plateaus, then zero every regularized parameter under one global
magnitude threshold `T`, the largest that keeps the validation loss within
`(1 + tolerance)` of its value before pruning; training then resumes with the
pruned entries held at zero by the masks. The policy lives in
`keras_serene.sensitivity.plateau_schedule` (pure, tested alone); this callback wires it to
`fit`, following the authors' code (`EIDOSLAB/LOBSTER`,
`src/utilities/pruning/thresholding/`).

Structured mode (SeReNe): a neuron whose incoming weights are all zero is
masked as a whole, bias included, so it stays dead and the slimmer can remove
it.
"""

import keras
import numpy as np

from keras_serene.core import masking as masks_lib
from keras_serene.core import neurons as neurons_lib
from keras_serene.sensitivity.plateau_schedule import Plateau
from keras_serene.sensitivity.plateau_schedule import bisect_threshold
from keras_serene.sensitivity.plateau_schedule import magnitude_statistics


@keras.saving.register_keras_serializable(package="keras_serene")
class SensitivityPruning(keras.callbacks.Callback):
    """Prunes by a global magnitude threshold each time the loss plateaus.

    After each epoch the monitored validation loss feeds a plateau detector
    (`patience` epochs without a 1% relative improvement). On a plateau the
    callback restores the best weights, bisects the global threshold `T` with
    `loss(prune(T)) <= L0 * (1 + tolerance)` on the validation data, zeroes
    every regularized entry `|w| < T` and marks it pruned in the optimizer's
    masks. Each epoch it writes into `logs` (so progress bars, `History`,
    `CSVLogger` and TensorBoard show them): `sparsity`, the fraction of
    regularized entries at zero; `pruning_threshold`, the last threshold
    applied; and `alive_neurons`, the *fraction* of neurons (Dense units,
    conv channels) with a nonzero incoming weight (`ks.summary` gives the
    counts).

    Example:

    ```python
    model.compile(optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)),
                  loss=..., metrics=["accuracy"])
    model.fit(x, y, validation_split=0.1, epochs=100,
              callbacks=[ks.callbacks.SensitivityPruning(patience=20)])
    ```

    Args:
        monitor: String. The validation loss to watch, e.g. `"val_loss"`.
            Defaults to `"val_loss"`.
        patience: Int >= 1. Plateau patience in epochs (LOBSTER's `pwe`).
            Defaults to `20`.
        tolerance: Float >= 0. Relative loss increase a pruning step may
            cost (LOBSTER's `twt`). Defaults to `0.05`.
        plateau_tolerance: Float > -1. A validation loss below
            `best * (1 + plateau_tolerance)` resets the plateau counter
            (LOBSTER: 0.01; negative values demand a relative improvement,
            see `keras_serene.sensitivity.plateau_schedule.Plateau`). Defaults to `0.01`.
        validation_data: Optional `(x, y)` tuple or dataset to evaluate the
            trial thresholds on. Defaults to `None`: the validation data of
            `fit` (`validation_data=` or `validation_split=`).
        structured: Bool or None. Mask whole neurons whose incoming weights
            are all zero (SeReNe). `None` turns it on when the optimizer's
            sensitivity is per neuron. Defaults to `None`.
        verbose: Int. 1 prints one line per pruning step. Defaults to `1`.

    References:
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2011.09905),
          Sec. 3.3.
    """

    def __init__(
        self,
        monitor="val_loss",
        patience=20,
        tolerance=0.05,
        plateau_tolerance=0.01,
        validation_data=None,
        structured=None,
        verbose=1,
    ):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                "SensitivityPruning: `monitor` must be a metric name such as "
                f"'val_loss'. Received monitor={monitor!r}"
            )
        if not tolerance >= 0:
            raise ValueError(
                "SensitivityPruning: `tolerance` must be >= 0. Received "
                f"tolerance={tolerance}"
            )
        if structured not in (None, True, False):
            raise TypeError(
                "SensitivityPruning: `structured` must be None, True or "
                f"False. Received structured={structured!r}"
            )
        self.plateau = Plateau(patience, plateau_tolerance)
        self.monitor = monitor
        self.patience = patience
        self.tolerance = float(tolerance)
        self.plateau_tolerance = float(plateau_tolerance)
        self.validation_data = validation_data
        self.structured = structured
        self.verbose = verbose
        self.threshold = 0.0
        self.history = []

    def on_train_begin(self, logs=None):
        self.optimizer = masks_lib.mask_optimizer(
            self.model, caller="SensitivityPruning"
        )
        masks_lib.ensure_built(self.optimizer, self.model)
        self.plateau.reset()
        self._best_weights = None
        self._structured = self.structured
        if self._structured is None:
            self._structured = bool(
                getattr(self.optimizer.sensitivity, "per_neuron", False)
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.monitor not in logs:
            raise ValueError(
                f"SensitivityPruning monitors `{self.monitor}`, which is not "
                f"in the logs of epoch {epoch + 1}. Available metrics: "
                f"{sorted(logs)}. Pass `validation_data=` or "
                "`validation_split=` to `fit` (and keep `validation_freq=1`)."
            )
        status = self.plateau.update(logs[self.monitor])
        if status == "improved":
            self._best_weights = self.model.get_weights()
        elif status == "plateau":
            self._prune(epoch)
        self._write_logs(logs)

    def _variables(self):
        return self.optimizer.regularized_variables

    def _evaluate(self):
        if self.validation_data is not None:
            data = self.validation_data
            if isinstance(data, (tuple, list)):
                results = self.model.evaluate(
                    *data, verbose=0, return_dict=True
                )
            else:
                results = self.model.evaluate(data, verbose=0, return_dict=True)
        else:
            if getattr(self.model, "_eval_epoch_iterator", None) is None:
                raise ValueError(
                    "SensitivityPruning needs validation data: pass "
                    "`validation_data=` or `validation_split=` to `fit`, or "
                    "`validation_data=` to the callback."
                )
            # fit's own cached validation iterator (how fit validates).
            results = self.model.evaluate(
                verbose=0, return_dict=True, _use_cached_eval_dataset=True
            )
        key = (
            self.monitor[4:]
            if self.monitor.startswith("val_")
            else (self.monitor)
        )
        if key not in results:
            raise ValueError(
                "SensitivityPruning: evaluating the model gives "
                f"{sorted(results)}"
                f"; none matches monitor={self.monitor!r}."
            )
        return float(results[key])

    def _prune(self, epoch):
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        variables = self._variables()
        originals = [keras.ops.convert_to_numpy(v) for v in variables]
        statistics = magnitude_statistics(originals)
        if statistics is None:
            return
        initial_loss = self._evaluate()
        snapshot = self.model.get_weights()

        def loss_at(threshold):
            # Each trial prunes a copy: the weights are restored after it.
            for variable, value in zip(variables, originals):
                variable.assign(np.where(np.abs(value) < threshold, 0, value))
            self._zero_dead_neurons(commit=False)
            loss = self._evaluate()
            self.model.set_weights(snapshot)
            return loss

        search = bisect_threshold(
            loss_at, initial_loss, statistics, tolerance=self.tolerance
        )
        for variable, value in zip(variables, originals):
            masks_lib.add_flag(
                self.optimizer,
                variable,
                masks_lib.PRUNED,
                np.abs(value) < search.threshold,
                zero=True,
            )
        self._zero_dead_neurons(commit=True)
        self.threshold = float(search.threshold)
        self._best_weights = None
        sparsity = self._sparsity()
        self.history.append(
            {
                "epoch": epoch + 1,
                "threshold": float(search.threshold),
                "loss_before": initial_loss,
                "loss_after": search.loss,
                "bound": search.bound,
                "trials": len(search.trials),
                "sparsity": sparsity,
            }
        )
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: SensitivityPruning threshold "
                f"{search.threshold:.4g} ({len(search.trials)} trials): "
                f"{self.monitor} {initial_loss:.4f} -> {search.loss:.4f} "
                f"(bound {search.bound:.4f}), sparsity {sparsity:.2%}."
            )

    def _zero_dead_neurons(self, commit):
        """Structured mode: zero (and if `commit`, mask) dead neurons."""
        if not self._structured:
            return
        for _, weights in neurons_lib.neuron_layers(self.model):
            live = neurons_lib.alive_neurons(weights)
            if live is None:
                continue
            dead = ~live
            if not dead.any():
                continue
            for w in weights:
                where = np.reshape(
                    dead, neurons_lib.neuron_shape(w.kind, w.variable.shape)
                )
                if commit:
                    masks_lib.add_flag(
                        self.optimizer,
                        w.variable,
                        masks_lib.PRUNED,
                        where,
                        zero=True,
                    )
                else:
                    value = keras.ops.convert_to_numpy(w.variable)
                    w.variable.assign(np.where(where, 0, value))

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

    def get_config(self):
        return {
            "monitor": self.monitor,
            "patience": self.patience,
            "tolerance": self.tolerance,
            "plateau_tolerance": self.plateau_tolerance,
            "structured": self.structured,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
