"""Ranking criteria of the budgeted pruning schedule.

At each pruning step `ks.callbacks.SensitivityPruning(target_sparsity=...)`
zeroes the lowest-scored entries (or, `structured=True`, neurons and conv
channels) until the scheduled fraction is reached. The criteria:

- `"magnitude"`: `|w|` per entry, one global threshold (LOBSTER's and
  SeReNe's thresholding, arXiv 2011.09905 Sec. 3.3; Zhu & Gupta, arXiv
  1710.01878, ranked globally). Structured: the L2 norm of a channel's
  producing kernel slices, the same fraction removed from every layer
  (Li et al., "Pruning filters for efficient ConvNets", arXiv 1608.08710).
- `"magnitude_global"` (ours): structured only; the L2 norm divided by the
  root-mean-square norm of its layer's remaining channels, ranked across all
  layers, so layers lose different fractions. Unstructured: as `"magnitude"`.
- `"magnitude_group"`: structured only; the L2 norm of everything the
  channel touches, its producing kernel slices and the consuming layers'
  input slices (Torch-Pruning's group magnitude importance, Fang et al.,
  "DepGraph", arXiv 2301.12900, Sec. 3.3), the same fraction removed from
  every layer. Unstructured: as `"magnitude"`.
- `"taylor"` (ours): `|w| * S` with LOBSTER's sensitivity `S = |dL/dw|`
  (arXiv 2011.09905, Eq. 6), i.e. the first-order Taylor saliency of
  Molchanov et al. (arXiv 1611.06440, Eq. 8); structured: summed over the
  channel's producing slices. `S` from the validation batches at each step.
- `"taylor_global"`: structured only; the group Taylor importance
  `(sum_s w_s dL/dw_s)^2` over the channel's producing kernel slices, the
  first-order estimate of the loss change when the neuron's incoming weights
  are zeroed (Molchanov et al., "Importance estimation for neural network
  pruning", CVPR 2019, arXiv 1906.10771, Eq. 8, with LOBSTER's quantity
  `dL/dw`, arXiv 2011.09905 Eq. 6). As in the authors' code
  (`NVlabs/Taylor_pruning`, `pruning_engine.py`: `add_criteria` squares
  each minibatch's gate importance, `compute_saliency` averages them), it
  is squared on each `TAYLOR_BATCH_SIZE`-sample slice of the sampled
  batches and the squares are averaged. It is ranked
  across all layers with no normalisation, as Molchanov et al. do: a layer
  loses what costs the loss least. Recomputed at each step (not
  accumulated: the weights it multiplies change). Unstructured:
  `|w * dL/dw|` averaged over the slices.
- `"serene"`: SeReNe's neuron sensitivity (arXiv 2102.03773, Eq. 5, one-pass
  lower bound, `alpha_k = 1/K`, on the model outputs), rescaled per layer by
  its maximum (the authors' NeuronLOBSTER `rescaled` option,
  `EIDOSLAB/SeReNe` `src/utilities/pruning/sensitivity/`), accumulated over
  the pruning steps. Structured: the channel's rescaled `S_n`; unstructured:
  `|w| * S_n` of the neuron the weight feeds (ours). `S_n` is read from the
  bias gradient of `mean_b sum_k y_k / K` (the batch-summed pre-activation
  gradient, SeReNe arXiv 2102.03773 Sec. III); a layer without bias gets
  `S_n = 1`.

The data-driven criteria (`"taylor"`, `"taylor_global"`, `"serene"`) need
TensorFlow and the callback's `validation_data`.

Which won (`python benchmarks/reproduce.py --budgeted`, full Fashion-MNIST,
20 epochs, three or more seeds; `docs/results.md`): `"magnitude"`
unstructured (ahead of tfmot at every target); for the neurons of an MLP
`"magnitude_global"` without decay (LeNet-300-100, 80% removed, every epoch
reshuffled: 0.8783 against 0.8710 for `"magnitude"`; with one batch order
for every epoch `"magnitude"` 0.8706 against 0.8624 for `"taylor_global"`,
and `"magnitude_global"` with decay collapsed on LeNet-5, 0.7569 on 12,000
images, so it is not the default); `"taylor_global"` for the
channels of a CNN (LeNet-5, 80% removed, every epoch reshuffled, the ramp
ending at 50% of the epochs: 0.8929 against 0.8802 for equal fractions by
L2 norm and 0.8966 dense; it keeps about two thirds of the conv channels).
`"magnitude"` is the default: it needs no data, wins unstructured and
collapsed on no model measured.
"""

import keras
import numpy as np

CRITERIA = (
    "magnitude",
    "magnitude_global",
    "magnitude_group",
    "taylor",
    "taylor_global",
    "serene",
)
DATA_CRITERIA = ("taylor", "taylor_global", "serene")
#: Criteria ranked across layers (no equal fraction per layer).
GLOBAL_CRITERIA = ("magnitude_global", "taylor_global")
#: Data criteria whose statistic is recomputed at each step, not summed.
FRESH_CRITERIA = ("taylor_global",)
#: Batches and samples per batch the data criteria read per pruning step.
MAX_BATCHES = 4
BATCH_SIZE = 256
#: Samples per slice over which `"taylor_global"` squares its importance.
TAYLOR_BATCH_SIZE = 64


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(
            "SensitivityPruning: `criterion` must be one of "
            f"{CRITERIA}. Received criterion={criterion!r}"
        )
    return criterion


def sample_batches(data):
    """Up to `MAX_BATCHES` `(x, y)` numpy batches from a tuple or dataset."""
    if isinstance(data, (tuple, list)):
        x, y = data[0], data[1]
        n = min(len(x), MAX_BATCHES * BATCH_SIZE)
        return [
            (x[i : i + BATCH_SIZE], y[i : i + BATCH_SIZE])
            for i in range(0, n, BATCH_SIZE)
        ]
    batches = []
    for batch in data:
        batches.append((batch[0], batch[1]))
        if len(batches) >= MAX_BATCHES:
            break
    return batches


def gradient_statistics(model, batches, criterion, compiled=None):
    """`{id(variable): numpy array}` of an accumulated criterion's statistic.

    `"taylor"`: the batch-mean `|dL/dw|` (mean over the sampled batches) of
    every trainable variable. `"serene"`: `|d(mean_b sum_k y_bk / K)/db|`
    for every bias, the neuron sensitivity lower bound. `compiled` is the
    compiled model whose loss is used (`model` itself by default; the
    `ks.SensitivityModel` around it when training through one).
    `"taylor_global"` reads `batch_gradients` instead.
    """
    if criterion == "taylor":
        scalar = _loss(model if compiled is None else compiled)
    else:

        def scalar(x, y, outputs):
            k = keras.ops.shape(outputs)[-1]
            return keras.ops.mean(keras.ops.sum(outputs, axis=-1)) / k

    grads = _gradients(model, batches, scalar)
    if criterion == "taylor":  # The mean of |dL/dw| over the batches.
        return _mean(_absolute(g) for g in grads)
    return _absolute(_mean(grads))  # "serene": |.| of the mean gradient.


def _absolute(found):
    return {key: np.abs(value) for key, value in found.items()}


def _mean(dicts):
    """The key-wise float64 mean of an iterable of `{key: array}` dicts."""
    totals, count = {}, 0
    for found in dicts:
        count += 1
        for key, value in found.items():
            totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)
    return {key: total / max(1, count) for key, total in totals.items()}


def batch_gradients(model, batches, compiled=None, size=TAYLOR_BATCH_SIZE):
    """Yields `{id(variable): signed dL/dw}` for each `size`-sample slice of
    the batches, one slice at a time (memory: one model's gradients).

    `"taylor_global"`'s data: Molchanov et al.'s code (arXiv 1906.10771;
    `NVlabs/Taylor_pruning`, `pruning_engine.py`) computes the group
    importance on each minibatch and averages it over the minibatches, so
    it is squared per slice, not after averaging (a mean gradient tends to
    zero as training converges; the average of squares keeps its variance).
    `compiled` as in `gradient_statistics`.
    """
    slices = []
    for x, y in batches:
        n = len(keras.tree.flatten(x)[0])
        for i in range(0, n, size):
            cut = _cut(i, i + size)
            slices.append(
                (
                    keras.tree.map_structure(cut, x),
                    keras.tree.map_structure(cut, y),
                )
            )
    loss = _loss(model if compiled is None else compiled)
    yield from _gradients(model, slices, loss)


def _cut(start, stop):
    return lambda array: array[start:stop]


def _loss(compiled):
    return lambda x, y, outputs: compiled.compute_loss(x=x, y=y, y_pred=outputs)


def _gradients(model, batches, scalar):
    """Yields `{id(variable): numpy gradient of scalar(x, y, outputs)}`."""
    import tensorflow as tf

    variables = list(model.trainable_variables)
    for x, y in batches:
        with tf.GradientTape() as tape:
            outputs = model(x, training=False)
            value = scalar(x, y, outputs)
        grads = tape.gradient(value, [v.value for v in variables])
        yield {
            id(v): np.zeros(tuple(v.shape))
            if g is None
            else keras.ops.convert_to_numpy(g)
            for v, g in zip(variables, grads)
        }


def entry_scores(criterion, variables, values, statistics, neuron_of):
    """One score array per variable; low scores are pruned first.

    Args:
        criterion: one of `CRITERIA`.
        variables: the regularized variables.
        values: their numpy values.
        statistics: `{id(variable): array}` (see `gradient_statistics`,
            accumulated by the caller), or None for magnitude criteria;
            `"taylor_global"`: the iterable `batch_gradients` yields.
        neuron_of: callable `variable -> (bias variable, broadcast shape)`
            or None: where a weight's neuron sensitivity lives (`"serene"`).
    """
    if criterion == "taylor_global":  # |w * dL/dw| averaged over slices.
        statistics = _mean(_absolute(grads) for grads in statistics)
    scores = []
    for variable, value in zip(variables, values):
        magnitude = np.abs(value)
        if criterion in ("magnitude", "magnitude_global", "magnitude_group"):
            scores.append(magnitude)
        elif criterion in ("taylor", "taylor_global"):
            scores.append(magnitude * np.abs(statistics[id(variable)]))
        else:
            scores.append(
                magnitude * neuron_sensitivity(variable, statistics, neuron_of)
            )
    return scores


def neuron_sensitivity(variable, statistics, neuron_of):
    """The rescaled `S_n` broadcast to `variable` (ones when unknown)."""
    found = neuron_of(variable)
    if found is None:
        return np.ones(tuple(variable.shape))
    bias, shape = found
    s = statistics[id(bias)]
    s = s / s.max() if s.max() > 0 else np.ones_like(s)
    return np.reshape(s, shape)


def channel_scores(criterion, slices, statistics, biases):
    """Per-channel scores of one group from its producing kernel slices.

    Args:
        criterion: one of `CRITERIA`.
        slices: list of numpy arrays `[channels, ...]`, one per producing
            kernel of the group: the kernel values of each channel (for
            `"taylor"`, already multiplied by `|dL/dw|`; for
            `"taylor_global"`, by the signed `dL/dw`; for
            `"magnitude_group"`, the consuming kernels' slices as well).
        statistics: as in `entry_scores` (None for magnitude criteria).
        biases: the group's producing bias variables (`"serene"`).
    """
    channels = len(slices[0])
    flat = [np.reshape(s, (channels, -1)) for s in slices]
    if criterion == "taylor":
        return sum(np.sum(np.abs(s), axis=1) for s in flat)
    if criterion == "taylor_global":
        return np.square(sum(np.sum(s, axis=1) for s in flat))
    if criterion == "serene":
        found = [statistics[id(b)] for b in biases if id(b) in statistics]
        if found:
            s = np.max(found, axis=0)
            return s / s.max() if s.max() > 0 else np.ones_like(s)
    return np.sqrt(sum(np.sum(np.square(s), axis=1) for s in flat))
