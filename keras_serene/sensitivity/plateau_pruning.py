"""The plateau half of `SensitivityPruning`: LOBSTER's schedule in `fit`.

LOBSTER (arXiv 2011.09905, Sec. 3.3, Algorithm 1) and SeReNe (arXiv
2102.03773, Sec. III-C): train with the sensitivity decay until the
validation loss plateaus, restore the best weights, bisect one global
magnitude threshold `T` with `loss(prune(T)) <= L0 (1 + tolerance)` and mask
every regularized `|w| < T`. The policy is `plateau_schedule.py` (pure); this
mixin wires it to the callback, following `EIDOSLAB/LOBSTER`
`src/utilities/pruning/thresholding/`. A NaN or infinite validation loss
restores the last good weights instead of pruning (the authors' rule).

`evaluate_fit_validation` is the one place that touches Keras internals.
"""

import keras
import numpy as np

from keras_serene.core import masking as masks_lib
from keras_serene.core import neurons as neurons_lib
from keras_serene.sensitivity.plateau_schedule import Plateau
from keras_serene.sensitivity.plateau_schedule import bisect_threshold
from keras_serene.sensitivity.plateau_schedule import magnitude_statistics


def evaluate_fit_validation(model):
    """`model.evaluate` on the validation data of the running `fit`.

    Keras has no public way for a callback to reach `fit`'s validation data
    (`validation_split=` keeps it inside `fit`). This uses two private Keras
    internals (TensorFlow trainer, Keras 3.x): `model._eval_epoch_iterator`,
    the iterator `fit` caches after its first validation, and
    `evaluate(_use_cached_eval_dataset=True)`, which reads it. They are
    isolated here, and `tests/sensitivity/test_plateau_pruning.py` checks
    them against `fit`'s own `val_loss`, so a Keras change fails that test
    loudly instead of changing the pruning silently.

    Returns:
        The `return_dict=True` results of `evaluate`.
    """
    if getattr(model, "_eval_epoch_iterator", None) is None:
        raise ValueError(
            "SensitivityPruning needs validation data: pass "
            "`validation_data=` or `validation_split=` to `fit`, or "
            "`validation_data=` to the callback."
        )
    return model.evaluate(
        verbose=0, return_dict=True, _use_cached_eval_dataset=True
    )


class PlateauPruningMixin:
    """Plateau + bisection pruning for `SensitivityPruning` (no state)."""

    def init_plateau(self):
        self.plateau = Plateau(self.patience, self.plateau_tolerance)

    def plateau_begin(self):
        self.plateau.reset()
        self._best_weights = None

    def plateau_epoch_end(self, epoch, logs):
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
        elif status == "diverged":
            self._roll_back(epoch, logs[self.monitor])

    def _roll_back(self, epoch, value):
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
            self._rezero_pruned()
        if self.verbose:
            self._say(
                f"Epoch {epoch + 1}: SensitivityPruning: {self.monitor} is "
                f"{value}; "
                + (
                    "restored the last good weights, no pruning."
                    if self._best_weights is not None
                    else "no good weights yet to restore."
                )
            )

    def _rezero_pruned(self):
        for variable in self.model.trainable_variables:
            if self.optimizer.mask_for(variable) is None:
                continue
            where = masks_lib.pruned(self.optimizer, variable)
            if where.any():
                value = keras.ops.convert_to_numpy(variable)
                variable.assign(np.where(where, 0, value))

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
            results = evaluate_fit_validation(self.model)
        key = (
            self.monitor[4:]
            if self.monitor.startswith("val_")
            else (self.monitor)
        )
        if key not in results:
            raise ValueError(
                "SensitivityPruning: evaluating the model gives "
                f"{sorted(results)}; none matches monitor={self.monitor!r}."
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
            self._say(
                f"Epoch {epoch + 1}: SensitivityPruning threshold "
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
