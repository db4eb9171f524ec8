"""Channel analysis: coupled channels, constant channels, removable channels.

Every channel created in the model (an input feature, a Dense unit, a conv
filter) gets an integer id; each tensor's last axis is an array of ids.
Pass-through and transparent layers keep the ids, Concatenate concatenates
them, Flatten tiles them (channel c owns features c, c + C, ...), and
elementwise merges (Add, Multiply, ...) unite their operands' ids
(union-find). A class of united ids is one channel that every member must
lose together.

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
    Papers.md section 7; EIDOSLAB `simplify` (Bragagnolo et al., SoftwareX
    2022) for folding `act(b)` into the next layer's bias; Fang et al.,
    https://arxiv.org/abs/2301.12900 for the dependency groups.
"""

import numpy as np

from keras_serene.slimming.graph import input_shapes
from keras_serene.slimming.graph import output_shapes
from keras_serene.slimming.rules import rule_for

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

    def roots(self, ids):
        return np.array([self.find(int(i)) for i in ids], dtype=np.int64)


def _weight(layer, name):
    for w in layer.weights:
        if w.name == name:
            return np.asarray(w.numpy())
    return None


def _zero_slices(array, axis):
    axis = axis % array.ndim
    moved = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    return np.all(moved == 0, axis=0)


def _batch_one(shape):
    return (1,) + tuple(_UNKNOWN_DIM if d is None else d for d in shape[1:])


def _call(layer, inputs):
    try:
        result = layer(inputs, training=False)
    except TypeError:
        result = layer(inputs)
    return np.asarray(result, dtype=np.float64)


class ChannelAnalysis:
    """Channel ids, constants and removability for one model.

    Attributes:
        graph: the `LayerGraph`.
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
        self.kinds = {}
        self.pins = {}
        self.notes = {}
        self._uf = _UnionFind()
        raw = self._assign_ids()
        self.ids = {t: self._uf.roots(v) for t, v in raw.items()}
        pins = {}
        for cls, reasons in self.pins.items():
            pins.setdefault(self._uf.find(cls), []).extend(reasons)
        self.pins = {c: list(dict.fromkeys(r)) for c, r in pins.items()}
        self._propagate_constants()
        self._decide()

    # -- channel ids ------------------------------------------------------
    def _pin(self, ids, reason):
        for i in ids:
            self.pins.setdefault(int(i), []).append(reason)

    def _assign_ids(self):
        graph, uf = self.graph, self._uf
        ids = {}
        for node in graph.nodes:
            in_shapes = input_shapes(graph, node)
            out_shapes = output_shapes(graph, node)
            out_tid = node.outputs[0]
            width = out_shapes[0][-1]
            if node.layer is None:
                kind, reason = "input", None
            else:
                rule = rule_for(node.layer, node.path)
                kind, reason = rule.kind, None
                if rule.check is not None:
                    override = rule.check(node.layer, in_shapes, out_shapes)
                    if override is not None:
                        kind, reason = override
            self.kinds[node.path] = (kind, reason)
            ins = [ids[t] for t in node.inputs]
            where = f"{node.path} ({type(node.layer).__name__})"
            if kind == "input":
                ids[out_tid] = uf.make(width)
                self._pin(ids[out_tid], "model input")
            elif kind == "produces":
                ids[out_tid] = uf.make(width)
            elif kind in ("passes", "transparent", "pins", "normalizes_groups"):
                if len(ins[0]) != width:
                    raise ValueError(
                        f"slim: layer {where} changes the channel count "
                        f"from {len(ins[0])} to {width}, which its rule "
                        f"kind {kind!r} does not allow."
                    )
                ids[out_tid] = ins[0]
                if kind == "pins":
                    self._pin(ins[0], f"{reason} ({node.path})")
            elif kind == "couples":
                full = [x for x in ins if len(x) == width]
                for x in ins:
                    if len(x) != width:
                        self._pin(x, f"broadcast operand of {node.path}")
                for x in full[1:]:
                    for a, b in zip(full[0], x):
                        uf.union(int(a), int(b))
                ids[out_tid] = full[0]
            elif kind == "offsets":
                ids[out_tid] = np.concatenate(ins)
            elif kind == "expands":
                repeats = width // max(len(ins[0]), 1)
                if repeats * len(ins[0]) != width:
                    raise ValueError(
                        f"slim: cannot map channels through {where}."
                    )
                ids[out_tid] = np.tile(ins[0], repeats)
            else:  # boundary
                for x in ins:
                    self._pin(x, f"{reason} ({node.path})")
                ids[out_tid] = uf.make(width)
                self._pin(ids[out_tid], f"{reason} ({node.path})")
        for tid in graph.outputs:
            self._pin(ids[tid], "model output")
        return ids

    # -- constants --------------------------------------------------------
    def _propagate_constants(self):
        graph = self.graph
        self.const, self.values = {}, {}
        for node in graph.nodes:
            kind = self.kinds[node.path][0]
            out_tid = node.outputs[0]
            width = len(self.ids[out_tid])
            in_const = [self.const[t] for t in node.inputs]
            in_values = [self.values[t] for t in node.inputs]
            const = np.zeros(width, dtype=bool)
            layer = node.layer
            if kind == "produces":
                rule = rule_for(layer, node.path)
                const[:] = True
                for name, axis in rule.out_weights.items():
                    array = _weight(layer, name)
                    if name != "bias" and array is not None:
                        const &= _zero_slices(array, axis)
            elif kind in ("passes", "transparent"):
                const = in_const[0].copy()
                rule = rule_for(layer, node.path)
                if kind == "passes" and rule.constant_weight is not None:
                    array = _weight(layer, rule.constant_weight)
                    axis = rule.channel_weights[rule.constant_weight]
                    if array is not None:
                        const |= _zero_slices(array, axis)
            elif kind == "normalizes_groups":
                groups = layer.groups
                per = width // groups
                grouped = in_const[0].reshape(groups, per).all(axis=1)
                const = np.repeat(grouped, per)
            elif kind == "pins":
                const[:] = in_const[0].all()
            elif kind == "couples":
                full = [
                    (c if len(c) == width else np.repeat(c, width))
                    for c in in_const
                ]
                const = np.logical_and.reduce(full)
                if type(layer).__name__ == "Multiply":
                    for c, v in zip(full, in_values):
                        if v is not None:
                            zero = np.all(
                                v.reshape(-1, v.shape[-1]) == 0, axis=0
                            )
                            if zero.size != width:
                                zero = np.repeat(zero, width)
                            const |= c & zero
            elif kind == "offsets":
                const = np.concatenate(in_const)
            elif kind == "expands":
                const = np.tile(in_const[0], width // len(in_const[0]))
            self.const[out_tid] = const
            self.values[out_tid] = None
            if const.any():
                self.values[out_tid] = self._evaluate(node, kind, in_values)

    def _evaluate(self, node, kind, in_values):
        graph = self.graph
        shapes = input_shapes(graph, node)
        arrays = []
        for value, shape in zip(in_values, shapes):
            if value is None:
                value = np.zeros(_batch_one(shape), dtype=np.float32)
            arrays.append(value.astype(np.float32))
        if kind == "produces":
            arrays = [np.zeros_like(a) for a in arrays]
        inputs = arrays[0] if len(arrays) == 1 else arrays
        return _call(node.layer, inputs)

    # -- decisions --------------------------------------------------------
    def sinks(self):
        """(node, tensor id) pairs where a producer consumes channels."""
        for node in self.graph.nodes:
            if self.kinds[node.path][0] == "produces":
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
        for node, tid in self.sinks():
            rule = rule_for(node.layer, node.path)
            mode = rule.sink(node.layer, self.graph.shapes[tid])
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
                    self.notes.setdefault(cls, []).append(
                        f"constant is position-dependent at {node.path}"
                    )
        self.removable = self._align_groups(removable)

    def _read_by_sink(self, tid):
        for node, _ in self.graph.consumers.get(tid, []):
            if self.kinds[node.path][0] == "produces":
                return True
        return False

    def _align_groups(self, removable):
        changed = True
        while changed:
            changed = False
            for node in self.graph.nodes:
                if self.kinds[node.path][0] != "normalizes_groups":
                    continue
                classes = self.ids[node.inputs[0]]
                per = len(classes) // node.layer.groups
                for g in range(node.layer.groups):
                    members = [int(c) for c in classes[g * per : (g + 1) * per]]
                    inside = [c in removable for c in members]
                    if any(inside) and not all(inside):
                        for c in members:
                            if c in removable:
                                removable.discard(c)
                                self.notes.setdefault(c, []).append(
                                    f"partial group of {node.path}"
                                )
                        changed = True
        return removable

    def keep_mask(self, tid, removed):
        """Bool mask over the channels of `tid` that stay."""
        return ~np.isin(self.ids[tid], np.fromiter(removed, np.int64))
