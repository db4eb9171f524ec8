"""NEq's probe: one inference pass over the subset, streaming `phi`.

At the end of every epoch NEq runs the fixed subset through the model in
inference mode and compares each neuron's outputs with those of the previous
epoch (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022, arXiv 2207.09455,
Sec. 3; the maths is in `keras_serene.neq.equilibrium`). The outputs are the
layers' *pre-activations*, as the authors' code (`EIDOSLAB/NEq`,
`src/general_utils.py`) hooks `nn.Conv2d`/`nn.Linear`/`nn.BatchNorm2d`
modules whose outputs come before the ReLU module: a layer with a fused
activation is split into its linear part and its activation by
`keras_serene.core.preactivations`, which calls the model's own layers (same
variables, nothing copied).

The pass is one traced function per batch (a `tf.function`): it runs the
probe model and reduces each neuron's maps against the previous epoch's to
the sums `phi` needs, on the device; only those sums (one number or three
per neuron) come back to the host. The previous epoch's maps stay on the
device as tensors (`stored_bytes`).
"""

import keras
import numpy as np
from keras import ops

from keras_serene.core import preactivations
from keras_serene.neq import equilibrium as eq
from keras_serene.neq.subset import CALLER
from keras_serene.neq.subset import num_samples

#: Samples per probe batch: few calls, and the same batch shapes every
#: epoch, so the probe is traced once per fit.
PROBE_BATCH = 256


def _neuron_maps(z, axis):
    """`(samples, positions, neurons)` maps; 2-D outputs stay as they are."""
    if len(z.shape) == 2:
        return z
    z = ops.moveaxis(z, axis, -1)
    return ops.reshape(z, (ops.shape(z)[0], -1, z.shape[-1]))


def _sums(current, previous):
    """What `PhiAccumulator.add_sums` takes, computed on the device."""
    if len(current.shape) == 2:  # one vector per neuron over all samples
        return ops.stack(
            [
                ops.sum(current * previous, axis=0),
                ops.sum(current * current, axis=0),
                ops.sum(previous * previous, axis=0),
            ]
        )
    dot = ops.sum(current * previous, axis=1)
    a2 = ops.sum(current * current, axis=1)
    b2 = ops.sum(previous * previous, axis=1)
    a_zero, b_zero = ops.equal(a2, 0.0), ops.equal(b2, 0.0)
    either = ops.logical_or(a_zero, b_zero)
    norms = ops.where(either, 1.0, ops.sqrt(a2) * ops.sqrt(b2))
    cos = ops.clip(dot / norms, -1.0, 1.0)
    cos = ops.where(either, 0.0, cos)
    cos = ops.where(ops.logical_and(a_zero, b_zero), 1.0, cos)
    return ops.sum(cos, axis=0)


def _compiled(function):
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, reduce_retracing=True)


class Probe:
    """Runs the subset through `model` and returns the watched layers' `phi`.

    The passive records (unwatched neuron layers) are not compared; their
    output shapes (for their backprop FLOPs) come from the model's graph.
    """

    def __init__(self, model, watched, passive, x):
        self.watched = watched
        self.passive = passive
        self.records = watched + passive
        probe = preactivations.preactivation_model(
            model, [r.layer for r in watched], caller=CALLER
        )
        self.model = probe.model
        by_id = {id(r.layer): r for r in watched}
        self.order = [by_id[id(layer)] for layer in probe.layers]
        for record in passive:
            record.positions = _positions(record)
        self.x = x
        self.n = num_samples(x)
        expected = [len(t.shape) for t in keras.tree.flatten(model.inputs)]
        received = [np.ndim(a) for a in keras.tree.flatten(x)]
        if expected != received:
            raise ValueError(
                f"{CALLER}: `validation_data` inputs must have the ranks "
                f"model {model.name!r} takes, {expected} (a dataset must be "
                f"batched). Received: inputs of ranks {received}"
            )
        # Equal batches (one traced shape, two at most).
        size = -(-self.n // -(-self.n // PROBE_BATCH))
        self.batches = [
            keras.tree.map_structure(lambda a, s=start: a[s : s + size], x)
            for start in range(0, self.n, size)
        ]
        # Graph mode, not XLA: an XLA compile (1-2 s) costs more than it
        # saves over a fit's probe passes (measured on LeNet-5).
        self._maps = _compiled(self._maps_step)
        self._compare = _compiled(self._compare_step)

    def _maps_step(self, batch):
        _, outputs = self.model(batch, training=False)
        return [
            _neuron_maps(ops.cast(z, "float32"), r.axis)
            for r, z in zip(self.order, outputs)
        ]

    def _compare_step(self, batch, previous):
        maps = self._maps_step(batch)
        return maps, [_sums(z, p) for z, p in zip(maps, previous)]

    def run(self, compare):
        """One pass; with `compare`, returns `phi` of the watched layers."""
        accumulators = [eq.PhiAccumulator() for _ in self.order]
        previous = [r.previous for r in self.order]
        current = [[] for _ in self.order]
        for i, batch in enumerate(self.batches):
            samples = len(keras.tree.flatten(batch)[0])
            if compare:
                maps, sums = self._compare(batch, [p[i] for p in previous])
                for accumulator, s in zip(accumulators, sums):
                    accumulator.add_sums(ops.convert_to_numpy(s), samples)
            else:
                maps = self._maps(batch)
            for kept, z in zip(current, maps):
                kept.append(z)
        for record, kept in zip(self.order, current):
            record.positions = (
                kept[0].shape[1] if len(kept[0].shape) == 3 else 1
            )
        for record, kept in zip(self.order, current):
            record.previous = kept
        if not compare:
            return None
        phi = {id(r): a.result() for r, a in zip(self.order, accumulators)}
        return [phi[id(r)] for r in self.watched]


def _positions(record):
    """Output positions per neuron of a passive layer, from its output."""
    try:
        shape = tuple(record.layer.output.shape)
    except (AttributeError, ValueError):
        return 1
    if len(shape) <= 2:
        return 1
    return int(np.prod(shape[1:])) // shape[record.axis]
