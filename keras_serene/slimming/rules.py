"""The slimmer's one rules table: how channels flow through each layer class.

Every Keras layer class the slimmer accepts has one `ChannelRule` here, keyed
by class name. A rule has a *kind*:

- `"input"`: an `InputLayer`; its channels are the model's input: pinned.
- `"produces"`: Dense and convolutions. The output channels are new (one per
  unit / filter, owned by `out_weights`); the input channels are *consumed*
  (`in_weights` rows). A consumer is where the constant output of a removed
  channel is folded into the bias. `sink` says when that is exact: `"any"`
  (Dense on flat inputs), `"uniform"` (valid convolutions: the channel must be
  the same constant at every position) or `"zero"` (padded convolutions: the
  channel must be exactly zero).
- `"passes"`: one-to-one per-channel layers with per-channel weights
  (`channel_weights`: BatchNormalization, DepthwiseConv2D, PReLU...). When
  `constant_weight` is all-zero for a channel (BN `gamma`, a depthwise filter)
  that channel's output is a constant whatever the input.
- `"transparent"`: per-channel, no weights (activations, pooling, padding,
  dropout, upsampling, cropping, identity...).
- `"couples"`: elementwise merges (Add, Subtract, Multiply, Average, Maximum,
  Minimum): operands share their channels. An operand with one channel that is
  broadcast (a spatial gate) is pinned; a `(1, 1, C)` squeeze-and-excitation
  gate couples like any operand.
- `"offsets"`: Concatenate on the channel axis (operand k at an offset).
- `"expands"`: Flatten (and Reshape to rank 2): channel c owns features
  c, c + C, c + 2C, ...
- `"pins"`: channel-mixing normalisations (LayerNormalization over channels,
  Softmax): their channels can never be removed exactly.
- `"normalizes_groups"`: GroupNormalization: a channel goes only with its
  whole group.
- `"boundary"`: the channel flow stops here (a Reshape that moves the channel
  axis): input and output channels are pinned.

A per-layer `check` can downgrade a rule for one layer instance (a grouped
convolution, `channels_first`, a non-elementwise `Activation`...): it returns
`(kind, reason)` and the slimmer pins the channels with that reason.

Registering a custom layer takes one line, as Torch-Pruning's table::

    ks.slimming.register_rule("MyScale", "passes", channel_weights={"scale": 0})

References:
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
    https://arxiv.org/abs/2301.12900 (Torch-Pruning's dependency graph and its
    `torch_pruning/pruner/function.py` table, which this table follows).
"""

import numpy as np

KINDS = (
    "input",
    "produces",
    "passes",
    "transparent",
    "couples",
    "offsets",
    "expands",
    "pins",
    "normalizes_groups",
    "boundary",
)

# Activations that act on each entry alone (so on each channel alone).
ELEMENTWISE_ACTIVATIONS = frozenset(
    (
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "sigmoid",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "tanh",
        "softplus",
        "softsign",
        "exponential",
        "mish",
        "celu",
        "sparse_plus",
        "squareplus",
        "hard_tanh",
        "tanh_shrink",
        "soft_shrink",
        "hard_shrink",
        "threshold",
        "log_sigmoid",
    )
)


class ChannelRule:
    """How one layer class moves, owns and consumes channels.

    Args:
        kind: String. One of `KINDS`.
        in_weights: Dict. For `"produces"`: weight name -> axis holding the
            input channels. Defaults to `None` (no weights).
        out_weights: Dict. For `"produces"`: weight name -> axis holding the
            output channels (the bias included). Defaults to `None`.
        channel_weights: Dict. For `"passes"` / `"normalizes_groups"`: weight
            name -> per-channel axis. Defaults to `None`.
        size_key: String. For `"produces"`: the config key holding the number
            of output channels (`"units"`, `"filters"`). Defaults to `None`.
        constant_weight: String. For `"passes"`: the weight whose all-zero
            channel slice makes that channel's output constant. Defaults to
            `None`.
        sink: Callable `(layer, input_shape) -> "any" | "uniform" | "zero"`.
            For `"produces"`: when a constant input channel can be folded
            into the bias exactly. Defaults to `None`.
        check: Callable `(layer, input_shapes, output_shapes) -> None | (kind,
            reason)`. Overrides the kind for an unusual layer instance.
            Defaults to `None`.
        configure: Callable `(config, keep_in, keep_out) -> config` updating
            a layer config for the kept channels (boolean masks over the
            input and output channel axis). Defaults to `None`.
    """

    def __init__(
        self,
        kind,
        in_weights=None,
        out_weights=None,
        channel_weights=None,
        size_key=None,
        constant_weight=None,
        sink=None,
        check=None,
        configure=None,
    ):
        if kind not in KINDS:
            raise ValueError(
                f"ChannelRule: unknown kind={kind!r}. Expected one of {KINDS}."
            )
        if kind == "produces" and size_key is None:
            raise ValueError(
                "ChannelRule: kind='produces' needs `size_key` (the config "
                f"key of the output width). Received size_key={size_key!r}."
            )
        self.kind = kind
        self.in_weights = dict(in_weights or {})
        self.out_weights = dict(out_weights or {})
        self.channel_weights = dict(channel_weights or {})
        self.size_key = size_key
        self.constant_weight = constant_weight
        self.sink = sink
        self.check = check
        self.configure = configure

    def __repr__(self):
        return f"ChannelRule(kind={self.kind!r})"


# ---------------------------------------------------------------------------
# Per-layer checks and sink modes.


def _channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        return ("boundary", f"data_format={fmt!r} (only channels_last)")
    return None


def _activation_check(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", str(activation))
    if name not in ELEMENTWISE_ACTIVATIONS:
        return ("pins", f"activation {name!r} mixes channels")
    return None


def _check_produces(layer, input_shapes, output_shapes):
    result = _channels_last(layer)
    if result is None and getattr(layer, "groups", 1) != 1:
        result = ("boundary", f"grouped convolution (groups={layer.groups})")
    if result is None and getattr(layer, "depth_multiplier", 1) != 1:
        result = (
            "boundary",
            f"depth_multiplier={layer.depth_multiplier} (only 1)",
        )
    if result is None:
        result = _activation_check(layer)
    return result


def _check_depthwise(layer, input_shapes, output_shapes):
    result = _channels_last(layer)
    if result is None and layer.depth_multiplier != 1:
        result = (
            "boundary",
            f"depth_multiplier={layer.depth_multiplier} (only 1)",
        )
    if result is None:
        result = _activation_check(layer)
    return result


def _last_axis(layer, rank):
    axis = getattr(layer, "axis", -1)
    if isinstance(axis, (list, tuple)):
        axes = [a % rank for a in axis]
        return axes == [rank - 1]
    return axis % rank == rank - 1


def _check_channel_axis(layer, input_shapes, output_shapes):
    if not _last_axis(layer, len(input_shapes[0])):
        return ("boundary", f"axis={layer.axis} is not the channel axis")
    return None


def _check_activation_layer(layer, input_shapes, output_shapes):
    return _activation_check(layer)


def _check_softmax(layer, input_shapes, output_shapes):
    return ("pins", "Softmax normalizes across its axis")


def _check_layer_norm(layer, input_shapes, output_shapes):
    return ("pins", "LayerNormalization normalizes across channels")


def _check_prelu(layer, input_shapes, output_shapes):
    rank = len(input_shapes[0])
    shared = layer.shared_axes or []
    if (rank - 1) in [a % rank for a in shared]:
        return ("transparent", None)
    return None


def _check_reshape(layer, input_shapes, output_shapes):
    in_shape, out_shape = input_shapes[0], output_shapes[0]
    if len(out_shape) == 2 and len(in_shape) > 2:
        return ("expands", None)
    if in_shape[-1] is not None and in_shape[-1] == out_shape[-1]:
        return ("transparent", None)
    return ("boundary", "Reshape does not keep the channel axis")


def _check_concatenate(layer, input_shapes, output_shapes):
    rank = len(output_shapes[0])
    if layer.axis % rank != rank - 1:
        return ("couples", None)
    return None


def _check_rescaling(layer, input_shapes, output_shapes):
    per_channel = any(
        np.ndim(v) > 0 and np.size(v) > 1 for v in (layer.scale, layer.offset)
    )
    return ("passes", None) if per_channel else ("transparent", None)


def _check_normalization(layer, input_shapes, output_shapes):
    rank = len(input_shapes[0])
    axis = layer.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if [a % rank for a in axes] != [rank - 1]:
        return ("boundary", f"axis={layer.axis} is not the channel axis")
    return None


def _sink_dense(layer, input_shape):
    return "any" if len(input_shape) == 2 else "uniform"


def _sink_conv(layer, input_shape):
    return "uniform" if layer.padding == "valid" else "zero"


def _sink_transpose(layer, input_shape):
    return "zero"


# ---------------------------------------------------------------------------
# Config updates for the kept channels.


def _configure_size(key):
    def configure(config, keep_in, keep_out):
        config[key] = int(np.sum(keep_out))
        return config

    return configure


def _configure_reshape(config, keep_in, keep_out):
    target = list(config["target_shape"])
    if len(target) > 1:
        target[-1] = int(np.sum(keep_out))
    else:
        target[0] = -1
    config["target_shape"] = tuple(target)
    return config


def _configure_group_norm(config, keep_in, keep_out):
    size = keep_in.size
    per_group = size // config["groups"]
    config["groups"] = int(np.sum(keep_in)) // per_group
    return config


def _slice_config_value(value, keep):
    if value is None or np.ndim(value) == 0 or np.size(value) == 1:
        return value
    array = np.asarray(value)
    return np.compress(keep, array, axis=-1).tolist()


def _configure_rescaling(config, keep_in, keep_out):
    config["scale"] = _slice_config_value(config.get("scale"), keep_in)
    config["offset"] = _slice_config_value(config.get("offset"), keep_in)
    return config


def _configure_normalization(config, keep_in, keep_out):
    for key in ("mean", "variance"):
        if config.get(key) is not None:
            config[key] = _slice_config_value(config[key], keep_in)
    return config


# ---------------------------------------------------------------------------
# The table.

_DENSE = ChannelRule(
    "produces",
    in_weights={"kernel": 0},
    out_weights={"kernel": -1, "bias": 0},
    size_key="units",
    sink=_sink_dense,
    check=_check_produces,
    configure=_configure_size("units"),
)
_CONV = ChannelRule(
    "produces",
    in_weights={"kernel": -2},
    out_weights={"kernel": -1, "bias": 0},
    size_key="filters",
    sink=_sink_conv,
    check=_check_produces,
    configure=_configure_size("filters"),
)
_CONV_TRANSPOSE = ChannelRule(
    "produces",
    in_weights={"kernel": -1},
    out_weights={"kernel": -2, "bias": 0},
    size_key="filters",
    sink=_sink_transpose,
    check=_check_produces,
    configure=_configure_size("filters"),
)
_SEPARABLE = ChannelRule(
    "produces",
    in_weights={"depthwise_kernel": -2, "pointwise_kernel": -2},
    out_weights={"pointwise_kernel": -1, "bias": 0},
    size_key="filters",
    sink=_sink_conv,
    check=_check_produces,
    configure=_configure_size("filters"),
)
_DEPTHWISE = ChannelRule(
    "passes",
    channel_weights={"kernel": -2, "bias": 0},
    constant_weight="kernel",
    check=_check_depthwise,
)
_BATCH_NORM = ChannelRule(
    "passes",
    channel_weights={
        "gamma": 0,
        "beta": 0,
        "moving_mean": 0,
        "moving_variance": 0,
    },
    constant_weight="gamma",
    check=_check_channel_axis,
)
_TRANSPARENT = ChannelRule("transparent")
_COUPLES = ChannelRule("couples")

RULES = {
    "InputLayer": ChannelRule("input"),
    "Dense": _DENSE,
    "Conv1D": _CONV,
    "Conv2D": _CONV,
    "Conv3D": _CONV,
    "Conv1DTranspose": _CONV_TRANSPOSE,
    "Conv2DTranspose": _CONV_TRANSPOSE,
    "Conv3DTranspose": _CONV_TRANSPOSE,
    "SeparableConv1D": _SEPARABLE,
    "SeparableConv2D": _SEPARABLE,
    "DepthwiseConv1D": _DEPTHWISE,
    "DepthwiseConv2D": _DEPTHWISE,
    "BatchNormalization": _BATCH_NORM,
    "LayerNormalization": ChannelRule("pins", check=_check_layer_norm),
    "GroupNormalization": ChannelRule(
        "normalizes_groups",
        channel_weights={"gamma": 0, "beta": 0},
        check=_check_channel_axis,
        configure=_configure_group_norm,
    ),
    "Activation": ChannelRule("transparent", check=_check_activation_layer),
    "ReLU": _TRANSPARENT,
    "LeakyReLU": _TRANSPARENT,
    "ELU": _TRANSPARENT,
    "PReLU": ChannelRule(
        "passes", channel_weights={"alpha": -1}, check=_check_prelu
    ),
    "Softmax": ChannelRule("pins", check=_check_softmax),
    "Dropout": _TRANSPARENT,
    "SpatialDropout1D": _TRANSPARENT,
    "SpatialDropout2D": _TRANSPARENT,
    "SpatialDropout3D": _TRANSPARENT,
    "GaussianNoise": _TRANSPARENT,
    "GaussianDropout": _TRANSPARENT,
    "AlphaDropout": _TRANSPARENT,
    "Identity": _TRANSPARENT,
    "MaxPooling1D": _TRANSPARENT,
    "MaxPooling2D": _TRANSPARENT,
    "MaxPooling3D": _TRANSPARENT,
    "AveragePooling1D": _TRANSPARENT,
    "AveragePooling2D": _TRANSPARENT,
    "AveragePooling3D": _TRANSPARENT,
    "GlobalMaxPooling1D": _TRANSPARENT,
    "GlobalMaxPooling2D": _TRANSPARENT,
    "GlobalMaxPooling3D": _TRANSPARENT,
    "GlobalAveragePooling1D": _TRANSPARENT,
    "GlobalAveragePooling2D": _TRANSPARENT,
    "GlobalAveragePooling3D": _TRANSPARENT,
    "ZeroPadding1D": _TRANSPARENT,
    "ZeroPadding2D": _TRANSPARENT,
    "ZeroPadding3D": _TRANSPARENT,
    "Cropping1D": _TRANSPARENT,
    "Cropping2D": _TRANSPARENT,
    "Cropping3D": _TRANSPARENT,
    "UpSampling1D": _TRANSPARENT,
    "UpSampling2D": _TRANSPARENT,
    "UpSampling3D": _TRANSPARENT,
    "Flatten": ChannelRule("expands"),
    "Reshape": ChannelRule(
        "transparent", check=_check_reshape, configure=_configure_reshape
    ),
    "Add": _COUPLES,
    "Subtract": _COUPLES,
    "Multiply": _COUPLES,
    "Average": _COUPLES,
    "Maximum": _COUPLES,
    "Minimum": _COUPLES,
    "Concatenate": ChannelRule("offsets", check=_check_concatenate),
    "Rescaling": ChannelRule(
        "transparent", check=_check_rescaling, configure=_configure_rescaling
    ),
    "Normalization": ChannelRule(
        "passes",
        channel_weights={"mean": 0, "variance": 0},
        check=_check_normalization,
        configure=_configure_normalization,
    ),
}


def register_rule(layer_class, kind, **kwargs):
    """Registers how a layer class moves channels, for `ks.slim`.

    One line per custom layer, as Torch-Pruning's table: a per-channel layer
    with a weight `scale` of shape `(C,)` is
    `register_rule("MyScale", "passes", channel_weights={"scale": 0})`; a
    weightless per-channel layer is `register_rule("MyAct", "transparent")`.

    Example:

    >>> register_rule("MyAct", "transparent")
    ChannelRule(kind='transparent')

    Args:
        layer_class: A layer class or its class name (String).
        kind: String or `ChannelRule`. One of `KINDS`, or a full rule.
        **kwargs: the other `ChannelRule` arguments.

    Returns:
        The registered `ChannelRule`.
    """
    name = layer_class if isinstance(layer_class, str) else None
    if name is None:
        name = getattr(layer_class, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(
            "register_rule: `layer_class` must be a layer class or its name. "
            f"Received layer_class={layer_class!r}."
        )
    if isinstance(kind, ChannelRule):
        if kwargs:
            raise ValueError(
                "register_rule: pass either a ChannelRule or a kind with "
                f"arguments, not both. Received kwargs={sorted(kwargs)}."
            )
        rule = kind
    else:
        rule = ChannelRule(kind, **kwargs)
    RULES[name] = rule
    return rule


def rule_for(layer, path):
    """Returns the `ChannelRule` of `layer` or raises a helpful TypeError."""
    name = type(layer).__name__
    rule = RULES.get(name)
    if rule is None:
        raise TypeError(
            f"slim: layer {path!r} of class {name} has no slimming rule. "
            "Register how it moves channels with one line, e.g. "
            f'`keras_serene.slimming.register_rule("{name}", "transparent")` '
            "for a per-channel layer without weights, or "
            f'`register_rule("{name}", "passes", channel_weights={{"w": 0}})` '
            "for one with per-channel weights."
        )
    return rule
