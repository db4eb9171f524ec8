"""The slimming plan: coupled channel groups and the channels each keeps.

`ks.slimming_plan(model)` reads the Keras functional graph (the layers'
inbound nodes in `model.get_config()`, no tracing) and returns a
`SlimmingPlan`; `ks.slim(model, plan)` applies it. The plan is plain data,
JSON-able (`to_json` / `from_json`).

Data structure (stable, used by `ks.prune_by_importance`):

- `plan.groups`: list of `ChannelGroup`, one per set of coupled channels
  (every layer, weight and axis that must lose the same channel). A group has
    - `id`: Int. Its index in `plan.groups`.
    - `size`: Int. Number of channels.
    - `members`: list of `GroupMember(layer, weight, axis, role, indices,
      repeat_stride, repeats, offsets)`: channel `i` of the group is the slice
      `indices[i] + k * repeat_stride` (`k < repeats`; or `indices[i] + o`
      for `o` in `offsets` when a channel recurs irregularly, as coupled
      operands of one Concatenate do in NASNet) of `weight` (a weight
      name such as `"kernel"`, `"gamma"`) along `axis` (non-negative) of the
      layer at path `layer` (`"block/conv"` inside a nested model). `role` is
      `"produces"` (the layer creates the channel: a kernel's output axis and
      its bias), `"channel"` (a per-channel weight of a pass-through layer:
      BN statistics, depthwise filters) or `"consumes"` (a consumer's input
      rows: where constants are folded).
    - `layers`: list of String. Every layer whose input or output carries
      the group's channels (activations and pooling included), graph order.
    - `sources`: list of String. The layers that create the channels
      (producers). Two or more means a residual sum couples them.
    - `kept`, `removed`: lists of Int, channel indices kept / removed.
    - `dead`: list of Int. Channels whose value is a constant (all producing
      slices zero, or a BN `gamma` exactly 0), removable or not.
    - `pinned`: Bool, and `reasons`: list of String (why channels are
      kept: model input or output, broadcast operand, channel-mixing layer,
      position-dependent constant at a padded convolution...). A pinned group
      keeps every channel.
    - `coupled`: Bool. True when the channels cross a residual sum, a
      multiplicative gate or an elementwise max/min (`len(sources) > 1`).
- `plan.analysis`: the `ChannelAnalysis` the plan was made from (not
  serialized; `None` after `from_json`), which `ks.slim(model, plan)` applies.
- `plan.group_of(layer_name)`: the group holding the output channels of a
  layer (a Conv, Dense, BatchNormalization...), `plan.groups_of(layer_name)`
  all groups touching it.
- `plan.num_removed`, `str(plan)`: a readable table.

References:
    Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
    https://arxiv.org/abs/2301.12900 (dependency groups).
    EIDOSLAB `simplify` (Bragagnolo et al., "Simplify: A Python library for
    optimizing pruned neural networks", SoftwareX 2022): folding the constant
    output of removed channels into the consumers' biases.
"""

import dataclasses
import json

import numpy as np

from keras_serene.core.channel_rules import find_weight
from keras_serene.slimming.channels import ChannelAnalysis
from keras_serene.slimming.graph import read_graph

PLAN_FORMAT = "keras_serene.slimming_plan/1"


@dataclasses.dataclass
class GroupMember:
    """One weight slice that belongs to a channel group.

    Args:
        layer: String. Layer path (`"outer/inner"` in nested models).
        weight: String. Weight name (`"kernel"`, `"bias"`, `"gamma"`...).
        axis: Int. Non-negative axis of the weight holding the channels.
        role: String. `"produces"`, `"channel"` or `"consumes"`.
        indices: list of Int. Position of each group channel on `axis`.
        repeat_stride: Int. Distance between repeats (Flatten). Defaults
            to `0`.
        repeats: Int. Positions per channel (Flatten: spatial positions).
            Defaults to `1`.
        offsets: list of Int or `None`. Irregular repeats: the positions
            of channel `i` are `indices[i] + o`. Defaults to `None`.
    """

    layer: str
    weight: str
    axis: int
    role: str
    indices: list
    repeat_stride: int = 0
    repeats: int = 1
    offsets: list = None

    def positions(self, channels):
        """The weight positions on `axis` owned by the given channels."""
        out = []
        for i in channels:
            base = self.indices[i]
            if self.offsets is not None:
                out.extend(base + o for o in self.offsets)
                continue
            step = self.repeat_stride
            out.extend(base + k * step for k in range(self.repeats))
        return out


@dataclasses.dataclass
class ChannelGroup:
    """A set of channels that every member must lose together."""

    id: int
    size: int
    members: list
    layers: list
    sources: list
    kept: list
    removed: list
    dead: list
    pinned: bool
    reasons: list
    coupled: bool

    def to_dict(self):
        data = dataclasses.asdict(self)
        return data

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        data["members"] = [GroupMember(**m) for m in data["members"]]
        return cls(**data)

    def __str__(self):
        state = "pinned" if self.pinned else "free"
        return (
            f"group {self.id}: {self.size} ch, kept {len(self.kept)}, "
            f"removed {len(self.removed)}, dead {len(self.dead)} ({state}) "
            f"sources={self.sources}"
        )


class SlimmingPlan:
    """Coupled channel groups of a model and the channels kept in each.

    Build it with `ks.slimming_plan(model)`; apply it with
    `ks.slim(model, plan)`. Edit a group's `kept` (only to keep *more*
    channels: removing a live channel would change the outputs, which `slim`
    refuses) to steer the slimmer.

    Example:

    >>> plan = ks.slimming_plan(model)
    >>> print(plan)
    >>> ks.slim(model, ks.slimming.SlimmingPlan.from_json(plan.to_json()))

    The plan carries the `ChannelAnalysis` it was made from (`analysis`:
    channel ids per tensor, constants, the channels of each group), so
    `slim(model, plan)` applies it without analysing the model again; a plan
    read back with `from_json` has none, and `slim` re-analyses the model
    and checks the plan fits it. Plan again after changing the weights.

    Args:
        model_name: String. Name of the planned model.
        groups: list of `ChannelGroup`.
        analysis: `ChannelAnalysis` or `None`. Defaults to `None`.
    """

    def __init__(self, model_name, groups, analysis=None):
        self.model_name = model_name
        self.groups = list(groups)
        self.analysis = analysis

    # -- look-ups -----------------------------------------------------------
    def groups_of(self, layer_name):
        """All groups with a member or a carrying tensor at `layer_name`."""
        return [
            g
            for g in self.groups
            if layer_name in g.layers
            or any(m.layer == layer_name for m in g.members)
        ]

    def group_of(self, layer_name):
        """The group holding the *output* channels of `layer_name`.

        For a producer that is the group its kernel's output axis belongs
        to; for a pass-through layer (BatchNormalization...) the group of its
        per-channel weights. Raises ValueError when the layer has no channel
        weights or its output spans several groups (a Concatenate).
        """
        found = []
        for g in self.groups:
            for m in g.members:
                if m.layer == layer_name and m.role in ("produces", "channel"):
                    found.append(g)
                    break
        if len(found) != 1:
            known = sorted(
                {
                    m.layer
                    for g in self.groups
                    for m in g.members
                    if m.role in ("produces", "channel")
                }
            )
            raise ValueError(
                f"SlimmingPlan.group_of: layer_name={layer_name!r} has output "
                f"channels in {len(found)} groups (expected 1). Layers with "
                f"channel weights: {known}."
            )
        return found[0]

    @property
    def num_removed(self):
        """Number of channels removed over all groups."""
        return sum(len(g.removed) for g in self.groups)

    # -- serialisation --------------------------------------------------------
    def to_dict(self):
        return {
            "format": PLAN_FORMAT,
            "model_name": self.model_name,
            "groups": [g.to_dict() for g in self.groups],
        }

    def to_json(self, **kwargs):
        """The plan as a JSON string (`json.dumps` keyword arguments)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data):
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(
                f"SlimmingPlan.from_dict: format={data.get('format')!r}, "
                f"expected {PLAN_FORMAT!r}."
            )
        groups = [ChannelGroup.from_dict(g) for g in data["groups"]]
        return cls(data["model_name"], groups)

    @classmethod
    def from_json(cls, text):
        """Reads a plan written by `to_json`."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other):
        return (
            isinstance(other, SlimmingPlan)
            and self.to_dict() == other.to_dict()
        )

    def __str__(self):
        lines = [
            f"SlimmingPlan for {self.model_name!r}: {len(self.groups)} "
            f"groups, {self.num_removed} channels removed",
            f"{'id':>4} {'size':>5} {'kept':>5} {'dead':>5}  "
            f"{'state':<7} sources -> reasons",
        ]
        for g in self.groups:
            state = "pinned" if g.pinned else "free"
            reasons = "; ".join(g.reasons)
            lines.append(
                f"{g.id:>4} {g.size:>5} {len(g.kept):>5} {len(g.dead):>5}  "
                f"{state:<7} {', '.join(g.sources) or '-'}"
                + (f" -> {reasons}" if reasons else "")
            )
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"<SlimmingPlan {self.model_name!r}: {len(self.groups)} groups, "
            f"{self.num_removed} channels removed>"
        )


def _position_table(ids, classes, where):
    """(len(classes), repeats) int array: the positions of each class on a
    tensor's channel axis (`repeats` > 1 after a Flatten)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    classes = np.asarray(classes, dtype=np.int64)
    lo = np.searchsorted(sorted_ids, classes, side="left")
    hi = np.searchsorted(sorted_ids, classes, side="right")
    counts = hi - lo
    if counts.min() != counts.max() or counts.min() == 0:
        raise ValueError(f"slimming_plan: irregular channel layout at {where}.")
    return order[lo[:, None] + np.arange(counts[0])]


def _member(layer, path, weight, axis, role, table):
    array = find_weight(layer, weight)
    if array is None:
        return None
    axis = axis % len(array.shape)
    repeats = table.shape[1]
    stride = int(table[0, 1] - table[0, 0]) if repeats > 1 else 0
    first = table[:, 0].tolist()
    relative = table - table[:, :1]
    if np.array_equal(
        relative, np.broadcast_to(stride * np.arange(repeats), relative.shape)
    ):
        return GroupMember(path, weight, axis, role, first, stride, repeats)
    if not (relative == relative[:1]).all():
        raise ValueError(
            f"slimming_plan: irregular channel layout at {path}/{weight}."
        )
    offsets = relative[0].tolist()
    return GroupMember(path, weight, axis, role, first, 0, repeats, offsets)


def build_plan(analysis, model_name):
    """Builds the `SlimmingPlan` of a `ChannelAnalysis`."""
    graph = analysis.graph
    ordered_tids = []
    for node in graph.nodes:
        ordered_tids.extend(t for t in node.outputs if t not in ordered_tids)
    # Signature of a class: the tensors carrying it. Classes with the same
    # signature form one group, in order of first appearance.
    flat = np.concatenate([analysis.ids[t] for t in ordered_tids])
    where = np.concatenate(
        [np.full(len(analysis.ids[t]), j) for j, t in enumerate(ordered_tids)]
    )
    count = len(ordered_tids)
    codes = np.unique(flat * count + where)
    pair_class, pair_tid = codes // count, codes % count
    starts = np.flatnonzero(np.r_[True, pair_class[1:] != pair_class[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    signature = {
        int(pair_class[a]): pair_tid[a:b].tobytes()
        for a, b in zip(starts, ends)
    }
    first = np.unique(flat, return_index=True)[1]
    groups_by_key, keys = {}, {}
    for cls in flat[np.sort(first)].tolist():
        key = signature[cls]
        groups_by_key.setdefault(key, []).append(cls)
        if key not in keys:
            tids = np.frombuffer(key, dtype=pair_tid.dtype)
            keys[key] = [ordered_tids[j] for j in tids]
    groups = []
    for gid, (key, classes) in enumerate(groups_by_key.items()):
        tids = set(keys[key])
        members, layer_paths, sources, coupled = [], [], [], False
        for node in graph.nodes:
            touches = tids & (set(node.inputs) | set(node.outputs))
            if not touches:
                continue
            layer_paths.append(node.path)
            rule = analysis.rules[node.path]
            if rule.creates and node.outputs[0] in tids:
                sources.append(node.path)
            coupled |= rule.couples
            tables = {}
            for weight, axis, role, tid in rule.members(node, tids):
                if tid not in tables:
                    ids = analysis.ids[tid]
                    tables[tid] = _position_table(ids, classes, node.path)
                member = _member(
                    node.layer, node.path, weight, axis, role, tables[tid]
                )
                if member is not None:
                    members.append(member)
        reasons = []
        for cls in classes:
            reasons.extend(analysis.pins.get(cls, []))
            reasons.extend(analysis.notes.get(cls, []))
        pinned = any(cls in analysis.pins for cls in classes)
        kept = [i for i, c in enumerate(classes) if c not in analysis.removable]
        removed = [i for i, c in enumerate(classes) if c in analysis.removable]
        dead = [i for i, c in enumerate(classes) if c in analysis.dead]
        groups.append(
            ChannelGroup(
                id=gid,
                size=len(classes),
                members=members,
                layers=layer_paths,
                sources=sources,
                kept=kept,
                removed=removed,
                dead=dead,
                pinned=pinned,
                reasons=list(dict.fromkeys(reasons)),
                coupled=coupled or len(sources) > 1,
            )
        )
    analysis.group_classes = [groups_by_key[k] for k in groups_by_key]
    return SlimmingPlan(model_name, groups, analysis=analysis)


def slimming_plan(model):
    """Plans the physical removal of constant channels from a Keras model.

    Reads the functional graph (no tracing), groups coupled channels (every
    layer, weight and axis that must lose the same channel) and marks as
    removed the channels that are constant (every producing slice zero, or a
    BatchNormalization `gamma` exactly 0) and can be folded exactly into
    their consumers' biases. Model inputs and outputs, broadcast operands
    and channel-mixing layers are pinned.

    Example:

    >>> plan = ks.slimming_plan(model)
    >>> print(plan)            # one line per group
    >>> plan.group_of("conv1").removed

    Args:
        model: A functional or Sequential `keras.Model` (nested models are
            followed).

    Returns:
        A `SlimmingPlan`.

    References:
        EIDOSLAB `simplify` (SoftwareX 2022); Torch-Pruning groups
        (https://arxiv.org/abs/2301.12900).
    """
    analysis = ChannelAnalysis(read_graph(model))
    return build_plan(analysis, model.name)
