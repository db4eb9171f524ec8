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
    Papers.md section 7 (fold `act(b_n)` into the next bias, then drop the
    neuron's column and the consumers' rows); EIDOSLAB `simplify`
    (Bragagnolo et al., SoftwareX 2022).
"""

import copy

import keras
import numpy as np

from keras_serene.slimming.channels import ChannelAnalysis
from keras_serene.slimming.graph import Scope
from keras_serene.slimming.graph import read_graph
from keras_serene.slimming.plan import SlimmingPlan
from keras_serene.slimming.plan import build_plan
from keras_serene.slimming.rules import rule_for

_KERAS_TENSOR = "__keras_tensor__"


def _weights_by_name(layer):
    return {w.name: np.asarray(w.numpy()) for w in layer.weights}


def _linear_part(layer, inputs):
    """The layer's kernel applied to `inputs`, without bias or activation."""
    config = copy.deepcopy(layer.get_config())
    config["name"] = f"{config['name']}_linear_part"
    config["activation"] = "linear"
    config["use_bias"] = False
    clone = type(layer).from_config(config)
    clone.build(inputs.shape)
    source = _weights_by_name(layer)
    for w in clone.weights:
        w.assign(source[w.name])
    return np.asarray(clone(inputs.astype(np.float32)), dtype=np.float64)


def _folds(analysis, removed):
    """Bias additions and BN mean shifts, indexed by original channels."""
    graph = analysis.graph
    bias_add, mean_sub = {}, {}
    removed_ids = np.fromiter(removed, np.int64)
    for node, tid in analysis.sinks():
        mask = np.isin(analysis.ids[tid], removed_ids)
        if not mask.any():
            continue
        values = analysis.values[tid] * mask
        out = _linear_part(node.layer, values)
        contribution = out.reshape(-1, out.shape[-1]).mean(axis=0)
        if not np.any(contribution):
            continue
        if node.layer.use_bias:
            bias_add[node.path] = bias_add.get(node.path, 0) + contribution
            continue
        out_tid = node.outputs[0]
        readers = graph.consumers.get(out_tid, [])
        if (
            out_tid not in graph.outputs
            and len(readers) == 1
            and type(readers[0][0].layer).__name__ == "BatchNormalization"
            and analysis.kinds[readers[0][0].path][0] == "passes"
            and readers[0][0].layer.get_config()["axis"]
            in (-1, len(out.shape) - 1)
        ):
            bn = readers[0][0].path
            mean_sub[bn] = mean_sub.get(bn, 0) + contribution
        else:
            bias_add[node.path] = bias_add.get(node.path, 0) + contribution
    return bias_add, mean_sub


def _take(array, axis, keep):
    if keep is None or keep.all():
        return array
    return np.compress(keep, array, axis=axis % array.ndim)


class _Rebuilder:
    def __init__(self, graph, analysis, removed, bias_add, mean_sub):
        self.graph = graph
        self.analysis = analysis
        self.removed = removed
        self.bias_add = bias_add
        self.mean_sub = mean_sub
        self.new_layers = {}

    def keep(self, tid):
        return self.analysis.keep_mask(tid, self.removed)

    def new_layer(self, node):
        layer = node.layer
        kind = self.analysis.kinds[node.path][0]
        rule = rule_for(layer, node.path)
        config = copy.deepcopy(layer.get_config())
        keep_in = self.keep(node.inputs[0]) if node.inputs else None
        keep_out = self.keep(node.outputs[0])
        if kind == "produces":
            config[rule.size_key] = int(keep_out.sum())
            if node.path in self.bias_add:
                config["use_bias"] = True
        if rule.configure is not None and kind not in ("pins", "boundary"):
            if keep_in is not None and not (keep_in.all() and keep_out.all()):
                config = rule.configure(config, keep_in, keep_out)
        new = type(layer).from_config(config)
        self.new_layers[node.path] = new
        return new

    def set_weights(self, node):
        layer, new = node.layer, self.new_layers[node.path]
        kind = self.analysis.kinds[node.path][0]
        rule = rule_for(layer, node.path)
        source = _weights_by_name(layer)
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
            mean = source["moving_mean"] - self.mean_sub[node.path]
            source["moving_mean"] = mean.astype(np.float32)
        for w in new.weights:
            array = source.get(w.name)
            if array is None:
                raise ValueError(
                    f"slim: no source for weight {w.name!r} of {node.path}."
                )
            if kind == "produces":
                in_axis = rule.in_weights.get(w.name)
                if in_axis is not None:
                    array = _take(array, in_axis, keep_in)
                out_axis = rule.out_weights.get(w.name)
                if out_axis is not None:
                    array = _take(array, out_axis, keep_out)
            elif kind in ("passes", "normalizes_groups"):
                axis = rule.channel_weights.get(w.name)
                if axis is not None:
                    array = _take(array, axis, keep_in)
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

    def call(self, node, new, tensors):
        inputs = iter(tensors)

        def fill(structure):
            if isinstance(structure, dict):
                if structure.get("class_name") == _KERAS_TENSOR:
                    return next(inputs)
                return {k: fill(v) for k, v in structure.items()}
            if isinstance(structure, (list, tuple)):
                return [fill(v) for v in structure]
            return structure

        if node.args is None:
            return new(tensors[0])
        args = fill(node.args)
        kwargs = fill(node.kwargs or {})
        return new(*args, **kwargs)

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
                local[entry.outputs[0]] = self.call(entry, new, tensors)
        outputs = [local[resolve(t)] for t in scope.outputs]
        if len(outputs) == 1 and not isinstance(scope.model.output, list):
            outputs = outputs[0]
        if len(inputs) == 1 and not isinstance(scope.model.input, list):
            inputs = inputs[0]
        return keras.Model(inputs, outputs, name=scope.model.name)


def _removed_from_plan(plan, auto, analysis):
    if not isinstance(plan, SlimmingPlan):
        raise TypeError(
            "slim: `plan` must be a SlimmingPlan (from ks.slimming_plan). "
            f"Received {type(plan).__name__}."
        )
    if len(plan.groups) != len(auto.groups) or any(
        a.size != b.size for a, b in zip(plan.groups, auto.groups)
    ):
        raise ValueError(
            "slim: `plan` does not match the model's channel groups (was it "
            "made for another model?). Rebuild it with "
            "ks.slimming_plan(model)."
        )
    removed = set()
    for user, mine, classes in zip(plan.groups, auto.groups, auto._classes):
        live = sorted(set(user.removed) - set(mine.removed))
        if live:
            raise ValueError(
                f"slim: plan group {user.id} removes channels {live} that "
                "cannot be removed exactly (live, pinned or not foldable). "
                f"Removable channels of that group: {mine.removed}."
            )
        removed.update(classes[i] for i in user.removed)
    return analysis._align_groups(removed)


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
            possibly edited to keep more channels. Defaults to `None` (plan
            the model now).

    Returns:
        A new `keras.Model`.

    References:
        Papers.md section 7; EIDOSLAB `simplify` (SoftwareX 2022).
    """
    graph = read_graph(model)
    analysis = ChannelAnalysis(graph)
    removed = set(analysis.removable)
    if plan is not None:
        auto = build_plan(analysis, model.name)
        removed = _removed_from_plan(plan, auto, analysis)
    bias_add, mean_sub = _folds(analysis, removed)
    builder = _Rebuilder(graph, analysis, removed, bias_add, mean_sub)
    new_model = builder.build_scope(graph.root)
    for node in graph.nodes:
        if node.path in builder.new_layers:
            builder.set_weights(node)
    return new_model
