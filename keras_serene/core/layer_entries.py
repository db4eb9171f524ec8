"""The rows of the layer table: what each Keras layer class means to us.

Declarative data read by `core/layer_table.py` (see its docstring for the
API): one row per layer class (or Keras operation, keyed `"ops.<Class>"`)
with its channel rule (`core/channel_rules.py`), neuron weights, linear part
and regularized weights. Helper functions (per-instance checks, sink modes,
config updates, linear parts) come first, the rows last.

References:
    Torch-Pruning (Fang et al., CVPR 2023, https://arxiv.org/abs/2301.12900,
    `torch_pruning/pruner/function.py`) and tfmot's
    `sparsity/keras/prune_registry.py`: one declarative per-layer table.
"""

import numpy as np
from keras import ops

from keras_serene.core import channel_rules as cr

# ---------------------------------------------------------------------------
# Per-instance checks (downgrade a rule for one unusual layer).


def _channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        return ("boundary", f"data_format={fmt!r} (only channels_last)")
    return None


def _configure_grouped_depthwise(config, keep_in, keep_out):
    config["filters"] = config["groups"] = int(np.sum(keep_out))
    return config


# Conv(groups == filters == input channels) is a depthwise convolution
# (ConvNeXt's): channel c of the output depends on channel c only.
_GROUPED_DEPTHWISE = cr.Passes(
    channel_weights={"kernel": -1, "bias": 0},
    constant_weight="kernel",
    configure=_configure_grouped_depthwise,
)


def check_produces(layer, input_shapes, output_shapes):
    result = _channels_last(layer)
    groups = getattr(layer, "groups", 1)
    if result is None and groups != 1:
        if groups == layer.filters == input_shapes[0][-1]:
            if cr.mixing_activation(layer):
                return ("pins", cr.mixing_activation(layer))
            return (_GROUPED_DEPTHWISE, None)
        result = ("boundary", f"grouped convolution (groups={groups})")
    if result is None and getattr(layer, "depth_multiplier", 1) != 1:
        result = ("boundary", f"depth_multiplier={layer.depth_multiplier}")
    return result


def _check_depthwise(layer, input_shapes, output_shapes):
    result = check_produces(layer, input_shapes, output_shapes)
    if result is None and cr.mixing_activation(layer):
        result = ("pins", cr.mixing_activation(layer))
    return result


def _axes(layer, rank):
    axis = layer.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return [a % rank for a in axes]


def _check_channel_axis(layer, input_shapes, output_shapes):
    rank = len(input_shapes[0])
    if _axes(layer, rank) != [rank - 1]:
        return ("boundary", f"axis={layer.axis} is not the channel axis")
    return None


def _check_activation_layer(layer, input_shapes, output_shapes):
    reason = cr.mixing_activation(layer)
    return None if reason is None else ("pins", reason)


def _check_softmax(layer, input_shapes, output_shapes):
    return ("pins", "Softmax normalizes across its axis")


def _check_layer_norm(layer, input_shapes, output_shapes):
    return ("pins", "LayerNormalization normalizes across channels")


def _check_prelu(layer, input_shapes, output_shapes):
    rank = len(input_shapes[0])
    if (rank - 1) in [a % rank for a in layer.shared_axes or []]:
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


def _check_pad(op, input_shapes, output_shapes):
    config = op.get_config()
    if config.get("mode", "constant") != "constant":
        return ("boundary", f"ops.pad mode={config['mode']!r}")
    if list(config["pad_width"][-1]) != [0, 0]:
        return ("boundary", "ops.pad pads the channel axis")
    return None


def _check_op_concatenate(op, input_shapes, output_shapes):
    rank = len(output_shapes[0])
    if op.get_config().get("axis", 0) % rank != rank - 1:
        return ("boundary", "ops.concatenate off the channel axis")
    return None


def _sink_dense(layer, input_shape):
    return "any" if len(input_shape) == 2 else "uniform"


def _sink_conv(layer, input_shape):
    return "uniform" if layer.padding == "valid" else "zero"


def _sink_transpose(layer, input_shape):
    return "zero"


# ---------------------------------------------------------------------------
# Config updates for the kept channels.


def _configure_key(key):
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
    per_group = keep_in.size // config["groups"]
    config["groups"] = int(np.sum(keep_in)) // per_group
    return config


def _slice_config_value(value, keep):
    if value is None or np.ndim(value) == 0 or np.size(value) == 1:
        return value
    return np.compress(keep, np.asarray(value), axis=-1).tolist()


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
# Linear parts: the layer's output before its bias and activation.


def _conv_core(layer, inputs):
    padding = layer.padding
    if padding == "causal":  # Conv1D: left-pad, then a valid convolution.
        left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
        pad = [[0, 0], [left, 0], [0, 0]]
        if layer.data_format == "channels_first":
            pad = [[0, 0], [0, 0], [left, 0]]
        inputs = ops.pad(inputs, pad)
        padding = "valid"
    return ops.conv(
        inputs,
        layer.kernel,
        strides=list(layer.strides),
        padding=padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _depthwise_core(layer, inputs):
    return ops.depthwise_conv(
        inputs,
        layer.kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _separable_core(layer, inputs):
    return ops.separable_conv(
        inputs,
        layer.depthwise_kernel,
        layer.pointwise_kernel,
        strides=layer.strides,
        padding=layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _transpose_core(layer, inputs):
    return ops.conv_transpose(
        inputs,
        layer.kernel,
        strides=list(layer.strides),
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _dense_core(layer, inputs):
    return ops.matmul(inputs, layer.kernel)


# ---------------------------------------------------------------------------
# The rows. Keys: `channel_rule`, `neuron_weights` (weight -> "last" |
# "second_last" | "depthwise" | "vector"), `linear_part`,
# `regularized_weights`, `axis_attribute` (the config attribute holding the
# neuron axis: "axis" for normalizations, else `data_format` decides).

_KERNEL_BIAS = ("kernel", "bias")
_TRANSPARENT = cr.Transparent()
_COUPLES = cr.Couples()
_MULTIPLIES = cr.Couples(multiplies=True)


def _conv(size_key="filters", in_axis=-2, out_axis=-1, sink=_sink_conv):
    return cr.Produces(
        in_weights={"kernel": in_axis},
        out_weights={"kernel": out_axis, "bias": 0},
        size_key=size_key,
        sink=sink,
        check=check_produces,
    )


_DENSE_RULE = _conv("units", 0, -1, _sink_dense)
_CONV_RULE = _conv()
_TRANSPOSE_RULE = _conv(in_axis=-1, out_axis=-2, sink=_sink_transpose)
_SEPARABLE_RULE = cr.Produces(
    in_weights={"depthwise_kernel": -2, "pointwise_kernel": -2},
    out_weights={"pointwise_kernel": -1, "bias": 0},
    size_key="filters",
    sink=_sink_conv,
    check=check_produces,
)
_DEPTHWISE_RULE = cr.Passes(
    channel_weights={"kernel": -2, "bias": 0},
    constant_weight="kernel",
    check=_check_depthwise,
)


def _row(rule, neurons=None, linear=None, regularized=(), axis=None):
    return {
        "channel_rule": rule,
        "neuron_weights": neurons,
        "linear_part": linear,
        "regularized_weights": tuple(regularized),
        "axis_attribute": axis,
    }


_NEURONS_LAST = {"kernel": "last", "bias": "vector"}
_NEURONS_T = {"kernel": "second_last", "bias": "vector"}
_NEURONS_DW = {"kernel": "depthwise", "bias": "vector"}
_NEURONS_SEP = {"pointwise_kernel": "last", "bias": "vector"}
_SEP_REG = ("depthwise_kernel", "pointwise_kernel", "bias")
_BN_RULE = cr.Passes(
    channel_weights={
        "gamma": 0, "beta": 0, "moving_mean": 0, "moving_variance": 0,
    },
    constant_weight="gamma",
    shift_weight="moving_mean",
    check=_check_channel_axis,
)  # fmt: skip

ROWS = {
    "InputLayer": _row(cr.Input()),
    "Dense": _row(_DENSE_RULE, _NEURONS_LAST, _dense_core, _KERNEL_BIAS),
    "EinsumDense": _row(None, None, None, _KERNEL_BIAS),
    "BatchNormalization": _row(
        _BN_RULE, {"gamma": "vector", "beta": "vector"}, None,
        ("gamma", "beta"), "axis",
    ),
    # sigmoid(gamma) is never 0: gamma == 0 does not make a channel constant.
    "BoundedBatchNormalization": _row(
        cr.Passes(
            channel_weights=dict(_BN_RULE.channel_weights),
            shift_weight="moving_mean",
            check=_check_channel_axis,
        )
    ),
    "LayerNormalization": _row(
        cr.Pins(check=_check_layer_norm), None, None, ("gamma", "beta"),
        "axis",
    ),
    "GroupNormalization": _row(
        cr.NormalizesGroups(
            channel_weights={"gamma": 0, "beta": 0},
            check=_check_channel_axis,
            configure=_configure_group_norm,
        ),
        None, None, ("gamma", "beta"), "axis",
    ),
    "Activation": _row(cr.Transparent(check=_check_activation_layer)),
    "PReLU": _row(cr.Passes(channel_weights={"alpha": -1}, check=_check_prelu)),
    "Softmax": _row(cr.Pins(check=_check_softmax)),
    "Flatten": _row(cr.Expands()),
    "Reshape": _row(
        cr.Transparent(check=_check_reshape, configure=_configure_reshape)
    ),
    "Multiply": _row(_MULTIPLIES),
    "Concatenate": _row(cr.Offsets(check=_check_concatenate)),
    "Rescaling": _row(
        cr.Transparent(check=_check_rescaling, configure=_configure_rescaling)
    ),
    "Normalization": _row(
        cr.Passes(
            channel_weights={"mean": 0, "variance": 0},
            check=_check_channel_axis,
            configure=_configure_normalization,
        )
    ),
    # Custom layers shipped inside keras.applications.
    "LayerScale": _row(  # ConvNeXt: x * gamma, gamma of shape (C,)
        cr.Passes(
            channel_weights={"variable": 0},
            constant_weight="variable",
            configure=_configure_key("projection_dim"),
        )
    ),
    "CustomScaleLayer": _row(_COUPLES),  # InceptionResNetV2: a + b * scale
}  # fmt: skip

for _rank in ("1D", "2D", "3D"):
    ROWS[f"Conv{_rank}"] = _row(
        _CONV_RULE, _NEURONS_LAST, _conv_core, _KERNEL_BIAS
    )
    ROWS[f"Conv{_rank}Transpose"] = _row(
        _TRANSPOSE_RULE, _NEURONS_T, _transpose_core, _KERNEL_BIAS
    )
    for _name in (
        "SpatialDropout", "MaxPooling", "AveragePooling", "GlobalMaxPooling",
        "GlobalAveragePooling", "ZeroPadding", "Cropping", "UpSampling",
    ):  # fmt: skip
        ROWS[f"{_name}{_rank}"] = _row(_TRANSPARENT)
for _rank in ("1D", "2D"):
    ROWS[f"SeparableConv{_rank}"] = _row(
        _SEPARABLE_RULE, _NEURONS_SEP, _separable_core, _SEP_REG
    )
    ROWS[f"DepthwiseConv{_rank}"] = _row(
        _DEPTHWISE_RULE, _NEURONS_DW, _depthwise_core, _KERNEL_BIAS
    )
for _name in (
    "ReLU", "LeakyReLU", "ELU", "Dropout", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "Identity",
):  # fmt: skip
    ROWS[_name] = _row(_TRANSPARENT)
for _name in ("Add", "Subtract", "Average", "Maximum", "Minimum"):
    ROWS[_name] = _row(_COUPLES)

# Keras operations applied to symbolic tensors (`x + 3`, `ops.add(a, b)`).
# An operation the table does not know stops the channel flow (Boundary).
for _name in ("Add", "Subtract", "Maximum", "Minimum", "Divide", "TrueDivide"):
    ROWS[f"ops.{_name}"] = _row(_COUPLES)
ROWS["ops.Multiply"] = _row(_MULTIPLIES)
for _name in (
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu",
    "Elu", "Selu", "LeakyRelu", "Softplus", "Tanh", "Exp", "Negative",
    "Absolute", "Square", "Clip", "Cast", "Erf", "StopGradient",
):  # fmt: skip
    ROWS[f"ops.{_name}"] = _row(_TRANSPARENT)
ROWS["ops.Pad"] = _row(cr.Transparent(check=_check_pad))
ROWS["ops.Concatenate"] = _row(cr.Offsets(check=_check_op_concatenate))
ROWS["ops.Softmax"] = _row(cr.Pins(check=_check_softmax))
