"""One budgeted pruning step: exactly the scheduled fraction, masked.

`ks.callbacks.SensitivityPruning(target_sparsity=...)` calls these at each
step of its `PolynomialRamp` (`budget_schedule.py`), ranked by a criterion
(`pruning_criteria.py`). Pruned entries are marked `PRUNED` in the
optimizer's masks (`keras_serene.core.masking`), so they stay zero, and an
entry once pruned is never revived: sparsity never decreases.

- `prune_entries`: one global ranking over every regularized entry (Zhu &
  Gupta, arXiv 1710.01878; LOBSTER's one global threshold, arXiv
  2011.09905 Sec. 3.3): the `round(s * N)` lowest scores are zero. With
  `block_size` > 1 (ours, after tfmot's `block_size`) the ranked unit is a
  block of that many consecutive entries along a kernel's input axis (one
  output's weights from neighbouring inputs: the 1x4 blocks LiteRT's sparse
  FULLY_CONNECTED kernel runs fast), scored by its entries' mean score;
  whole blocks go until at least `round(s * N)` entries are zero. A dict
  `target_sparsity` with `structured=False` ranks each named layer's
  entries on their own, to that layer's fraction (tfmot's per-layer
  sparsity when every layer is named).
- `ChannelPruner`: whole neurons and conv channels (SeReNe, arXiv
  2102.03773), counted over the free groups of `ks.slimming_plan` (not the
  model's inputs or outputs, nor pinned groups; a coupled residual group is
  one set of channels). A removed channel has its producing kernel slices
  and its BatchNormalization `gamma` masked; its bias (and BN `beta`) stays,
  since `ks.slim` folds the constant `act(b)` into the consumers exactly.
  Each group keeps at least one channel. A dict `target_sparsity` (ours,
  after Torch-Pruning's `pruning_ratio_dict`) sets each layer's own
  fraction: `ChannelPruner.layer_fractions`.
"""

import numpy as np

from keras_serene.core import masking as masks_lib
from keras_serene.sensitivity import pruning_criteria


def prune_entries(optimizer, variables, fraction, scores, block_size=1):
    """Zeroes and masks the `round(fraction * N)` lowest-scored entries.

    Entries already pruned count first (they stay pruned whatever their
    score). With `block_size` > 1, whole blocks (`block_ids`) go, lowest
    mean score first, until at least that many entries are zero; a block
    with a pruned entry counts as pruned. Returns `(entries pruned in total,
    the highest score of the entries this call adds)`, the score None when
    it adds none (the target was already met).
    """
    pruned = [masks_lib.pruned(optimizer, v).ravel() for v in variables]
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores])
    forced = np.concatenate(pruned)
    total = flat.size
    target = max(int(round(fraction * total)), int(forced.sum()))
    if target == 0:
        return 0, None
    if block_size > 1:
        chosen, cut = _choose_blocks(
            variables, flat, forced, target, block_size
        )
    else:
        flat = np.where(forced, -1.0, flat)
        chosen = np.zeros(total, bool)
        if target >= total:
            chosen[:] = True
        else:
            chosen[np.argpartition(flat, target - 1)[:target]] = True
        cut = float(np.max(flat[chosen]))
    if not (chosen & ~forced).any():
        cut = None  # nothing added: the cut is the previous step's
    offset = 0
    for variable, old in zip(variables, pruned):
        size = old.size
        where = chosen[offset : offset + size]
        offset += size
        if np.array_equal(where, old):
            continue
        masks_lib.add_flag(
            optimizer,
            variable,
            masks_lib.PRUNED,
            np.reshape(where, tuple(variable.shape)),
            zero=True,
        )
    return int(chosen.sum()), None if cut is None else max(cut, 0.0)


def block_ids(shape, block_size):
    """Each entry's block: `block_size` consecutive indices along the input
    axis (axis -2 of a kernel, e.g. Dense `(inputs, units)` or Conv `(kh,
    kw, in, out)`; axis 0 of a vector), the last block of an axis shorter
    when it does not divide. Returns `(ids of shape `shape`, block count)`."""
    shape = tuple(int(d) for d in shape)
    axis = len(shape) - 2 if len(shape) >= 2 else 0
    blocked = list(shape)
    blocked[axis] = -(-shape[axis] // block_size)
    count = int(np.prod(blocked))
    first = np.arange(count).reshape(blocked)
    along = np.arange(shape[axis]) // block_size
    return np.take(first, along, axis=axis), count


def _choose_blocks(variables, flat, forced, target, block_size):
    """The entries of the lowest-scored blocks covering `target` entries."""
    ids, offset = [], 0
    for variable in variables:
        local, count = block_ids(variable.shape, block_size)
        ids.append(local.ravel() + offset)
        offset += count
    ids = np.concatenate(ids)
    sizes = np.bincount(ids, minlength=offset)
    means = np.bincount(ids, weights=flat, minlength=offset) / sizes
    held = np.bincount(ids, weights=forced, minlength=offset) > 0
    means = np.where(held, -1.0, means)
    order = np.argsort(means, kind="stable")
    covered = np.cumsum(sizes[order])
    last = min(int(np.searchsorted(covered, target)), offset - 1)
    last = max(last, int(held.sum()) - 1)  # Every held block stays pruned.
    chosen_blocks = np.zeros(offset, bool)
    chosen_blocks[order[: last + 1]] = True
    return chosen_blocks[ids], float(means[order[last]])


def layer_named(layer, names):
    """The entry of `names` (layer names or `"outer/inner"` paths) that
    names the layer at path `layer`, or None."""
    for name in names:
        if layer == name or layer.endswith("/" + name):
            return name
    return None


def layer_of(variable, names):
    """The entry of `names` that names the layer owning `variable`."""
    return layer_named(variable.path.rpartition("/")[0], names)


def layer_paths(model, prefix=""):
    """`{path: layer}` with nested models' layers as `"outer/inner"`."""
    found = {}
    for layer in model.layers:
        path = prefix + layer.name
        found[path] = layer
        if hasattr(layer, "layers") and getattr(layer, "layers", None):
            found.update(layer_paths(layer, path + "/"))
    return found


def _weight(layer, name):
    for variable in layer.weights:
        if variable.path.split("/")[-1] == name:
            return variable
    return None


class _Slices:
    """Positions of each channel of a group on one weight's axis."""

    def __init__(self, variable, member, size):
        self.variable = variable
        self.axis = member.axis
        self.positions = np.array(
            [member.positions([c]) for c in range(size)], dtype=np.int64
        )

    def take(self, array):
        """`[channels, repeats, ...]` slices of an array of the weight."""
        return np.moveaxis(np.asarray(array), self.axis, 0)[self.positions]

    def where(self, channels):
        where = np.zeros(tuple(self.variable.shape), bool)
        view = np.moveaxis(where, self.axis, 0)
        view[self.positions[list(channels)].ravel()] = True
        return where


class _Group:
    def __init__(self, group, kernels, gammas, biases, consumers):
        self.id = group.id
        self.size = group.size
        self.sources = list(group.sources)
        self.kernels = kernels
        self.gammas = gammas
        self.biases = biases
        self.consumers = consumers


class ChannelPruner:
    """Removes a fraction of a model's prunable neurons and conv channels.

    Args:
        model: the compiled model.
        optimizer: its `SensitivityOptimizer` (built).
        plan: the model's `ks.slimming_plan` (read once, at train begin).
    """

    def __init__(self, model, optimizer, plan):
        self.optimizer = optimizer
        layers = layer_paths(model)
        self.groups = []
        for group in plan.groups:
            if group.pinned or group.size < 2:
                continue
            kernels, gammas, biases, consumers = [], [], [], []
            for member in group.members:
                layer = layers.get(member.layer)
                variable = (
                    None if layer is None else _weight(layer, member.weight)
                )
                if variable is None or optimizer.mask_for(variable) is None:
                    continue
                if member.role == "produces" and member.weight != "bias":
                    kernels.append(_Slices(variable, member, group.size))
                elif member.role == "produces":
                    biases.append(variable)
                elif member.role == "channel" and member.weight == "gamma":
                    gammas.append(_Slices(variable, member, group.size))
                elif member.role == "consumes" and len(variable.shape) > 1:
                    consumers.append(_Slices(variable, member, group.size))
            if kernels:
                self.groups.append(
                    _Group(group, kernels, gammas, biases, consumers)
                )
        self.total = sum(g.size for g in self.groups)

    def removed(self):
        """Per group, the boolean vector of removed channels."""
        out = []
        for group in self.groups:
            gone = np.ones(group.size, bool)
            for s in group.kernels:
                taken = s.take(masks_lib.pruned(self.optimizer, s.variable))
                gone &= taken.reshape(group.size, -1).all(axis=1)
            out.append(gone)
        return out

    def scores(self, criterion, statistics):
        """Per group, the criterion's score of each channel.

        `"taylor_global"`: `statistics` is the iterable of per-slice
        gradients (`pruning_criteria.batch_gradients`); each slice's group
        importance is squared, then averaged over the slices.
        """
        if criterion == "taylor_global":
            return self._taylor_scores(statistics)
        out = []
        for group in self.groups:
            slices = []
            for s in group.kernels:
                value = s.take(s.variable.numpy())
                if criterion == "taylor":
                    value = value * s.take(statistics[id(s.variable)])
                slices.append(value)
            if criterion == "magnitude_group":
                slices += [s.take(s.variable.numpy()) for s in group.consumers]
            out.append(
                pruning_criteria.channel_scores(
                    criterion, slices, statistics, group.biases
                )
            )
        return out

    def _taylor_scores(self, per_slice):
        values = [
            [s.take(s.variable.numpy()) for s in g.kernels] for g in self.groups
        ]
        totals = [np.zeros(g.size) for g in self.groups]
        count = 0
        for grads in per_slice:
            count += 1
            for total, group, kernels in zip(totals, self.groups, values):
                slices = [
                    value * s.take(grads[id(s.variable)])
                    for s, value in zip(group.kernels, kernels)
                ]
                total += pruning_criteria.channel_scores(
                    "taylor_global", slices, None, group.biases
                )
        return [total / max(1, count) for total in totals]

    def layer_fractions(self, targets):
        """Per group, the fraction `targets` (`{layer: fraction}`) asks of
        it: a group goes by the fraction of the layer that produces it (a
        name or an `"outer/inner"` path); groups of layers not named get 0.
        A name that produces no prunable group is an error naming it."""
        fractions = np.zeros(len(self.groups))
        for name, value in targets.items():
            hits = [
                i
                for i, group in enumerate(self.groups)
                if any(layer_named(source, [name]) for source in group.sources)
            ]
            if not hits:
                prunable = sorted({s for g in self.groups for s in g.sources})
                raise ValueError(
                    "SensitivityPruning: `target_sparsity` names layer "
                    f"{name!r}, which produces no prunable neuron group "
                    "(model inputs/outputs and pinned groups are not "
                    f"prunable). Prunable layers: {prunable}. Received "
                    "target_sparsity="
                    f"{targets!r}"
                )
            fractions[hits] = value
        return fractions

    def prune_to(self, fraction, criterion, statistics=None):
        """Removes channels until `round(fraction * total)` are gone.

        `fraction` is one float for every group, or one per group (equal-
        fraction criteria only). Returns the number of channels removed in
        total.
        """
        removed = self.removed()
        scores = self.scores(criterion, statistics)
        if np.ndim(fraction):
            sizes = np.array([g.size for g in self.groups])
            target = int(round(float(np.sum(fraction * sizes))))
        else:
            target = int(round(fraction * self.total))
        if criterion in pruning_criteria.GLOBAL_CRITERIA:
            chosen = _global_choice(
                removed,
                scores,
                target,
                normalise=criterion == "magnitude_global",
            )
        else:
            chosen = _per_group_choice(removed, scores, fraction, target)
        for group, old, new in zip(self.groups, removed, chosen):
            if np.array_equal(old, new):
                continue
            channels = np.flatnonzero(new)
            for s in group.kernels + group.gammas:
                masks_lib.add_flag(
                    self.optimizer,
                    s.variable,
                    masks_lib.PRUNED,
                    s.where(channels),
                    zero=True,
                )
        return int(sum(c.sum() for c in chosen))


def _lowest(scores, removed, count):
    """`removed` plus the `count` lowest-scored channels not yet removed."""
    new = removed.copy()
    if count > 0:
        candidates = np.flatnonzero(~removed)
        order = candidates[np.argsort(scores[candidates], kind="stable")]
        new[order[:count]] = True
    return new


def _per_group_choice(removed, scores, fraction, target):
    """`fraction` (one, or one per group) of every group's channels (largest
    remainders), >= 1 kept."""
    sizes = np.array([len(r) for r in removed])
    done = np.array([int(r.sum()) for r in removed])
    caps = sizes - 1
    exact = fraction * sizes
    quota = np.minimum(np.floor(exact).astype(int), caps)
    quota = np.maximum(quota, done)
    # Fill up to the target, each time where the share is furthest behind.
    while quota.sum() < target and np.any(quota < caps):
        deficit = np.where(quota < caps, exact - quota, -np.inf)
        quota[int(np.argmax(deficit))] += 1
    return [
        _lowest(s, r, int(q - d))
        for s, r, q, d in zip(scores, removed, quota, done)
    ]


def _global_choice(removed, scores, target, normalise=True):
    """One ranking across groups (scores divided by the root mean square of
    their group's remaining ones, if `normalise`); every group keeps one."""
    done = sum(int(r.sum()) for r in removed)
    entries = []
    for g, (s, r) in enumerate(zip(scores, removed)):
        alive = np.flatnonzero(~r)
        rms = np.sqrt(np.mean(np.square(s[alive]))) if alive.size else 1.0
        normalised = s / (rms if rms > 0 and normalise else 1.0)
        best = alive[np.argmax(s[alive])] if alive.size else -1
        for c in alive:
            if c != best:
                entries.append((normalised[c], g, c))
    entries.sort(key=lambda e: e[0])
    chosen = [r.copy() for r in removed]
    for _, g, c in entries[: max(0, target - done)]:
        chosen[g][c] = True
    return chosen
