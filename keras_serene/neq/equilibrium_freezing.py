"""`EquilibriumFreezing`: NEq, neurons at equilibrium are not updated.

At the end of every epoch the callback runs a fixed validation subset through
the model in inference mode, compares each neuron's outputs with those of the
previous epoch (cosine per sample over the neuron's map, `phi`), and freezes
for the next epoch the neurons whose velocity `v = dphi - mu * v` is below
`epsilon` (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022,
https://openreview.net/forum?id=LGDfv0U7MJR, arXiv 2207.09455, Sec. 3; the
maths is in `keras_serene.neq.equilibrium`). The first epoch is a warm-up: the
reference outputs are taken before training, as the authors' code
(`EIDOSLAB/NEq`, `src/train_classification.py`) does, and the first masks
apply from the second epoch. Masks are recomputed every epoch, so a neuron can
leave equilibrium.

Choices, following the authors' code where the paper is loose:

- Neuron outputs are the layers' *pre-activation* outputs: the code hooks
  `nn.Conv2d` and `nn.BatchNorm2d` modules, whose outputs come before the
  ReLU module. A Keras layer with a fused activation is split into its linear
  part and its activation by `keras_serene.core.preactivations`, which calls the
  model's own layers (no copies).
- Neurons are convolution output channels and BatchNormalization channels by
  default; Dense units only with `include_dense=True`, because the code never
  hooks `nn.Linear`, so the published results freeze no Dense unit.
- Freezing uses the shared masks (`keras_serene.core.masking`, `FROZEN` bit): the
  optimizer step is undone on frozen slices, so momentum, Adam moments and
  decoupled weight decay cannot move them. The optimizer state of a frozen
  entry keeps following its gradient (the code's `MaskedSGD` zeroes the
  gradient, so its momentum decays instead).
- Beyond the paper: when all the neurons of a layer with a kernel (Dense,
  Conv) are frozen, the layer is made non-trainable for the next epoch and
  `fit`'s train function is rebuilt, so TensorFlow does not compute its
  weight gradients at all (zeroed gradients save no time). A
  BatchNormalization layer is never skipped: a non-trainable Keras BN runs in
  inference mode, which would change the forward pass.
"""

import contextlib

import keras
import numpy as np

from keras_serene.neq import equilibrium as eq
from keras_serene.core import masking as masks_lib
from keras_serene.core import neurons as neurons_lib
from keras_serene.core import preactivations
from keras_serene.core.callback_config import from_config_with_data
from keras_serene.psp.psp_entropy import is_dataset


@keras.saving.register_keras_serializable(package="keras_serene")
class EquilibriumFreezing(keras.callbacks.Callback):
    """Freezes the neurons at equilibrium for the next epoch (NEq).

    Each epoch, on a fixed validation subset run in inference mode, every
    neuron (Conv output channel, BatchNormalization channel, and Dense unit
    with `include_dense=True`) gets `phi`: the mean over samples of the
    cosine between its pre-activation output map at this epoch and at the
    previous one (the reference outputs are taken before training, so the
    first epoch is a warm-up), `dphi = phi - phi_prev` and a
    velocity `v = dphi - mu * v_prev`; the neurons with `|v| < epsilon` are
    not updated during the next epoch (their parameters stay bit-for-bit
    unchanged). Each epoch's logs get `frozen_fraction` (neurons frozen
    during the epoch) and `backprop_flops_saved` (the share of the backward
    FLOPs of the Dense/Conv/BN layers spent on frozen neurons:
    `sum_l flops_l * frozen_l / sum_l flops_l`, counted from the layer
    shapes); `layer_stats` holds the per-layer detail.

    When the model is compiled with a plain Keras optimizer, the callback
    wraps it in `ks.SensitivityOptimizer(optimizer, decay=0.0)` (a pure
    masking wrapper that keeps the inner optimizer's state; under a
    `LossScaleOptimizer` its inner optimizer is wrapped), assigns it to
    `model.optimizer` and rebuilds the train function; at the end of `fit`
    it puts the compiled optimizer back (so `model.save` stays consistent
    with the compile config), unless some entries are still masked (pruned
    by `ks.callbacks.SensitivityPruning`): then the wrapper stays, to keep
    them at zero. To combine NEq with pruning, compile with
    `ks.SensitivityOptimizer` yourself (or list this callback first). Frozen
    flags and skipped layers are cleared at the end of `fit`; each `fit`
    starts over with a warm-up epoch.

    After each epoch, `history` (one dict per epoch: `frozen_fraction`,
    `backprop_flops_saved`, `skipped` layers, `frozen` count per layer),
    `layer_stats` (per layer: `neurons`, `frozen`, `backprop_flops`,
    `skipped`, for the epoch that ran), `frozen` and `velocity` (per layer
    arrays, the decision for the next epoch) describe the state. Memory: only
    the previous epoch's outputs of the subset are kept (`stored_bytes`).

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=..., metrics=["accuracy"])
    neq = ks.callbacks.EquilibriumFreezing(x_train, subset=0.01)
    model.fit(x_train, y_train, epochs=50, callbacks=[neq])
    neq.history[-1]["frozen_fraction"]
    ```

    Args:
        validation_data: Inputs `x` (array, or list/dict of arrays), an
            `(x, y)` or `(x, y, sample_weight)` tuple, or a batched
            `tf.data.Dataset` / `keras.utils.PyDataset` (read once; only the
            inputs are kept, in a fixed order).
        epsilon: Float > 0. Equilibrium threshold on `|v|`. Defaults to
            `1e-3`.
        velocity_momentum: Float in [0, 1). `mu`. Defaults to `0.5`.
        velocity_form: String. `"paper"` (`v = dphi - mu * v_prev`) or
            `"code"` (the authors' code, `dphi - (1 - mu) * sum_j
            mu^(t-1-j) dphi_j`). Defaults to `"paper"`.
        include_dense: Bool. Also freeze Dense units. Defaults to `False`
            (the authors' code freezes Conv and BatchNorm only).
        skip_frozen_layers: Bool. Make a Dense/Conv layer non-trainable for
            an epoch when all its neurons are frozen, so its weight
            gradients are not computed. Defaults to `True`.
        subset: None, int >= 1 or float in (0, 1]. Keep only this many (or
            this fraction, rounded down) samples of `validation_data`,
            drawn once with `seed`: pass the training inputs and
            `subset=0.01` for the paper's setting. Defaults to `None` (all).
        seed: Int. Seed of the subset draw. Defaults to `0`.
        verbose: Int. 1 prints one line per epoch. Defaults to `0`.

    References:
        - [Bragagnolo et al., NeurIPS 2022](
          https://openreview.net/forum?id=LGDfv0U7MJR), Sec. 3.
    """

    def __init__(
        self,
        validation_data,
        epsilon=1e-3,
        velocity_momentum=0.5,
        velocity_form="paper",
        include_dense=False,
        skip_frozen_layers=True,
        subset=None,
        seed=0,
        verbose=0,
    ):
        super().__init__()
        name = "EquilibriumFreezing"
        self.epsilon = eq.check_epsilon(epsilon, name)
        self.velocity_momentum = eq.check_momentum(velocity_momentum, name)
        self.velocity_form = eq.check_form(velocity_form, name)
        for arg, value in (
            ("include_dense", include_dense),
            ("skip_frozen_layers", skip_frozen_layers),
        ):
            if not isinstance(value, bool):
                raise TypeError(
                    f"{name}: `{arg}` must be True or False. Received "
                    f"{arg}={value!r}"
                )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(
                f"{name}: `seed` must be an int. Received seed={seed!r}"
            )
        self.include_dense = include_dense
        self.skip_frozen_layers = skip_frozen_layers
        self.inputs = _subset_inputs(validation_data, subset, seed)
        if isinstance(subset, (int, np.integer)):
            subset = int(subset)
        elif subset is not None:
            subset = float(subset)
        self.subset = subset
        self.seed = int(seed)
        self.verbose = verbose
        self.num_samples = _num_samples(self.inputs)
        self.history = []
        self.layer_stats = {}
        self._records = []
        self._wrapped = False
        self._side = None
        self._side_key = None

    # -- fit hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.restore()
        self._optimizer, wrapped = _masking_optimizer(self.model)
        self._wrapped = wrapped
        self._side = self._side_model()
        self._records = self._side.watched
        self._side.run(compare=False)
        for record in self._side.records:
            record.reset()
        self._apply_masks(force=True)
        self.history = []
        self.layer_stats = {}
        if wrapped:
            self.model.make_train_function(force=True)

    def _side_model(self):
        """The probe of this model, built once (the layers keep its nodes)."""
        key = (
            id(self.model),
            self.include_dense,
            tuple(
                id(w.variable)
                for _, weights in neurons_lib.neuron_layers(self.model)
                for w in weights
            ),
        )
        if self._side is None or self._side_key != key:
            self._side = _SideModel(self.model, self.include_dense, self.inputs)
            self._side_key = key
        return self._side

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        frozen_fraction, flops_saved = self._write_stats(epoch)
        logs["frozen_fraction"] = frozen_fraction
        logs["backprop_flops_saved"] = flops_saved
        phis = self._side.run(compare=True)
        for record, phi_now in zip(self._records, phis):
            dphi = eq.delta_phi(phi_now, record.phi)
            record.velocity, record.state = eq.velocity_step(
                self.velocity_form,
                dphi,
                record.state,
                self.velocity_momentum,
            )
            record.phi = phi_now
            record.frozen = eq.at_equilibrium(record.velocity, self.epsilon)
        self._apply_masks()
        skipped = self._update_skips()
        if self.verbose:
            total = sum(r.frozen.size for r in self._records)
            frozen = sum(int(r.frozen.sum()) for r in self._records)
            print(
                f"\nEpoch {epoch + 1}: EquilibriumFreezing froze "
                f"{frozen}/{total} neurons for the next epoch"
                + (f", skipping {', '.join(skipped)}." if skipped else ".")
            )

    def on_train_end(self, logs=None):
        self.restore()
        if self._wrapped and not any(
            np.any(keras.ops.convert_to_numpy(m)) for m in self._optimizer.masks
        ):
            # Nothing left to mask: hand back the compiled optimizer, so that
            # `model.save` stores the optimizer its compile config names.
            _unwrap(self.model, self._optimizer)
            self._wrapped = False

    # -- state -------------------------------------------------------------

    @property
    def frozen(self):
        """Layer name -> bool array: neurons frozen for the next epoch."""
        return {r.layer.name: r.frozen.copy() for r in self._records}

    @property
    def velocity(self):
        """Layer name -> the last velocity of each neuron."""
        return {r.layer.name: r.velocity.copy() for r in self._records}

    @property
    def stored_bytes(self):
        """Bytes of the previous-epoch outputs kept for the next comparison."""
        return int(
            sum(
                r.previous.nbytes
                for r in self._records
                if r.previous is not None
            )
        )

    def restore(self):
        """Makes skipped layers trainable and clears the frozen flags.

        Called at the start and end of `fit`; call it yourself if `fit` was
        interrupted.
        """
        if any(r.skipped for r in self._records):
            for record in self._records:
                if record.skipped:
                    record.layer.trainable = True
                    record.skipped = False
            self.model.make_train_function(force=True)
        for record in self._records:
            if record.applied.any():
                self._set_frozen(record, np.zeros_like(record.applied))

    def _apply_masks(self, force=False):
        for record in self._records:
            if force or not np.array_equal(record.frozen, record.applied):
                self._set_frozen(record, record.frozen)

    def _set_frozen(self, record, frozen):
        """Writes the FROZEN bit of the record's weights (PRUNED untouched)."""
        for weight in record.weights:
            shape = neurons_lib.neuron_shape(weight.kind, weight.variable.shape)
            masks_lib.set_flag(
                self._optimizer,
                weight.variable,
                masks_lib.FROZEN,
                np.reshape(frozen, shape),
            )
        record.applied = np.array(frozen, dtype=bool)

    def _update_skips(self):
        changed = False
        for record in self._records:
            skip = (
                self.skip_frozen_layers
                and record.skippable
                and bool(record.frozen.all())
            )
            if skip != record.skipped:
                record.layer.trainable = not skip
                record.skipped = skip
                changed = True
        if changed:
            self.model.make_train_function(force=True)
        return [r.layer.name for r in self._records if r.skipped]

    def _write_stats(self, epoch):
        """Figures of the epoch that just ran (masks set one epoch before)."""
        flops = [r.flops for r in self._records]
        fractions = [float(r.applied.mean()) for r in self._records]
        considered = sum(r.applied.size for r in self._records)
        frozen = sum(int(r.applied.sum()) for r in self._records)
        frozen_fraction = frozen / considered if considered else 0.0
        passive = [r.flops for r in self._side.passive]
        flops += passive
        fractions += [0.0] * len(passive)
        flops_saved = eq.backprop_flops_saved(flops, fractions)
        self.layer_stats = {
            r.layer.name: {
                "neurons": int(r.applied.size),
                "frozen": int(r.applied.sum()),
                "backprop_flops": float(r.flops),
                "skipped": bool(r.skipped),
            }
            for r in self._records
        }
        self.history.append(
            {
                "epoch": epoch + 1,
                "frozen_fraction": frozen_fraction,
                "backprop_flops_saved": flops_saved,
                "skipped": [r.layer.name for r in self._records if r.skipped],
                "frozen": {
                    r.layer.name: int(r.applied.sum()) for r in self._records
                },
            }
        )
        return frozen_fraction, flops_saved

    def get_config(self):
        return {
            "epsilon": self.epsilon,
            "velocity_momentum": self.velocity_momentum,
            "velocity_form": self.velocity_form,
            "include_dense": self.include_dense,
            "skip_frozen_layers": self.skip_frozen_layers,
            "subset": self.subset,
            "seed": self.seed,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return from_config_with_data(cls, config, "x")


def _masking_optimizer(model):
    """The model's `SensitivityOptimizer`, wrapping a plain one if needed."""
    from keras_serene.sensitivity.sensitivity_optimizer import SensitivityOptimizer

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "EquilibriumFreezing: the model has no optimizer; compile it "
            "before calling `fit`."
        )
    try:
        found = masks_lib.mask_optimizer(model, caller=_CALLER)
        wrapped = False
    except ValueError:
        found, wrapped = None, True
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if wrapped and isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            found = SensitivityOptimizer(optimizer.inner_optimizer, decay=0.0)
            optimizer.inner_optimizer = found
        elif wrapped:
            found = SensitivityOptimizer(optimizer, decay=0.0)
            model.optimizer = found
        # Build from the outside in: a LossScaleOptimizer builds its inner
        # optimizer in its own `build`, which would otherwise run again at
        # the first step and replace the masks.
        masks_lib.ensure_built(model.optimizer, model)
        masks_lib.ensure_built(found, model)
    return found, wrapped


def _unwrap(model, wrapper):
    """Puts back the optimizer `_masking_optimizer` wrapped (state kept)."""
    if model.optimizer is wrapper:
        model.optimizer = wrapper.inner_optimizer
    else:  # under a LossScaleOptimizer
        model.optimizer.inner_optimizer = wrapper.inner_optimizer
    model.make_train_function(force=True)


# -- data, neurons and the side model (private) ----------------------------

_CALLER = "EquilibriumFreezing"
_PROBE_BATCH = 128


def _inputs_of(data):
    """The inputs of `validation_data` as NumPy arrays (a dataset is read)."""
    if data is None:
        raise ValueError(
            f"{_CALLER}: `validation_data` is required (inputs, an (x, y) "
            "tuple or a batched dataset). Received validation_data=None"
        )
    if is_dataset(data):
        if isinstance(data, keras.utils.PyDataset):
            elements = (data[i] for i in range(len(data)))
        else:
            elements = iter(data)
        batches = []
        for element in elements:
            if isinstance(element, tuple):
                element = element[0]
            batches.append(keras.tree.map_structure(np.asarray, element))
        if not batches:
            raise ValueError(
                f"{_CALLER}: the validation subset is empty: "
                "`validation_data` yielded no batch."
            )
        return keras.tree.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *batches
        )
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(
                f"{_CALLER}: a tuple `validation_data` must be (x, y) or "
                f"(x, y, sample_weight). Received a tuple of length "
                f"{len(data)}"
            )
        data = data[0]
    return keras.tree.map_structure(np.asarray, data)


def _num_samples(x):
    leaves = keras.tree.flatten(x)
    if not leaves or any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(
            f"{_CALLER}: `validation_data` must hold arrays with a sample "
            f"axis. Received {type(x).__name__}"
        )
    lengths = {len(leaf) for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(
            f"{_CALLER}: the inputs in `validation_data` have different "
            f"numbers of samples: {sorted(lengths)}"
        )
    return lengths.pop()


def _subset_size(subset, n):
    if subset is None:
        k = n
    elif isinstance(subset, bool) or not isinstance(
        subset, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"{_CALLER}: `subset` must be None, an int >= 1 or a float in "
            f"(0, 1]. Received subset={subset!r}"
        )
    elif isinstance(subset, (int, np.integer)):
        if subset < 1 or subset > n:
            raise ValueError(
                f"{_CALLER}: an int `subset` must be in [1, {n}] (the "
                f"samples in `validation_data`). Received subset={subset}"
            )
        k = int(subset)
    else:
        if not 0.0 < subset <= 1.0:
            raise ValueError(
                f"{_CALLER}: a float `subset` must be in (0, 1]. Received "
                f"subset={subset}"
            )
        k = int(np.floor(subset * n))
    if k == 0:
        raise ValueError(
            f"{_CALLER}: the validation subset is empty: subset={subset!r} "
            f"of {n} samples leaves none. Pass more data or a larger subset."
        )
    return k


def _subset_inputs(data, subset, seed):
    """The fixed subset of inputs: drawn once with `seed`, in data order."""
    x = _inputs_of(data)
    n = _num_samples(x)
    k = _subset_size(subset, n)
    if k < n:
        rng = np.random.default_rng(int(seed))
        index = np.sort(rng.choice(n, size=k, replace=False))
        x = keras.tree.map_structure(lambda a: a[index], x)
    return x


class _NeuronRecord:
    """One layer whose neurons may be frozen, and its NEq state."""

    def __init__(self, layer, weights):
        self.layer = layer
        self.weights = weights
        self.size = weights[0].num_neurons
        self.axis = _channel_axis(layer)
        ids = {id(w.variable) for w in weights}
        self.skippable = any(w.kind != "vector" for w in weights) and ids == {
            id(v) for v in layer.trainable_variables
        }
        self.previous = None  # float32 (samples, positions, neurons) maps
        self.positions = 1
        self.flops = 0.0
        self.skipped = False
        self.reset()

    def reset(self):
        self.phi = np.ones(self.size)  # phi^(-1) = 1, as the code's buffer
        self.state = np.zeros(self.size)
        self.velocity = np.zeros(self.size)
        self.frozen = np.zeros(self.size, dtype=bool)
        self.applied = np.zeros(self.size, dtype=bool)
        self.flops = _backprop_flops(self.layer, self.weights, self.positions)


def _channel_axis(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        axis = layer.axis
        return axis[0] if isinstance(axis, (list, tuple)) else int(axis)
    if getattr(layer, "data_format", None) == "channels_first":
        return 1
    return -1


def _backprop_flops(layer, weights, positions):
    """Backward FLOPs per sample: 4 x MACs per kernel, 2 per map element.

    A kernel's weight and input gradients cost one MAC (two FLOPs) each per
    forward MAC; a per-channel vector (bias, gamma, beta) one
    multiply-accumulate per output element.
    """
    size = weights[0].num_neurons
    flops = 0.0
    for weight in weights:
        if weight.kind == "vector":
            flops += 2.0 * positions * size
            continue
        kernel_positions = positions
        if weight.kind == "second_last":  # transposed conv: input positions
            kernel_positions = positions / np.prod(
                getattr(layer, "strides", (1,))
            )
        flops += 4.0 * kernel_positions * np.prod(weight.variable.shape)
    return float(flops)


def _neuron_records(model, include_dense):
    """Records of the layers to watch, and of the other neuron layers."""
    watched, passive = [], []
    for layer, weights in neurons_lib.neuron_layers(model):
        record = _NeuronRecord(layer, weights)
        if isinstance(layer, keras.layers.Dense) and not include_dense:
            passive.append(record)
        else:
            watched.append(record)
    if not watched:
        raise ValueError(
            f"{_CALLER}: model {model.name!r} has no trainable Conv or "
            "BatchNormalization layer"
            + ("" if include_dense else " (pass include_dense=True for Dense)")
            + " whose neurons could be frozen."
        )
    return watched, passive


class _SideModel:
    """Runs the subset and streams `phi`, keeping only previous outputs.

    Pre-activations come from `keras_serene.core.preactivations`, which calls the
    model's own layers (same variables, nothing to copy). The other neuron
    layers (unwatched Dense) are probed too, for their output shapes only.
    """

    def __init__(self, model, include_dense, x):
        self.watched, self.passive = _neuron_records(model, include_dense)
        self.records = self.watched + self.passive
        by_id = {id(r.layer): r for r in self.records}
        probe = preactivations.preactivation_model(
            model, [r.layer for r in self.records], caller=_CALLER
        )
        self.model = probe.model
        self.order = [by_id[id(layer)] for layer in probe.layers]
        self.x = x
        self.n = _num_samples(x)
        expected = [len(t.shape) for t in keras.tree.flatten(model.inputs)]
        received = [np.ndim(a) for a in keras.tree.flatten(x)]
        if expected != received:
            raise ValueError(
                f"{_CALLER}: `validation_data` inputs have ranks {received} "
                f"but model {model.name!r} takes ranks {expected} (a dataset "
                "must be batched)."
            )

    def run(self, compare):
        """One pass over the subset; returns the watched layers' `phi`."""
        accumulators = {id(r): eq.PhiAccumulator() for r in self.watched}
        for record in self.records:
            if not compare:
                record.previous = None
        for start in range(0, self.n, _PROBE_BATCH):
            stop = min(self.n, start + _PROBE_BATCH)
            window = slice(start, stop)
            batch = keras.tree.map_structure(lambda a, w=window: a[w], self.x)
            _, outputs = self.model.predict_on_batch(batch)
            for record, z in zip(self.order, outputs):
                z = eq.to_neuron_maps(np.asarray(z, np.float32), record.axis)
                record.positions = z.shape[1] if z.ndim == 3 else 1
                if id(record) not in accumulators:
                    continue
                if record.previous is None:
                    record.previous = np.zeros(
                        (self.n,) + z.shape[1:], np.float32
                    )
                if compare:
                    accumulators[id(record)].update(z, record.previous[window])
                record.previous[window] = z
        if compare:
            return [accumulators[id(r)].result() for r in self.watched]
        return None
