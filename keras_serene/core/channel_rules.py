"""Channel rules: how a layer (or operation) moves, owns, consumes channels.

One small class per rule *kind*, as Torch-Pruning's `torch_pruning/pruner/
function.py` has one class per layer type: each kind's behaviour is a method
on the rule, so the slimmer's analysis (`slimming/channels.py`), plan
(`slimming/plan.py`) and rebuild (`slimming/apply.py`) hold no per-kind
branches. The layer table (`core/layer_table.py`) maps each layer class to
one rule instance.

- `Input`: a model input; its channels are pinned.
- `Produces`: Dense and convolutions. New output channels (owned by
  `out_weights`), consumed input channels (`in_weights` rows): a consumer is
  where the constant output of a removed channel is folded into the bias,
  exactly when `sink(layer, input_shape)` allows it (`"any"`: Dense on flat
  inputs; `"uniform"`: the channel is the same constant everywhere; `"zero"`:
  padded convolutions need an exact zero). A non-elementwise activation
  (softmax) pins the layer's *outputs*; its inputs are consumed as usual.
- `Passes`: per-channel layers with per-channel weights (BatchNormalization,
  DepthwiseConv2D, LayerScale). An all-zero `constant_weight` slice makes the
  channel constant whatever its input.
- `Transparent`: per-channel, no weights (activations, pooling, padding...).
- `Couples`: elementwise merges (Add, Multiply, `ops.add`...): operands share
  channels; a broadcast operand with one channel is pinned.
- `Offsets`: Concatenate on the channel axis.
- `Expands`: Flatten: channel c owns features c, c + C, c + 2C, ...
- `Pins`: channel-mixing layers (LayerNormalization, Softmax).
- `NormalizesGroups`: GroupNormalization (a channel goes with its group).
- `Boundary`: the channel flow stops (a Reshape moving the channel axis, an
  operation the table does not know): inputs and outputs pinned.

A rule may carry `check(layer, input_shapes, output_shapes) -> None |
(kind or rule, reason)` to change its kind for one unusual instance (a grouped
convolution, `channels_first`...), and `configure(config, keep_in,
keep_out) -> config` to update a layer config for the kept channels.

References:
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
    https://arxiv.org/abs/2301.12900 (Torch-Pruning's dependency graph;
    `torch_pruning/pruner/function.py`: one class per layer type).
"""

import copy

import numpy as np


def zero_slices(array, axis):
    """Bool per index of `axis`: True where the whole slice is zero."""
    axis = axis % array.ndim
    moved = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    return np.all(moved == 0, axis=0)


def take(array, axis, keep):
    """`array` restricted to the `keep` mask on `axis`."""
    if keep is None or keep.all():
        return array
    return np.compress(keep, array, axis=axis % array.ndim)


def find_weight(layer, name):
    """The variable of `layer` named `name`. A weight created without a name
    is called `variable`, `variable_1`...: those match their stem."""
    found = None
    for w in layer.weights:
        if w.name == name:
            return w
        if found is None and w.name.rsplit("_", 1)[0] == name:
            if w.name.rsplit("_", 1)[-1].isdigit():
                found = w
    return found


def weight_array(layer, name):
    w = find_weight(layer, name)
    return None if w is None else np.asarray(w.numpy())


def rule_weight_name(name, names):
    """`name` as the rule spells it (`variable_18` -> `variable`)."""
    if name in names:
        return name
    stem, _, tail = name.rpartition("_")
    return stem if tail.isdigit() and stem in names else name


class ChannelRule:
    """Base rule. Subclasses set `kind` and override the methods they need.

    Args:
        check: Callable `(layer, input_shapes, output_shapes) -> None |
            (kind, reason)`. Defaults to `None`.
        configure: Callable `(config, keep_in, keep_out) -> config`.
            Defaults to `None`.
    """

    kind = None
    creates = False  # the layer is a source of new channels
    couples = False  # operands' channels are united
    sink = False  # consumes channels through weights (constants fold here)

    def __init__(self, check=None, configure=None):
        self.check = check
        self._configure = configure

    def __repr__(self):
        return f"{type(self).__name__}(kind={self.kind!r})"

    # -- per instance -------------------------------------------------------
    def resolve(self, layer, in_shapes, out_shapes):
        """`(rule, reason)` for one layer instance (after `check`)."""
        if self.check is None or layer is None:
            return self, None
        override = self.check(layer, in_shapes, out_shapes)
        if override is None:
            return self, None
        kind, reason = override
        return self.as_kind(kind), reason

    def as_kind(self, kind):
        if isinstance(kind, ChannelRule):
            return kind
        if kind == self.kind:
            return self
        cls = RULE_KINDS.get(kind)
        if cls is None:
            raise ValueError(
                f"{type(self).__name__}: `check` must return a kind in "
                f"{sorted(RULE_KINDS)}. Received: kind={kind!r}"
            )
        keep_config = kind not in ("pins", "boundary")
        rule = cls(configure=self._configure if keep_config else None)
        if kind == "passes":
            rule.channel_weights = dict(getattr(self, "channel_weights", {}))
        return rule

    # -- analysis -----------------------------------------------------------
    def same_width(self, analysis, node, ins, width):
        if len(ins[0]) != width:
            raise ValueError(
                f"slim: layer {analysis.where(node)} changes the channel "
                f"count from {len(ins[0])} to {width}, which its rule kind "
                f"{self.kind!r} does not allow."
            )
        return ins[0]

    def channel_ids(self, analysis, node, ins, width, reason):
        """Channel ids of the output (an int array of length `width`)."""
        return self.same_width(analysis, node, ins, width)

    def constants(self, node, in_const, in_values, width):
        """Bool per output channel: True where it does not depend on x."""
        return in_const[0].copy()

    def restrict(self, analysis, node, removable):
        """Drops from `removable` what this layer forbids; True if changed."""
        return False

    # -- plan ---------------------------------------------------------------
    def members(self, node, tids):
        """`(weight, axis, role, tensor id)` of the weights on `tids`."""
        return []

    # -- rebuild ------------------------------------------------------------
    def configure(self, config, keep_in, keep_out):
        if self._configure is None:
            return config
        if keep_in is not None and keep_in.all() and keep_out.all():
            return config
        return self._configure(config, keep_in, keep_out)

    def slice_weight(self, name, array, keep_in, keep_out):
        return array

    def weight_names(self):
        return ()


class Input(ChannelRule):
    kind = "input"
    creates = True

    def channel_ids(self, analysis, node, ins, width, reason):
        ids = analysis.new_ids(width)
        analysis.pin(ids, "model input")
        return ids

    def constants(self, node, in_const, in_values, width):
        return np.zeros(width, dtype=bool)


class Produces(ChannelRule):
    """Args: `in_weights`, `out_weights` (weight name -> channel axis),
    `size_key` (config key of the width), `sink` (see module docstring)."""

    kind = "produces"
    creates = True
    sink = True

    def __init__(
        self,
        in_weights,
        out_weights,
        size_key,
        sink,
        check=None,
        configure=None,
    ):
        super().__init__(check=check, configure=configure)
        if not isinstance(size_key, str):
            raise ValueError(
                "Produces: `size_key` must be the config key of the output "
                f"width. Received: size_key={size_key!r}"
            )
        self.in_weights = dict(in_weights)
        self.out_weights = dict(out_weights)
        self.size_key = size_key
        self.sink_mode = sink
        self.pinned_outputs = None

    def resolve(self, layer, in_shapes, out_shapes):
        rule, reason = super().resolve(layer, in_shapes, out_shapes)
        if rule is self and reason is None and layer is not None:
            mixing = mixing_activation(layer)
            if mixing is not None:
                rule = copy.copy(self)
                rule.pinned_outputs = mixing
                return rule, mixing
        return rule, reason

    def channel_ids(self, analysis, node, ins, width, reason):
        ids = analysis.new_ids(width)
        if self.pinned_outputs is not None:
            analysis.pin(ids, f"{self.pinned_outputs} ({node.path})")
        return ids

    def constants(self, node, in_const, in_values, width):
        const = np.full(width, self.pinned_outputs is None)
        for name, axis in self.out_weights.items():
            array = weight_array(node.layer, name)
            if name != "bias" and array is not None:
                const &= zero_slices(array, axis)
        return const

    def members(self, node, tids):
        specs = []
        if node.outputs[0] in tids:
            specs += [
                (w, a, "produces", node.outputs[0])
                for w, a in self.out_weights.items()
            ]
        if node.inputs[0] in tids:
            specs += [
                (w, a, "consumes", node.inputs[0])
                for w, a in self.in_weights.items()
            ]
        return specs

    def configure(self, config, keep_in, keep_out):
        config[self.size_key] = int(keep_out.sum())
        return super().configure(config, keep_in, keep_out)

    def weight_names(self):
        return tuple(self.in_weights) + tuple(self.out_weights)

    def slice_weight(self, name, array, keep_in, keep_out):
        if name in self.in_weights:
            array = take(array, self.in_weights[name], keep_in)
        if name in self.out_weights:
            array = take(array, self.out_weights[name], keep_out)
        return array


class Passes(ChannelRule):
    """Args: `channel_weights` (name -> channel axis), `constant_weight`
    (its all-zero slice makes the channel constant), `shift_weight` (a
    weight `w` with `f(x + c) = f(x)` when `w -= c`: BN's moving mean)."""

    kind = "passes"

    def __init__(
        self,
        channel_weights=None,
        constant_weight=None,
        shift_weight=None,
        check=None,
        configure=None,
    ):
        super().__init__(check=check, configure=configure)
        self.channel_weights = dict(channel_weights or {})
        self.constant_weight = constant_weight
        self.shift_weight = shift_weight

    def constants(self, node, in_const, in_values, width):
        const = in_const[0].copy()
        if self.constant_weight is not None:
            array = weight_array(node.layer, self.constant_weight)
            if array is not None:
                axis = self.channel_weights[self.constant_weight]
                const |= zero_slices(array, axis)
        return const

    def members(self, node, tids):
        return [
            (w, a, "channel", node.inputs[0])
            for w, a in self.channel_weights.items()
        ]

    def weight_names(self):
        return tuple(self.channel_weights)

    def slice_weight(self, name, array, keep_in, keep_out):
        axis = self.channel_weights.get(name)
        return array if axis is None else take(array, axis, keep_in)


class Transparent(ChannelRule):
    kind = "transparent"


class Pins(ChannelRule):
    kind = "pins"

    def channel_ids(self, analysis, node, ins, width, reason):
        ids = self.same_width(analysis, node, ins, width)
        analysis.pin(ids, f"{reason} ({node.path})")
        return ids

    def constants(self, node, in_const, in_values, width):
        return np.full(width, bool(in_const[0].all()))


class NormalizesGroups(Passes):
    kind = "normalizes_groups"

    def constants(self, node, in_const, in_values, width):
        groups = node.layer.groups
        per = width // groups
        return np.repeat(in_const[0].reshape(groups, per).all(axis=1), per)

    def restrict(self, analysis, node, removable):
        classes = analysis.ids[node.inputs[0]]
        groups = node.layer.groups
        per = len(classes) // groups
        changed = False
        for g in range(groups):
            members = [int(c) for c in classes[g * per : (g + 1) * per]]
            inside = [c in removable for c in members]
            if any(inside) and not all(inside):
                for c in members:
                    if c in removable:
                        removable.discard(c)
                        analysis.note(c, f"partial group of {node.path}")
                changed = True
        return changed


class Couples(ChannelRule):
    """Args: `multiplies`: an exact zero operand makes the product 0."""

    kind = "couples"
    couples = True

    def __init__(self, multiplies=False, check=None, configure=None):
        super().__init__(check=check, configure=configure)
        self.multiplies = multiplies

    def channel_ids(self, analysis, node, ins, width, reason):
        full = [x for x in ins if len(x) == width]
        if not full:
            raise ValueError(
                f"slim: no operand of {analysis.where(node)} has the "
                f"output's {width} channels."
            )
        for x in ins:
            if len(x) != width:
                analysis.pin(x, f"broadcast operand of {node.path}")
        for x in full[1:]:
            for a, b in zip(full[0], x):
                analysis.union(int(a), int(b))
        return full[0]

    def constants(self, node, in_const, in_values, width):
        full = [c if len(c) == width else np.repeat(c, width) for c in in_const]
        const = np.logical_and.reduce(full)
        if self.multiplies:
            for c, v in zip(full, in_values):
                if v is not None:
                    zero = np.all(v.reshape(-1, v.shape[-1]) == 0, axis=0)
                    if zero.size != width:
                        zero = np.repeat(zero, width)
                    const |= c & zero
        return const


class Offsets(ChannelRule):
    kind = "offsets"

    def channel_ids(self, analysis, node, ins, width, reason):
        return np.concatenate(ins)

    def constants(self, node, in_const, in_values, width):
        return np.concatenate(in_const)


class Expands(ChannelRule):
    kind = "expands"

    def channel_ids(self, analysis, node, ins, width, reason):
        repeats = width // max(len(ins[0]), 1)
        if repeats * len(ins[0]) != width:
            raise ValueError(
                f"slim: cannot map channels through {analysis.where(node)}."
            )
        return np.tile(ins[0], repeats)

    def constants(self, node, in_const, in_values, width):
        return np.tile(in_const[0], width // len(in_const[0]))


class Boundary(ChannelRule):
    kind = "boundary"
    creates = True

    def channel_ids(self, analysis, node, ins, width, reason):
        for x in ins:
            analysis.pin(x, f"{reason} ({node.path})")
        ids = analysis.new_ids(width)
        analysis.pin(ids, f"{reason} ({node.path})")
        return ids

    def constants(self, node, in_const, in_values, width):
        return np.zeros(width, dtype=bool)


RULE_KINDS = {
    cls.kind: cls
    for cls in (
        Input,
        Produces,
        Passes,
        Transparent,
        Pins,
        NormalizesGroups,
        Couples,
        Offsets,
        Expands,
        Boundary,
    )
}

# Activations that act on each entry alone (so on each channel alone).
ELEMENTWISE_ACTIVATIONS = frozenset(
    (
        "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu",
        "silu", "swish", "sigmoid", "hard_sigmoid", "hard_silu",
        "hard_swish", "tanh", "softplus", "softsign", "exponential", "mish",
        "celu", "sparse_plus", "squareplus", "hard_tanh", "tanh_shrink",
        "soft_shrink", "hard_shrink", "threshold", "log_sigmoid",
    )
)  # fmt: skip


def mixing_activation(layer):
    """A reason string when `layer.activation` mixes channels, else None."""
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", str(activation))
    if name in ELEMENTWISE_ACTIVATIONS:
        return None
    return f"activation {name!r} mixes channels"
