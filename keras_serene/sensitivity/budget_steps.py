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
        self._layers = None
        if per_layer and not self._structured:
            self._layers = self._entry_layers()
        self._neuron_of = _bias_lookup(self.model)
        self._first_epoch = True

    def _entry_layers(self):
        """Unstructured dict target: `[(share of the ramp, variable
        indices)]` per named layer; a name with no variable to prune is an
        error naming it."""
        variables = self._variables()
        owners = [
            budget_pruning.layer_of(v, self.target_sparsity) for v in variables
        ]
        layers = []
        for name, fraction in self.target_sparsity.items():
            indices = [i for i, owner in enumerate(owners) if owner == name]
            if not indices:
                prunable = sorted(
                    {
                        v.path.rpartition("/")[0]
                        for v in self.optimizer.regularized_variables
                    }
                )
                raise ValueError(
                    "SensitivityPruning: `target_sparsity` names layer "
                    f"{name!r}, which has no regularized variable to prune "
                    "(not in `exclude`). Layers with one: "
                    f"{prunable}. Received target_sparsity="
                    f"{self.target_sparsity!r}"
                )
            layers.append((fraction / self.ramp.target, indices))
        return layers

    def _scheduled(self, step):
        """The ramp at `step`: the fraction of entries (structured: of the
        prunable channels) at zero, each layer's own with a dict target."""
        fraction = self.ramp.sparsity(step)
        if self._layers is not None:
            sizes = [int(np.prod(v.shape)) for v in self._variables()]
            pruned = sum(
                share * sum(sizes[i] for i in indices)
                for share, indices in self._layers
            )
            return fraction * pruned / sum(sizes)
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
            layers = self._layers or [(1.0, range(len(variables)))]
            count, cuts = 0, []
            for share, indices in layers:
                pruned, cut = budget_pruning.prune_entries(
                    self.optimizer,
                    [variables[i] for i in indices],
                    fraction * share,
                    [scores[i] for i in indices],
                    self.block_size,
                )
                count = count + pruned
                if cut is not None:
                    cuts.append(cut)
            if cuts:  # a step that adds no entry keeps the last cut
                self.threshold = max(cuts)
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
