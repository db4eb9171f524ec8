"""The budgeted half of `SensitivityPruning`: the ramp wired to `fit`.

Zhu & Gupta's gradual pruning (arXiv 1710.01878, Eq. 1) over the optimizer's
masks: `budget_schedule.PolynomialRamp` says when and how much,
`pruning_criteria` ranks, `budget_pruning` masks exactly the scheduled
fraction. Steps are `optimizer.iterations`, read once per epoch, so a fit
resumed from a `.keras` file or by `keras.callbacks.BackupAndRestore`
continues the ramp; batches that are not pruning steps cost one integer
comparison.
"""

import keras
import numpy as np

from keras_serene.core import neurons as neurons_lib
from keras_serene.sensitivity import budget_pruning
from keras_serene.sensitivity import pruning_criteria as criteria
from keras_serene.sensitivity.budget_schedule import ramp_for_fit


class BudgetPruningMixin:
    """Budgeted pruning for `SensitivityPruning` (uses its attributes)."""

    def _begin_budget(self):
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps:
            raise ValueError(
                "SensitivityPruning(target_sparsity=...) needs the number "
                "of steps per epoch: pass `steps_per_epoch=` to `fit` (the "
                "dataset's length is unknown)."
            )
        per_layer = isinstance(self.target_sparsity, dict)
        self.ramp = ramp_for_fit(
            max(self.target_sparsity.values())
            if per_layer
            else self.target_sparsity,
            self.begin_epoch,
            self.end_epoch,
            self.frequency,
            int(steps),
            int(epochs),
        )
        self._batches = None
        self._statistics = None
        if self.criterion in criteria.DATA_CRITERIA:
            if self.validation_data is None:
                raise ValueError(
                    f"SensitivityPruning: criterion={self.criterion!r} "
                    "reads data: pass `validation_data=(x, y)` to the "
                    "callback."
                )
            self._batches = criteria.sample_batches(self.validation_data)
        self._channels = self._shares = None
        # Through `ks.SensitivityModel`, the user's model is `.model`.
        self._net = _user_model(self.model)
        if self._structured:
            from keras_serene.slimming import slimming_plan

            self._channels = budget_pruning.ChannelPruner(
                self._net, self.optimizer, slimming_plan(self._net)
            )
            if not self._channels.groups:
                raise ValueError(
                    "SensitivityPruning(structured=True): the model has no "
                    "prunable neuron group (every group is a model input or "
                    "output, or pinned)."
                )
            # Each group's final fraction over the ramp's: scales the ramp.
            self._shares = (
                self._channels.layer_fractions(self.target_sparsity)
                / self.ramp.target
                if per_layer
                else None
            )
        self._neuron_of = _bias_lookup(self.model)
        self._first_epoch = True

    def _scheduled(self, step):
        """The ramp at `step`: the fraction of entries (structured: of the
        prunable channels, each layer's own with a dict target) at zero."""
        fraction = self.ramp.sparsity(step)
        if self._channels is None or self._shares is None:
            return fraction
        sizes = np.array([group.size for group in self._channels.groups])
        return fraction * float(self._shares @ sizes) / self._channels.total

    def _prune_step(self, step, epoch):
        fraction = self.ramp.sparsity(step)
        if fraction <= 0:
            return
        statistics = self._statistics
        if self.criterion in criteria.FRESH_CRITERIA:
            statistics = criteria.batch_gradients(
                self._net, self._batches, self.model
            )
        elif self._batches is not None:
            new = criteria.gradient_statistics(
                self._net, self._batches, self.criterion, self.model
            )
            if self._statistics is not None:
                for key, value in new.items():
                    new[key] = self._statistics[key] + value
            self._statistics = statistics = new
        if self._channels is not None:
            count = self._channels.prune_to(
                fraction if self._shares is None else fraction * self._shares,
                self.criterion,
                statistics,
            )
        else:
            variables = self._variables()
            values = [keras.ops.convert_to_numpy(v) for v in variables]
            scores = criteria.entry_scores(
                self.criterion,
                variables,
                values,
                statistics,
                self._neuron_of,
            )
            count, self.threshold = budget_pruning.prune_entries(
                self.optimizer, variables, fraction, scores, self.block_size
            )
        self.history.append(
            {"step": step, "scheduled": self._scheduled(step), "pruned": count}
        )
        if self.verbose:
            unit = "channels" if self._channels is not None else "entries"
            self._say(
                f"Step {step}: SensitivityPruning scheduled sparsity "
                f"{self._scheduled(step):.2%}, {count} {unit} pruned."
            )


def _user_model(model):
    from keras_serene.sensitivity.sensitivity_model import SensitivityModel

    return model.model if isinstance(model, SensitivityModel) else model


def _bias_lookup(model):
    """`variable -> (bias variable, broadcast shape)` for `"serene"`."""
    table = {}
    for _, weights in neurons_lib.neuron_layers(model):
        bias = [w for w in weights if w.variable.path.endswith("bias")]
        for w in weights:
            if bias and w.kind != "vector":
                shape = neurons_lib.neuron_shape(w.kind, w.variable.shape)
                table[id(w.variable)] = (bias[0].variable, shape)
            elif bias and w.variable is bias[0].variable:
                table[id(w.variable)] = (w.variable, w.variable.shape)
    return lambda variable: table.get(id(variable))
