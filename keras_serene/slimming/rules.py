"""The slimmer's view of the layer table: channel rules and `register_rule`.

How channels flow through each layer class is the `channel_rule` field of
the one layer table (`keras_serene.core.layer_table`, rows declared in
`core/layer_entries.py`), looked up through the class hierarchy: a subclass
of `Dense` slims like a Dense. The rule kinds are classes with one method
per behaviour (`core/channel_rules.py`): produces, passes, transparent,
couples, offsets, expands, pins, normalizes_groups, boundary. Keras
operations in a functional graph (`x + 3`, `keras.ops.add(a, b)`) have rows
keyed `"ops.<ClassName>"`; one the table does not know stops the channel
flow (its channels are kept, and the plan says why).

Registering a custom layer takes one line, as Torch-Pruning's table::

    ks.slimming.register_rule("MyScale", "passes", channel_weights={"scale": 0})

References:
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
    https://arxiv.org/abs/2301.12900 (Torch-Pruning's dependency graph and its
    `torch_pruning/pruner/function.py` table, which this table follows).
"""

import keras

from keras_serene.core import layer_table
from keras_serene.core.channel_rules import RULE_KINDS
from keras_serene.core.channel_rules import Boundary
from keras_serene.core.channel_rules import ChannelRule
from keras_serene.core.channel_rules import Input

KINDS = tuple(RULE_KINDS)

#: Class name -> `ChannelRule`: the table's `channel_rule` field as a dict.
RULES = layer_table.FieldView("channel_rule")

_INPUT = Input()
_TABLE_FIELDS = ("neuron_weights", "linear_part", "regularized_weights")


def register_rule(layer_class, kind, **kwargs):
    """Registers how a layer class moves channels, for `ks.slim`.

    One line per custom layer, as Torch-Pruning's table: a per-channel layer
    with a weight `scale` of shape `(C,)` is
    `register_rule("MyScale", "passes", channel_weights={"scale": 0})`; a
    weightless per-channel layer is `register_rule("MyAct", "transparent")`.
    The same call may set the class's other layer-table fields
    (`neuron_weights`, `linear_part`, `regularized_weights`), so one
    registration serves every consumer.

    Example:

    >>> register_rule("MyAct", "transparent")
    Transparent(kind='transparent')

    Args:
        layer_class: A layer class or its class name (String).
        kind: String or `ChannelRule`. One of `KINDS`, or a full rule.
        **kwargs: the rule class's arguments (`channel_weights`,
            `constant_weight`, `in_weights`, `out_weights`, `size_key`,
            `sink`, `check`, `configure`...) and the table fields above.

    Returns:
        The registered `ChannelRule`.
    """
    fields = {k: kwargs.pop(k) for k in _TABLE_FIELDS if k in kwargs}
    if isinstance(kind, ChannelRule):
        if kwargs:
            raise ValueError(
                "register_rule: pass either a ChannelRule or a kind with "
                f"arguments, not both. Received: kwargs={sorted(kwargs)}"
            )
        rule = kind
    elif kind in RULE_KINDS:
        rule = RULE_KINDS[kind](**kwargs)
    else:
        raise ValueError(
            f"register_rule: `kind` must be one of {KINDS} or a "
            f"ChannelRule. Received: kind={kind!r}"
        )
    if not isinstance(layer_class, (str, type)):
        raise TypeError(
            "register_rule: `layer_class` must be a layer class or its name. "
            f"Received: layer_class={layer_class!r}"
        )
    layer_table.register_layer(layer_class, channel_rule=rule, **fields)
    return rule


def rule_for(layer, path):
    """The `ChannelRule` of `layer` (through its class hierarchy).

    A layer class without a rule raises a TypeError saying how to register
    one; an operation without one stops the channel flow (`Boundary`).
    """
    if layer is None:  # a Sequential model's input
        return _INPUT
    entry = layer_table.entry_for(layer)
    if entry is not None and entry.channel_rule is not None:
        return entry.channel_rule
    name = type(layer).__name__
    if not isinstance(layer, keras.layers.Layer):
        return _unknown_operation(name)
    raise TypeError(
        f"slim: layer {path!r} of class {name} has no slimming rule. "
        "Register how it moves channels with one line, e.g. "
        f'`keras_serene.slimming.register_rule("{name}", "transparent")` '
        "for a per-channel layer without weights, or "
        f'`register_rule("{name}", "passes", channel_weights={{"w": 0}})` '
        "for one with per-channel weights."
    )


_UNKNOWN_OPS = {}


def _unknown_operation(name):
    rule = _UNKNOWN_OPS.get(name)
    if rule is None:
        reason = (
            f"keras.ops {name} is not in the layer table (register it with "
            f'register_rule("ops.{name}", ...))'
        )
        rule = _UNKNOWN_OPS[name] = _Stop(reason)
    return rule


class _Stop(Boundary):
    """A Boundary that carries its own reason (an unknown operation)."""

    def __init__(self, reason):
        super().__init__()
        self.reason = reason

    def resolve(self, layer, in_shapes, out_shapes):
        return self, self.reason
