"""Channel analysis: coupled channels, constant channels, removable channels.

Every channel created in the model (an input feature, a Dense unit, a conv
filter) gets an integer id; each tensor's last axis is an array of ids.
How ids move through a node is its channel rule's `channel_ids` method
(`core/channel_rules.py`): pass-through and transparent layers keep the
ids, Concatenate concatenates them, Flatten tiles them (channel c owns
features c, c + C, ...), and elementwise merges (Add, `ops.add`, Multiply...)
unite their operands' ids (union-find). A class of united ids is one channel
that every member must lose together. Constants follow the rules'
`constants` method, group constraints their `restrict` method.

A channel is *constant* when its value does not depend on the input: every
producing slice is zero (its output is `act(bias)`), a BatchNormalization
`gamma` (or a depthwise filter) is exactly zero for it (the output is the
constant `beta`), or it is multiplied by an exact zero. Constants are tracked
as exact values by running each layer on a batch of one constant tensor (so
padding, pooling and BN act on them exactly as in the model). A constant
channel is removable when it is not pinned (model input / output, broadcast
operand, channel-mixing layer) and every consumer can absorb it exactly into
its bias: a Dense on flat inputs always, a valid convolution when the
channel is the same at every position, a padded convolution only when it is
exactly zero (Simplify's rule: keep the channel otherwise).

References:
    EIDOSLAB `simplify` (Bragagnolo et al., SoftwareX
    2022) for folding `act(b)` into the next layer's bias; Fang et al.,
    https://arxiv.org/abs/2301.12900 for the dependency groups.
"""

import keras
import numpy as np

from keras_serene.slimming.graph import input_shapes
from keras_serene.slimming.graph import output_shapes
from keras_serene.slimming.rules import rule_for

_KERAS_TENSOR = "__keras_tensor__"

# Spatial size used for unknown (None) dimensions when evaluating constants.
_UNKNOWN_DIM = 8


class _UnionFind:
    def __init__(self):
        self.parent = []

    def make(self, count):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, i):
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def table(self):
        """Array: the root of every id."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def _batch_one(shape):
    return (1,) + tuple(_UNKNOWN_DIM if d is None else d for d in shape[1:])


def _fill(structure, tensors):
    """A node's serialized call arguments with `tensors` put back in."""
    if isinstance(structure, dict):
        if structure.get("class_name") == _KERAS_TENSOR:
            return next(tensors)
        if "class_name" in structure:
            return keras.saving.deserialize_keras_object(structure)
        return {k: _fill(v, tensors) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_fill(v, tensors) for v in structure]
    return structure


def call_node(node, fn, tensors, training=None):
    """Calls `fn` (the node's layer or its rebuilt copy) the way the model
    called it, with `tensors` in place of its input tensors."""
    if node.args is None:  # Sequential
        args, kwargs = [tensors[0]], {}
    else:
        remaining = iter(tensors)
        args = _fill(node.args, remaining)
        kwargs = _fill(node.kwargs or {}, remaining)
    if training is not None and isinstance(fn, keras.layers.Layer):
        try:
            return fn(*args, **kwargs, training=training)
        except TypeError:
            pass
    return fn(*args, **kwargs)


class ChannelAnalysis:
    """Channel ids, constants and removability for one model.

    Attributes:
        graph: the `LayerGraph`.
        rules: dict node path -> the `ChannelRule` resolved for that call.
        kinds: dict node path -> (kind, reason).
        ids: dict tensor id -> array of channel class ids (roots).
        const: dict tensor id -> bool array (input-independent channels).
        values: dict tensor id -> float64 array of the batch-of-one tensor
            (exact on constant channels) or None.
        pins: dict class -> list of reasons.
        removable: set of classes that can be removed exactly.
        notes: dict class -> list of reasons a constant class is kept.
    """

    def __init__(self, graph):
        self.graph = graph
        self.rules = {}
        self.kinds = {}
        self.pins = {}
        self.notes = {}
        self.group_classes = None
        self._uf = _UnionFind()
        raw = self._assign_ids()
        roots = self._uf.table()
        self.ids = {t: roots[v] for t, v in raw.items()}
        pins = {}
        for cls, reasons in self.pins.items():
            pins.setdefault(int(roots[cls]), []).extend(reasons)
        self.pins = {c: list(dict.fromkeys(r)) for c, r in pins.items()}
        self._propagate_constants()
        self._decide()

    # -- what the rules call -------------------------------------------------
    def new_ids(self, width):
        return self._uf.make(width)

    def pin(self, ids, reason):
        for i in ids:
            self.pins.setdefault(int(i), []).append(reason)

    def union(self, a, b):
        self._uf.union(a, b)

    def note(self, cls, reason):
        self.notes.setdefault(cls, []).append(reason)

    def where(self, node):
        return f"{node.path} ({type(node.layer).__name__})"

    # -- channel ids ------------------------------------------------------
    def _assign_ids(self):
        graph = self.graph
        ids = {}
        for node in graph.nodes:
            out_shapes = output_shapes(graph, node)
            width = out_shapes[0][-1] if out_shapes[0] else 1
            base = rule_for(node.layer, node.path)
            rule, reason = base.resolve(
                node.layer, input_shapes(graph, node), out_shapes
            )
            self.rules[node.path] = rule
            self.kinds[node.path] = (rule.kind, reason)
            ins = [ids[t] for t in node.inputs]
            out = rule.channel_ids(self, node, ins, width, reason)
            for shape in node.constant_shapes:
                if len(shape) and shape[-1] == width and width > 1:
                    self.pin(out, f"per-channel constant operand ({node.path})")
            ids[node.outputs[0]] = out
        for tid in graph.outputs:
            self.pin(ids[tid], "model output")
        return ids

    # -- constants --------------------------------------------------------
    def _propagate_constants(self):
        graph = self.graph
        self.const, self.values = {}, {}
        for node in graph.nodes:
            rule = self.rules[node.path]
            out_tid = node.outputs[0]
            width = len(self.ids[out_tid])
            in_const = [self.const[t] for t in node.inputs]
            in_values = [self.values[t] for t in node.inputs]
            const = rule.constants(node, in_const, in_values, width)
            self.const[out_tid] = const
            self.values[out_tid] = None
            if const.any():
                self.values[out_tid] = self._evaluate(node, rule, in_values)

    def _evaluate(self, node, rule, in_values):
        graph = self.graph
        if rule.sink:
            # A producer's constant channels are act(bias) everywhere (their
            # kernel slices are zero): no need to run the convolution.
            shape = _batch_one(graph.shapes[node.outputs[0]])
            bias = getattr(node.layer, "bias", None)
            bias = np.zeros(shape[-1]) if bias is None else bias.numpy()
            value = np.asarray(bias, np.float32).reshape(1, -1)
            activation = getattr(node.layer, "activation", None)
            if activation is not None:
                value = np.asarray(activation(value), np.float32)
            return np.broadcast_to(value.astype(np.float64), shape)
        shapes = input_shapes(graph, node)
        arrays = []
        for value, shape in zip(in_values, shapes):
            if value is None:
                value = np.zeros(_batch_one(shape), dtype=np.float32)
            arrays.append(value.astype(np.float32))
        result = call_node(node, node.layer, arrays, training=False)
        return np.asarray(result, dtype=np.float64)

    # -- decisions --------------------------------------------------------
    def sinks(self):
        """(node, tensor id) pairs where a producer consumes channels."""
        for node in self.graph.nodes:
            if self.rules[node.path].sink:
                yield node, node.inputs[0]

    def _decide(self):
        # A class is dead (constant) when every tensor a consumer reads or
        # the model returns holds a constant for it.
        seen_const, blocked = set(), set()
        outputs = set(self.graph.outputs)
        for tid, classes in self.ids.items():
            seen_const.update(int(c) for c in classes[self.const[tid]])
            if tid in outputs or self._read_by_sink(tid):
                blocked.update(int(c) for c in classes[~self.const[tid]])
        self.dead = seen_const - blocked
        removable = set(self.dead) - set(self.pins)
        for tid, values in self.values.items():
            if values is None:
                continue
            bad = ~np.isfinite(values.reshape(-1, values.shape[-1])).all(0)
            for cls in self.ids[tid][bad & self.const[tid]]:
                if int(cls) in removable:
                    removable.discard(int(cls))
                    self.note(int(cls), f"non-finite constant at {tid}")
        for node, tid in self.sinks():
            rule = self.rules[node.path]
            mode = rule.sink_mode(node.layer, self.graph.shapes[tid])
            classes = self.ids[tid]
            if mode == "any" or not self.const[tid].any():
                continue
            values = self.values[tid]
            flat = values.reshape(-1, values.shape[-1])
            if mode == "uniform":
                ok = np.all(flat == flat[:1], axis=0)
                ok |= np.isclose(flat, flat[:1], rtol=1e-6, atol=0).all(0)
            else:
                ok = np.all(flat == 0, axis=0)
            for cls in classes[self.const[tid] & ~ok]:
                cls = int(cls)
                if cls in removable:
                    removable.discard(cls)
                    self.note(
                        cls, f"constant is position-dependent at {node.path}"
                    )
        self.restrict(removable)
        self.removable = removable

    def _read_by_sink(self, tid):
        return any(
            self.rules[node.path].sink
            for node, _ in self.graph.consumers.get(tid, [])
        )

    def restrict(self, removable):
        """Drops from `removable` (in place) what a layer forbids (a partial
        GroupNormalization group); True when something was dropped."""
        dropped, changed = False, True
        while changed:
            changed = False
            for node in self.graph.nodes:
                rule = self.rules[node.path]
                changed |= rule.restrict(self, node, removable)
            dropped |= changed
        return dropped

    def removed_mask(self, removed):
        """Bool array over every channel id: True for the `removed` ones."""
        size = 1 + max(
            (int(v.max()) for v in self.ids.values() if v.size), default=0
        )
        mask = np.zeros(size, dtype=bool)
        mask[np.fromiter(removed, np.int64, len(removed))] = True
        return mask

    def keep_mask(self, tid, removed):
        """Bool mask over the channels of `tid` that stay."""
        return ~self.removed_mask(removed)[self.ids[tid]]
