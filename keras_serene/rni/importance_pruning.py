"""One-shot global channel pruning by BatchNorm importance (RNI, slimming).

`prune_by_importance(model, ratio, min_channels=3)` ranks every prunable
channel of the model by its importance, `sigmoid(w)` for a
`BoundedBatchNormalization` (RNI) and `|gamma|` for an ordinary
`BatchNormalization` (network slimming, Liu et al. 2017), and removes the
`floor(ratio * N)` least important of the `N` candidates (the global
quantile `ratio` of the importances), keeping at least `min_channels` per
channel group, as the authors' `get_prune_masks` does (`global_th =
quantile(scores, ratio)`, per-layer floor of 3 filters).

How, exactly:
1. copy the model with every bounded BN made a plain BN holding
   `gamma = sigmoid(w)` (`ks.layers.to_plain_batch_normalization`), so
   importance is `|gamma|` of the copy for both kinds;
2. read the coupled channel groups with `ks.slimming_plan(copy)`. A pinned
   group (model output, channel-mixing layer, ...) is never pruned. A
   coupled group (channels that meet in a residual sum) is pruned only where
   every coupled BN agrees: its channel importance is the maximum over the
   group's BNs (`coupled="agree"`), and the group needs one BN per source;
   `coupled="skip"` prunes block-internal channels only (the authors'
   ResNet-56 rule);
3. set `gamma = 0` (and `beta = 0` unless `reset_beta=False`) for the chosen
   channels in the copy: this is the *masked model*. A channel with
   `gamma = beta = 0` outputs `act(0)` (0 after ReLU), which is what removing
   it means in the authors' `prune_hard` and in network slimming;
4. `ks.slim(masked)` removes those channels physically, folding the
   constants exactly, so the slimmed model computes what the masked model
   computes.

With `reset_beta=False` a pruned channel keeps its constant output
`act(beta)`; the slimmer then folds it where it can and keeps it before a
padded convolution, and `prune_by_importance` warns about the channels it
could not remove.

References:
    Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
    arXiv:2204.06404 (one-shot global pruning by importance quantile; at
    least 3 channels per layer). Authors' code:
    `xapharius/receding-neuron-importances`, `rni/cifar/vgg16.py` and
    `resnet56.py` (`get_prune_masks`, `prune_hard`). Liu et al., "Learning
    Efficient Convolutional Networks through Network Slimming",
    arXiv:1708.06519 (pruning by `|gamma|`).
"""

import math
import warnings

import keras
import numpy as np

from keras_serene import KerasSereneWarning
from keras_serene import slimming
from keras_serene.core import checks
from keras_serene.rni.bounded_batch_normalization import (
    to_plain_batch_normalization,
)

_COUPLED = ("agree", "skip")


def _check_arguments(model, ratio, min_channels, coupled, reset_beta):
    name = "prune_by_importance"
    checks.check_type(name, "model", model, keras.Model, "be a keras.Model")
    checks.check_number(
        name, "ratio", ratio, minimum=0.0, maximum=1.0, max_inclusive=False
    )
    checks.check_int(name, "min_channels", min_channels, minimum=1)
    checks.check_choice(name, "coupled", coupled, _COUPLED)
    checks.check_bool(name, "reset_beta", reset_beta)


def _check_something_pruned(candidates, ratio, min_channels, selection):
    """`min_channels` at or above every group's size would prune nothing."""
    if ratio == 0 or any(selection):
        return
    sizes = sorted({len(imp) for _, _, imp in candidates})
    if int(math.floor(ratio * sum(len(imp) for _, _, imp in candidates))):
        checks.fail(
            "prune_by_importance",
            "min_channels",
            "be smaller than the channel groups it applies to, or nothing "
            f"is pruned: the prunable groups have {sizes} channels, so "
            f"min_channels <= {max(sizes) - 1} prunes",
            min_channels,
        )


def _batch_norm_layers(model, prefix=""):
    """Dict path -> BatchNormalization layer (nested models included)."""
    found = {}
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.Model):
            found.update(_batch_norm_layers(layer, path + "/"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            found[path] = layer
    return found


def _candidates(plan, batch_norms, coupled):
    """Prunable groups: list of (group, gamma members, importances)."""
    candidates = []
    for group in plan.groups:
        if group.pinned or group.size == 0:
            continue
        members = [
            m
            for m in group.members
            if m.weight == "gamma"
            and m.role == "channel"
            and m.layer in batch_norms
        ]
        if not members:
            continue
        if group.coupled and (
            coupled == "skip" or len(members) < len(group.sources)
        ):
            continue
        per_member = []
        for member in members:
            gamma = np.abs(batch_norms[member.layer].gamma.numpy())
            per_member.append(gamma[np.asarray(member.indices)])
        candidates.append((group, members, np.max(per_member, axis=0)))
    return candidates


def _select(candidates, ratio, min_channels):
    """Per candidate group: sorted channel indices to prune."""
    if not candidates:
        return []
    scores = np.concatenate([imp for _, _, imp in candidates])
    owner = np.concatenate(
        [np.full(len(imp), i) for i, (_, _, imp) in enumerate(candidates)]
    )
    channel = np.concatenate([np.arange(len(imp)) for _, _, imp in candidates])
    count = int(math.floor(ratio * len(scores)))
    order = np.argsort(scores, kind="stable")[:count]
    chosen = [[] for _ in candidates]
    for i in order:
        chosen[owner[i]].append(int(channel[i]))
    selection = []
    for (_, _, importance), pruned in zip(candidates, chosen, strict=True):
        keep_at_least = min(min_channels, len(importance))
        excess = len(pruned) + keep_at_least - len(importance)
        if excess > 0:
            # Give back the most important of the chosen channels.
            pruned = sorted(pruned, key=lambda c: importance[c])
            pruned = pruned[: len(pruned) - excess]
        selection.append(sorted(pruned))
    return selection


def mask_by_importance(
    model, ratio, min_channels=3, coupled="agree", reset_beta=True
):
    """The masked model of `prune_by_importance`, and what was masked.

    Returns a copy of `model` with bounded BNs made plain, no regulariser on
    any BN `gamma` and, for the channels chosen by global importance,
    `gamma = 0` (and `beta = 0` when `reset_beta`); same arguments as
    `prune_by_importance`. `ks.slim` of the masked model is the pruned
    model.

    Returns:
        A tuple `(masked_model, pruned)`: `pruned` maps each pruned BN's
        layer path to the sorted list of its zeroed channel indices.
    """
    _check_arguments(model, ratio, min_channels, coupled, reset_beta)
    if not _batch_norm_layers(model):
        raise ValueError(
            f"prune_by_importance needs BatchNormalization layers (plain or "
            f"ks.layers.BoundedBatchNormalization) to read importances from; "
            f"model {model.name!r} has none."
        )
    masked = to_plain_batch_normalization(model)
    batch_norms = {}
    for path, layer in _batch_norm_layers(masked).items():
        if layer.scale:
            # Fine-tuning goes without the sparsity regulariser (paper).
            layer.gamma_regularizer = None
            layer.gamma.regularizer = None
            batch_norms[path] = layer
    plan = slimming.slimming_plan(masked)
    candidates = _candidates(plan, batch_norms, coupled)
    if not candidates:
        raise ValueError(
            f"prune_by_importance found no prunable BatchNormalization "
            f"channels in model {model.name!r}: every BN with a scale is in "
            f"a pinned group (model output, channel-mixing layer) or a "
            f"coupled group (coupled={coupled!r}).\n{plan}"
        )
    pruned = {}
    selection = _select(candidates, ratio, min_channels)
    _check_something_pruned(candidates, ratio, min_channels, selection)
    for (_, members, _), channels in zip(candidates, selection, strict=True):
        if not channels:
            continue
        for member in members:
            layer = batch_norms[member.layer]
            positions = [member.indices[c] for c in channels]
            weights = [layer.gamma] + (
                [layer.beta] if reset_beta and layer.center else []
            )
            for variable in weights:
                values = variable.numpy()
                values[positions] = 0.0
                variable.assign(values)
            pruned.setdefault(member.layer, []).extend(positions)
    return masked, {path: sorted(c) for path, c in pruned.items()}


def prune_by_importance(
    model, ratio, min_channels=3, coupled="agree", reset_beta=True
):
    """Prunes the least important channels globally and slims the model.

    Importance is `sigmoid(w)` for `BoundedBatchNormalization` (RNI) and
    `|gamma|` for `BatchNormalization` (network slimming). The
    `floor(ratio * N)` least important of the `N` candidate channels go,
    every group keeping at least `min_channels`; then the masked copy is
    physically slimmed by `ks.slim`. The result's BN layers carry no
    `gamma` regulariser (RNI's or L1), so fine-tuning goes without it, as in
    the paper. The input model is not modified.

    Example:

    ```python
    small = ks.prune_by_importance(model, ratio=0.9)
    small.compile(optimizer="sgd", loss=..., metrics=["accuracy"])
    small.fit(x, y, epochs=5)
    ```

    Args:
        model: `keras.Model`. Sequential or Functional, with
            `BoundedBatchNormalization` or `BatchNormalization` layers.
        ratio: Float in [0, 1). Fraction of the candidate channels to
            remove (the global importance quantile).
        min_channels: Int >= 1. Channels kept at least in every group (or
            all of a smaller group). Defaults to `3` (the authors' code).
        coupled: String. `"agree"`: channels coupled by a residual sum are
            ranked by their largest importance over the coupled BNs (pruned
            only when all agree); `"skip"`: they are never pruned, only
            block-internal channels are (the authors' ResNet rule).
            Defaults to `"agree"`.
        reset_beta: Bool. Also zero `beta` of the pruned channels, so that
            they output `act(0)` and are removable before padded
            convolutions (what removing them means in the authors' code).
            Defaults to `True`.

    Returns:
        A new, smaller `keras.Model` of plain Keras layers (not compiled).

    References:
        Suteu & Guo, https://arxiv.org/abs/2204.06404; Liu et al.,
        https://arxiv.org/abs/1708.06519.
    """
    masked, pruned = mask_by_importance(
        model, ratio, min_channels, coupled, reset_beta
    )
    plan = slimming.slimming_plan(masked)
    left = 0
    for group in plan.groups:
        for member in group.members:
            if member.weight != "gamma" or member.layer not in pruned:
                continue
            in_group = set(pruned[member.layer]) & set(member.indices)
            removed = {member.indices[c] for c in group.removed}
            left += len(in_group - removed)
    if left:
        total = sum(len(c) for c in pruned.values())
        warnings.warn(
            f"prune_by_importance: {left} of the {total} masked channels "
            "could not be removed physically (their constant output cannot "
            "be folded exactly, e.g. a nonzero beta before a padded "
            "convolution); they stay in the model as constants. Use "
            "reset_beta=True to remove them.",
            KerasSereneWarning,
            stacklevel=2,
        )
    return slimming.slim(masked, plan)
