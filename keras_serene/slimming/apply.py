"""`ks.slim`: apply a slimming plan, returning a new, smaller Keras model.

The removed channels are constants; their contribution to each consumer is
computed exactly (the consumer's linear part applied to the constant tensor)
and added to the consumer's bias. A consumer without a bias whose only reader
is a BatchNormalization gets it folded into that BN's `moving_mean` instead
(`BN(x + c)` with mean `m` equals `BN(x)` with mean `m - c`), otherwise its
bias is switched on. Then every layer is re-created from its config with the
kept widths (`units`, `filters`, Reshape targets, GroupNormalization
`groups`...), called on the new tensors in graph order (nested models are
rebuilt as nested models) and given the sliced weights. The input model is
never modified.

References:
    Bragagnolo et al., "Simplify: A Python library for optimizing pruned
    neural networks", SoftwareX 2022 (EIDOSLAB `simplify`, `simplify/
    fuse.py` and `propagate.py`: fold `act(b_n)` into the next bias, then
    drop the neuron's column and the consumers' rows).
"""

import copy

import keras
import numpy as np

from keras_serene.core import layer_table
from keras_serene.core.channel_rules import rule_weight_name
from keras_serene.slimming.channels import ChannelAnalysis
from keras_serene.slimming.channels import call_node
from keras_serene.slimming.graph import Scope
from keras_serene.slimming.graph import read_graph
from keras_serene.slimming.plan import SlimmingPlan
from keras_serene.slimming.plan import build_plan
from keras_serene.slimming.plan import slimming_plan


def _weights_by_name(layer):
    return {w.name: np.asarray(w.numpy()) for w in layer.weights}


def _linear_part(layer, inputs):
    """The layer's kernel applied to `inputs`, without bias or activation."""
    entry = layer_table.entry_for(layer)
    x = inputs.astype(np.float32)
    if entry is not None and entry.linear_part is not None:
        return np.asarray(entry.linear_part(layer, x), dtype=np.float64)
    config = copy.deepcopy(layer.get_config())
    config["name"] = f"{config['name']}_linear_part"
    config["activation"] = "linear"
    config["use_bias"] = False
    clone = type(layer).from_config(config)
    clone.build(inputs.shape)
    source = _weights_by_name(layer)
    for w in clone.weights:
        w.assign(source[w.name])
    return np.asarray(clone(x), dtype=np.float64)


def _shift_reader(analysis, node, rank):
    """The one reader of `node`'s output that absorbs a constant shift
    (a BatchNormalization's moving mean), or None."""
    graph = analysis.graph
    out_tid = node.outputs[0]
    readers = graph.consumers.get(out_tid, [])
    if out_tid in graph.outputs or len(readers) != 1:
        return None
    reader = readers[0][0]
    rule = analysis.rules[reader.path]
    if getattr(rule, "shift_weight", None) is None:
        return None
    return reader.path


def _folds(analysis, removed):
    """Bias additions and BN mean shifts, indexed by original channels."""
    bias_add, mean_sub = {}, {}
    gone = analysis.removed_mask(removed)
    for node, tid in analysis.sinks():
        mask = gone[analysis.ids[tid]]
        if not mask.any():
            continue
        values = np.where(mask, analysis.values[tid], 0.0)
        if not values.any():  # removed channels that are exactly zero
            continue
        out = _linear_part(node.layer, values)
        contribution = out.reshape(-1, out.shape[-1]).mean(axis=0)
        if not np.any(contribution):
            continue
        reader = None
        if not node.layer.use_bias:
            reader = _shift_reader(analysis, node, out.ndim)
        if reader is None:
            bias_add[node.path] = bias_add.get(node.path, 0) + contribution
        else:
            mean_sub[reader] = mean_sub.get(reader, 0) + contribution
    return bias_add, mean_sub


class _Rebuilder:
    def __init__(self, graph, analysis, removed, bias_add, mean_sub):
        self.graph = graph
        self.analysis = analysis
        self.gone = analysis.removed_mask(removed)
        self.bias_add = bias_add
        self.mean_sub = mean_sub
        self.new_layers = {}

    def keep(self, tid):
        return ~self.gone[self.analysis.ids[tid]]

    def new_layer(self, node):
        layer = node.layer
        if not isinstance(layer, keras.layers.Layer):
            return self._new_operation(node)
        rule = self.analysis.rules[node.path]
        config = copy.deepcopy(layer.get_config())
        keep_in = self.keep(node.inputs[0]) if node.inputs else None
        keep_out = self.keep(node.outputs[0])
        config = rule.configure(config, keep_in, keep_out)
        if node.path in self.bias_add:
            config["use_bias"] = True
        for key, value in config.items():
            # Every weight is assigned below: skip drawing random values.
            if key.endswith("_initializer") and value is not None:
                config[key] = "zeros"
        new = type(layer).from_config(config)
        self.new_layers[node.path] = new
        return new

    def _new_operation(self, node):
        try:
            return type(node.layer).from_config(node.layer.get_config())
        except (TypeError, ValueError, NotImplementedError):
            return node.layer  # stateless: calling it again adds a node

    def set_weights(self, node):
        layer, new = node.layer, self.new_layers[node.path]
        rule = self.analysis.rules[node.path]
        names = rule.weight_names()
        source = {
            rule_weight_name(w.name, names): np.asarray(w.numpy())
            for w in layer.weights
        }
        keep_in = self.keep(node.inputs[0]) if node.inputs else None
        keep_out = self.keep(node.outputs[0])
        if node.path in self.bias_add:
            bias = source.get("bias")
            if bias is None:
                bias = np.zeros(len(keep_out), dtype=np.float32)
            source["bias"] = (bias + self.bias_add[node.path]).astype(
                np.float32
            )
        if node.path in self.mean_sub:
            name = rule.shift_weight
            shifted = source[name] - self.mean_sub[node.path]
            source[name] = shifted.astype(np.float32)
        for w in new.weights:
            name = rule_weight_name(w.name, names)
            array = source.get(name)
            if array is None:
                raise ValueError(
                    f"slim: no source for weight {w.name!r} of {node.path}."
                )
            array = rule.slice_weight(name, array, keep_in, keep_out)
            if tuple(array.shape) != tuple(w.shape):
                raise ValueError(
                    f"slim: weight {w.name!r} of {node.path} has shape "
                    f"{tuple(array.shape)} after slicing, the new layer "
                    f"expects {tuple(w.shape)}."
                )
            w.assign(array)
        if new.weights and hasattr(new, "finalize_state"):
            # Adapted preprocessing layers (Normalization) cache their state.
            new.finalize_state()

    def build_scope(self, scope, nested=False):
        """Re-creates `scope` (a functional or Sequential model)."""
        graph = self.graph
        resolve = graph.resolve
        local, inputs = {}, []
        for tid in scope.inputs:
            rtid = resolve(tid)
            shape = list(graph.shapes[rtid])
            shape[-1] = int(self.keep(rtid).sum())
            name = tid.rsplit(":", 1)[0].rsplit("/", 1)[-1]
            if nested or name == "<input>":
                name = None
            tensor = keras.Input(batch_shape=tuple(shape), name=name)
            local[rtid] = tensor
            inputs.append(tensor)
        if isinstance(scope.model, keras.Sequential):
            layers = []
            for entry in scope.entries:
                if isinstance(entry, Scope):
                    layers.append(self.build_scope(entry, nested=True))
                elif entry.inputs:
                    layers.append(self.new_layer(entry))
            return keras.Sequential([inputs[0], *layers], name=scope.model.name)
        for entry in scope.entries:
            if isinstance(entry, Scope):
                args = [local[resolve(t)] for t in entry.inputs]
                child = self.build_scope(entry, nested=True)
                result = child(args[0] if len(args) == 1 else args)
                results = result if isinstance(result, list) else [result]
                for tid, tensor in zip(entry.outputs, results):
                    local[resolve(tid)] = tensor
            elif entry.inputs:
                new = self.new_layer(entry)
                tensors = [local[t] for t in entry.inputs]
                local[entry.outputs[0]] = call_node(entry, new, tensors)
        outputs = [local[resolve(t)] for t in scope.outputs]
        if len(outputs) == 1 and not isinstance(scope.model.output, list):
            outputs = outputs[0]
        if len(inputs) == 1 and not isinstance(scope.model.input, list):
            inputs = inputs[0]
        return keras.Model(inputs, outputs, name=scope.model.name)


def _analysis_for(model, plan):
    """The plan's own analysis, or a fresh one checked against the plan."""
    if not isinstance(plan, SlimmingPlan):
        raise TypeError(
            "slim: `plan` must be a SlimmingPlan (from ks.slimming_plan). "
            f"Received: plan={type(plan).__name__}"
        )
    analysis = plan.analysis
    if analysis is not None and analysis.graph.model is model:
        return analysis
    mine = build_plan(ChannelAnalysis(read_graph(model)), model.name)
    if len(plan.groups) != len(mine.groups) or any(
        a.size != b.size or a.sources != b.sources
        for a, b in zip(plan.groups, mine.groups)
    ):
        raise ValueError(
            "slim: `plan` does not match the model's channel groups (was it "
            "made for another model?). Rebuild it with "
            "ks.slimming_plan(model)."
        )
    return mine.analysis


def _removed_by(plan, analysis):
    """The channel classes the plan removes, checked to be removable."""
    removed = set()
    for group, classes in zip(plan.groups, analysis.group_classes):
        live = sorted(
            i for i in group.removed if classes[i] not in analysis.removable
        )
        if live:
            allowed = [
                i for i, c in enumerate(classes) if c in analysis.removable
            ]
            raise ValueError(
                f"slim: plan group {group.id} removes channels {live} that "
                "cannot be removed exactly (live, pinned or not foldable). "
                f"Removable channels of that group: {allowed}."
            )
        removed.update(classes[i] for i in group.removed)
    aligned = set(removed)
    if analysis.restrict(aligned):
        kept = sorted(removed - aligned)
        raise ValueError(
            "slim: the plan removes part of a channel group that must go "
            "whole (a GroupNormalization group); keep or remove all of it. "
            f"Received: {len(kept)} channels that cannot go alone."
        )
    return removed


def slim(model, plan=None):
    """Returns a new, physically smaller model with the same outputs.

    Removes the constant channels (every producing weight slice zero, or a
    BatchNormalization `gamma` exactly 0) found by `ks.slimming_plan`,
    folding their constant output into the consumers' biases, so the outputs
    are unchanged (inference mode). The result holds plain Keras layers only
    and loads without keras_serene. The input model is not modified.

    Example:

    >>> small = ks.slim(model)
    >>> small.count_params() < model.count_params()

    Args:
        model: A functional or Sequential `keras.Model`.
        plan: `SlimmingPlan` or `None`. A plan from `ks.slimming_plan(model)`,
            possibly edited to keep more channels; it is applied as given
            (with the analysis it carries). Defaults to `None` (plan the
            model now).

    Returns:
        A new `keras.Model`.

    References:
        Bragagnolo et al., EIDOSLAB `simplify` (SoftwareX 2022).
    """
    if plan is None:
        plan = slimming_plan(model)
    analysis = _analysis_for(model, plan)
    removed = _removed_by(plan, analysis)
    graph = analysis.graph
    bias_add, mean_sub = _folds(analysis, removed)
    builder = _Rebuilder(graph, analysis, removed, bias_add, mean_sub)
    new_model = builder.build_scope(graph.root)
    for node in graph.nodes:
        if node.path in builder.new_layers:
            builder.set_weights(node)
    return new_model
