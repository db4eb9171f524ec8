"""The Keras functional graph of a model, read from its config (no tracing).

`read_graph(model)` walks `model.get_config()` (each layer's `inbound_nodes`
and their `keras_history`) and returns a `LayerGraph`: one `LayerNode` per
layer call in topological order (Keras *operations* applied to symbolic
tensors, `x + 3` or `keras.ops.add(a, b)`, are nodes like layers: they are
in `model.operations`, not in `model.layers`), every tensor named by an id
string, its static shape, its consumers, and a `Scope` tree that mirrors nested
functional / Sequential models so the slimmed model can be rebuilt with the
same nesting. Nested models are inlined for the channel analysis: the inner
model's input tensors are aliases of the outer tensors fed to it.

References:
    Keras 3 functional API serialisation (`Functional.get_config`: layers,
    inbound nodes, `keras_history = [layer, node_index, tensor_index]`).
"""

import dataclasses

import keras
import numpy as np

_KERAS_TENSOR = "__keras_tensor__"


@dataclasses.dataclass
class LayerNode:
    """One call of one layer: inputs and outputs are tensor ids."""

    layer: object
    path: str
    inputs: list
    outputs: list
    args: object = None
    kwargs: object = None
    constant_shapes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Scope:
    """A (possibly nested) model: its own inputs, outputs and entries."""

    model: object
    path: str
    inputs: list
    outputs: list
    entries: list = dataclasses.field(default_factory=list)


class LayerGraph:
    """Nodes in topological order, tensor shapes and consumers."""

    def __init__(self, model):
        self.model = model
        self.nodes = []
        self.shapes = {}
        self.alias = {}
        self.root = None

    def resolve(self, tid):
        while tid in self.alias:
            tid = self.alias[tid]
        return tid

    def finish(self):
        for node in self.nodes:
            node.inputs = [self.resolve(t) for t in node.inputs]
            node.outputs = [self.resolve(t) for t in node.outputs]
        self.inputs = [self.resolve(t) for t in self.root.inputs]
        self.outputs = [self.resolve(t) for t in self.root.outputs]
        self.consumers = {}
        for node in self.nodes:
            for position, tid in enumerate(node.inputs):
                self.consumers.setdefault(tid, []).append((node, position))
        self.producer = {t: n for n in self.nodes for t in n.outputs}


def _tensor_refs(structure, found):
    """Collects `keras_history` entries of serialized tensors, in order."""
    if isinstance(structure, dict):
        if structure.get("class_name") == _KERAS_TENSOR:
            config = structure["config"]
            found.append((tuple(config["keras_history"]), config["shape"]))
        else:
            for value in structure.values():
                _tensor_refs(value, found)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            _tensor_refs(value, found)
    return found


def _constant_shapes(structure, found):
    """Shapes of the array constants among a node's arguments."""
    if isinstance(structure, dict):
        if structure.get("class_name") in ("__tensor__", "__numpy__"):
            found.append(np.shape(structure["config"]["value"]))
        elif structure.get("class_name") != _KERAS_TENSOR:
            for value in structure.values():
                _constant_shapes(value, found)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            _constant_shapes(value, found)
    return found


def _what(layer):
    if isinstance(layer, keras.layers.Layer):
        return f"layer {layer.name!r} ({type(layer).__name__})"
    return f"operation {layer.name!r} (keras.ops {type(layer).__name__})"


def _refs(value):
    """`input_layers` / `output_layers`: one `[name, node, index]` or many."""
    if value and isinstance(value[0], str):
        return [tuple(value)]
    return [tuple(v) for v in value]


def _tid(prefix, history):
    # Shared layers are refused, so a layer has one node in its model and the
    # node index (which counts calls outside the model too) is not needed.
    name, _, tensor_index = history
    return f"{prefix}{name}:{tensor_index}"


def _is_functional(layer):
    return isinstance(layer, keras.Model) and not isinstance(
        layer, keras.Sequential
    )


def _check_model(model, path):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                f"slim: Sequential model {path or model.name!r} is not built. "
                "Give it an `keras.Input(shape)` first layer or call "
                "`model.build(input_shape)`."
            )
        return None
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if isinstance(config, dict) and "layers" in config:
        return config
    raise TypeError(
        f"slim: model {path or model.name!r} of class "
        f"{type(model).__name__} is subclassed (no functional graph). "
        "Only functional and Sequential models can be slimmed: rebuild "
        "it with the functional API."
    )


def _read_functional(graph, model, prefix, outer_inputs, config):
    scope = Scope(model, prefix.rstrip("/"), [], [])
    input_refs = _refs(config["input_layers"])
    scope.inputs = [_tid(prefix, r) for r in input_refs]
    if outer_inputs is not None:
        if len(outer_inputs) != len(scope.inputs):
            raise ValueError(
                f"slim: nested model {model.name!r} gets {len(outer_inputs)} "
                f"inputs for {len(scope.inputs)} declared inputs."
            )
        for inner, outer in zip(scope.inputs, outer_inputs):
            graph.alias[inner] = outer
    # Layers and operations: `model.layers` lacks the operations.
    by_name = {op.name: op for op in model.operations}
    for entry in config["layers"]:
        name = entry["name"]
        layer = by_name[name]
        path = prefix + name
        inbound = entry.get("inbound_nodes", [])
        if type(layer).__name__ == "InputLayer":
            tid = _tid(prefix, (name, 0, 0))
            if outer_inputs is None:
                shape = tuple(layer.batch_shape)
                graph.shapes[tid] = shape
                node = LayerNode(layer, path, [], [tid])
                graph.nodes.append(node)
                scope.entries.append(node)
            continue
        if len(inbound) != 1:
            raise ValueError(
                f"slim: {_what(layer)} at {path!r} is called "
                f"{len(inbound)} times in the model. Shared layers are not "
                "supported by the slimmer."
            )
        refs = _tensor_refs(inbound[0], [])
        inputs = []
        for history, shape in refs:
            source = by_name[history[0]]
            if history[2] > 0 and not _is_functional(source):
                raise ValueError(
                    f"slim: {_what(source)} returns several tensors; the "
                    "slimmer handles layers and operations with one output "
                    f"tensor only (output {history[2]} is read by {path!r})."
                )
            tid = _tid(prefix, history)
            graph.shapes.setdefault(tid, tuple(shape))
            inputs.append(tid)
        outputs_count = len(layer.outputs) if _is_functional(layer) else 1
        outputs = [_tid(prefix, (name, 0, t)) for t in range(outputs_count)]
        if isinstance(layer, keras.Model):
            child = _read_model(graph, layer, path + "/", inputs)
            for outer, inner in zip(outputs, child.outputs):
                graph.alias[outer] = inner
            scope.entries.append(child)
            continue
        node = LayerNode(
            layer,
            path,
            inputs,
            outputs,
            inbound[0]["args"],
            inbound[0]["kwargs"],
            _constant_shapes(inbound[0], []),
        )
        graph.nodes.append(node)
        scope.entries.append(node)
    scope.outputs = [_tid(prefix, r) for r in _refs(config["output_layers"])]
    for tid, tensor in zip(scope.outputs, model.outputs):
        graph.shapes.setdefault(tid, tuple(tensor.shape))
    return scope


def _read_sequential(graph, model, prefix, outer_inputs):
    scope = Scope(model, prefix.rstrip("/"), [], [])
    first = f"{prefix}<input>:0"
    graph.shapes[first] = tuple(model.inputs[0].shape)
    scope.inputs = [first]
    if outer_inputs is not None:
        graph.alias[first] = outer_inputs[0]
    else:
        node = LayerNode(None, prefix + "<input>", [], [first])
        graph.nodes.append(node)
        scope.entries.append(node)
    current = first
    for layer in model.layers:
        path = prefix + layer.name
        out = f"{prefix}{layer.name}:0"
        if isinstance(layer, keras.Model):
            child = _read_model(graph, layer, path + "/", [current])
            graph.alias[out] = child.outputs[0]
            scope.entries.append(child)
        else:
            node = LayerNode(layer, path, [current], [out])
            graph.nodes.append(node)
            scope.entries.append(node)
        graph.shapes[out] = tuple(layer.output.shape)
        current = out
    scope.outputs = [current]
    return scope


def _read_model(graph, model, prefix, outer_inputs):
    config = _check_model(model, prefix.rstrip("/"))
    if isinstance(model, keras.Sequential):
        return _read_sequential(graph, model, prefix, outer_inputs)
    return _read_functional(graph, model, prefix, outer_inputs, config)


def read_graph(model):
    """Reads the layer graph of a functional or Sequential Keras model.

    Args:
        model: A `keras.Model` built with the functional API or a built
            `keras.Sequential` (nested models allowed).

    Returns:
        A `LayerGraph`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "slim / slimming_plan: `model` must be a keras.Model (functional "
            f"or Sequential). Received: model={model!r:.80} of type "
            f"{type(model).__name__}"
        )
    graph = LayerGraph(model)
    graph.root = _read_model(graph, model, "", None)
    graph.finish()
    return graph


def input_shapes(graph, node):
    return [graph.shapes[t] for t in node.inputs]


def output_shapes(graph, node):
    return [graph.shapes[t] for t in node.outputs]
