"""The one per-layer table: what each layer class means to every consumer.

Every piece of per-layer knowledge in keras_serene is one field of one
`LayerEntry`, looked up through the class hierarchy (a subclass of `Dense`
is a Dense unless it has a row of its own), field by field, so an explicit
row for a subclass overrides only what it sets. The rows are declared in
`core/layer_entries.py`; Keras operations in a functional graph (`x + 3`,
`keras.ops.add(a, b)`) have rows keyed `"ops.<ClassName>"`.

Fields of a `LayerEntry` (each `None` when no row in the hierarchy sets it):

- `channel_rule`: a `core.channel_rules.ChannelRule`: how the slimmer moves
  channels (produces / passes / transparent / couples / offsets / expands /
  pins / normalizes_groups / boundary).
- `neuron_weights`: dict weight name -> `"last"`, `"second_last"`,
  `"depthwise"` or `"vector"` (`core/neurons.py`: how the weight lines up
  with the neuron vector).
- `linear_part`: `fn(layer, inputs)`, the output before bias and activation
  (`core/preactivations.py`; `slim` folds constants with it).
- `regularized_weights`: tuple of weight names the sensitivity decay and
  the masks act on.
- `neuron_axis(layer, rank)`: the axis of the layer's output that indexes
  its neurons (`layer.axis` for normalizations, 1 for `channels_first`,
  else the last).

Public API (for every package):

```python
from keras_serene.core import layer_table

entry = layer_table.entry_for(layer)     # None for an unknown class
entry.channel_rule, entry.neuron_weights, entry.linear_part
entry.regularized_weights                # ("kernel", "bias")
entry.neuron_axis(layer, rank=4)         # 3 (channels_last)
layer_table.regularized_weights(layer)   # entry's, or the historical names
layer_table.register_layer(              # one call serves every consumer
    MyDense, channel_rule=..., neuron_weights={"kernel": "last"},
    linear_part=fn, regularized_weights=("kernel",))
```

References:
    Torch-Pruning (Fang et al., CVPR 2023, https://arxiv.org/abs/2301.12900,
    `torch_pruning/pruner/function.py`: one registered class per layer
    type) and tensorflow/model-optimization `prune_registry.py`.
"""

import collections.abc

import keras

from keras_serene.core import channel_rules
from keras_serene.core import layer_entries

FIELDS = (
    "channel_rule",
    "neuron_weights",
    "linear_part",
    "regularized_weights",
    "axis_attribute",
)
NEURON_KINDS = ("last", "second_last", "depthwise", "vector")
# Names the decay acts on in a layer the table does not know (the set the
# optimizer used before the table existed).
DEFAULT_REGULARIZED = (
    "kernel",
    "bias",
    "depthwise_kernel",
    "pointwise_kernel",
    "gamma",
    "beta",
)

_ROWS = {}
_CACHE = {}


class LayerEntry:
    """The merged row of one layer class (see the module docstring)."""

    __slots__ = FIELDS + ("key",)

    def __init__(self, key, **fields):
        self.key = key
        for name in FIELDS:
            setattr(self, name, fields.get(name))

    def neuron_axis(self, layer, rank=None):
        """The axis of `layer`'s output indexing its neurons (non-negative
        when `rank` is given, else possibly -1)."""
        if self.axis_attribute is not None:
            axis = getattr(layer, self.axis_attribute)
            axis = axis[0] if isinstance(axis, (list, tuple)) else int(axis)
        elif getattr(layer, "data_format", None) == "channels_first" and (
            rank is None or rank > 2
        ):
            axis = 1
        else:
            axis = -1
        return axis if rank is None else axis % rank

    def __repr__(self):
        rule = self.channel_rule.kind if self.channel_rule else None
        return f"LayerEntry({self.key!r}, channel_rule={rule!r})"


def _key_of(cls):
    if issubclass(cls, keras.layers.Layer):
        return cls.__name__
    return f"ops.{cls.__name__}"


def _validate(key, fields):
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TypeError(
            f"register_layer: unknown fields {unknown} for {key!r}. "
            f"Allowed: {FIELDS}."
        )
    rule = fields.get("channel_rule")
    if rule is not None and not isinstance(rule, channel_rules.ChannelRule):
        raise TypeError(
            "register_layer: `channel_rule` must be a ChannelRule. "
            f"Received: channel_rule={rule!r}"
        )
    for name, kind in (fields.get("neuron_weights") or {}).items():
        if kind not in NEURON_KINDS:
            raise ValueError(
                f"register_layer: weight {name!r} of {key} has neuron kind "
                f"{kind!r}; expected one of {NEURON_KINDS}. Received: "
                f"neuron_weights={fields['neuron_weights']!r}"
            )
    fn = fields.get("linear_part")
    if fn is not None and not callable(fn):
        raise TypeError(
            f"register_layer: `linear_part` must be callable. Received: "
            f"linear_part={fn!r} for {key!r}."
        )


def register_layer(layer_class, **fields):
    """Registers (or updates) the row of a layer class: one call for all.

    Only the fields given change; the others keep their value (or, when
    this class has no row yet, are inherited from its parent classes).

    Example:

    >>> register_layer("MyScale", channel_rule=Passes({"scale": 0}))

    Args:
        layer_class: A layer class, or its class name (String; an operation
            as `"ops.<ClassName>"`).
        **fields: `channel_rule`, `neuron_weights`, `linear_part`,
            `regularized_weights`, `axis_attribute`.

    Returns:
        The class's own row (a `LayerEntry`).
    """
    if isinstance(layer_class, str):
        key = layer_class
    elif isinstance(layer_class, type):
        key = _key_of(layer_class)
    else:
        raise TypeError(
            "register_layer: `layer_class` must be a layer class or its "
            f"name. Received: layer_class={layer_class!r}"
        )
    _validate(key, fields)
    row = _ROWS.setdefault(key, LayerEntry(key))
    for name, value in fields.items():
        setattr(row, name, value)
    _CACHE.clear()
    return row


def unregister_field(key, field):
    """Clears one field of the row `key` (the row goes once empty)."""
    row = _ROWS[key]
    setattr(row, field, None)
    if all(getattr(row, f) is None for f in FIELDS):
        del _ROWS[key]
    _CACHE.clear()


def _merged(cls):
    entry = _CACHE.get(cls)
    if entry is None:
        keys = [_key_of(c) for c in cls.__mro__ if c is not object]
        rows = [_ROWS[k] for k in keys if k in _ROWS]
        if not rows:
            entry = False
        else:
            fields = {}
            for name in FIELDS:
                for row in rows:
                    if getattr(row, name) is not None:
                        fields[name] = getattr(row, name)
                        break
            entry = LayerEntry(rows[0].key, **fields)
        _CACHE[cls] = entry
    return entry or None


def entry_for(layer):
    """The `LayerEntry` of a layer or operation, or `None` if unknown."""
    return _merged(type(layer))


def regularized_weights(layer):
    """Weight names of `layer` the decay acts on (the entry's, or the
    historical name set for a layer class without a row)."""
    entry = entry_for(layer)
    if entry is None or entry.regularized_weights is None:
        return DEFAULT_REGULARIZED
    return entry.regularized_weights


class FieldView(collections.abc.MutableMapping):
    """One field of the table as a dict keyed by class name (the old
    `NEURON_WEIGHTS`, `LINEAR_PARTS` and `RULES` names read and write it)."""

    def __init__(self, field):
        self.field = field

    def __getitem__(self, key):
        row = _ROWS.get(key)
        value = None if row is None else getattr(row, self.field)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        register_layer(key, **{self.field: value})

    def __delitem__(self, key):
        self[key]  # KeyError when absent
        unregister_field(key, self.field)

    def __iter__(self):
        keys = [k for k, r in _ROWS.items() if getattr(r, self.field)]
        return iter(keys)

    def __len__(self):
        return sum(1 for _ in self)

    def __repr__(self):
        return f"FieldView({self.field!r}, {sorted(self)})"


for _key, _fields in layer_entries.ROWS.items():
    register_layer(_key, **{k: v for k, v in _fields.items() if v})
