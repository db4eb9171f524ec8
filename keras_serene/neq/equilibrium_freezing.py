"""`EquilibriumFreezing`: NEq, neurons at equilibrium are not updated.

At the end of every epoch the callback runs a fixed subset through the model
in inference mode (`keras_serene.neq.probe`), compares each neuron's outputs
with those of the previous epoch (cosine per sample over the neuron's map,
`phi`), and freezes for the next epoch the neurons whose velocity
`v = dphi - mu * v` is below `epsilon` (Bragagnolo, Tartaglione, Grangetto,
NeurIPS 2022, arXiv 2207.09455, Sec. 3; the maths is in
`keras_serene.neq.equilibrium`). The first epoch is a warm-up: the reference
outputs are taken before training, as the authors' code (`EIDOSLAB/NEq`,
`src/train_classification.py`) does. Masks are recomputed every epoch, so a
neuron can leave equilibrium.

Freezing uses the model's masking optimizer (`ks.MaskingOptimizer`, or
`ks.SensitivityOptimizer` when pruning too): the callback sets the `FROZEN`
bits, the optimizer step is undone on frozen slices, bit for bit. The
optimizer is the user's, compiled by the user: the callback never swaps it.
With `MaskingOptimizer(..., mask_gradients=True)` a frozen entry's gradient
is zeroed before the inner step, so its momentum decays, as the authors'
`MaskedSGD` (`src/optim/sgd.py`). A layer whose neurons are all frozen is
skipped for the epoch (`keras_serene.neq.layer_skip`: its variables are made
non-trainable), so its weight gradients are not computed at all, and no
backward pass runs through a skipped prefix of the network.

Only a skipped layer saves time: on CPU, the weight gradient of half a
layer's channels costs as much as the whole layer's
(`benchmarks/neq_partial.py`), so a partly frozen layer saves FLOPs on
paper only. `skip_threshold < 1` (ours, not the paper's) freezes a layer
whole once that fraction of its neurons is at equilibrium, which
turns a mostly settled layer into a skipped one.
"""

import time

import keras
import numpy as np

from keras_serene.core import callback_backup
from keras_serene.core import checks
from keras_serene.core import masking as masks_lib
from keras_serene.core import neurons as neurons_lib
from keras_serene.core.callback_config import from_config_with_data
from keras_serene.neq import backup
from keras_serene.neq import equilibrium as eq
from keras_serene.neq.layer_skip import LayerSkip
from keras_serene.neq.neuron_records import select_records
from keras_serene.neq.neuron_records import upstream_layers
from keras_serene.neq.probe import Probe
from keras_serene.neq.subset import CALLER
from keras_serene.neq.subset import num_samples
from keras_serene.neq.subset import subset_inputs

#: The figures each epoch's `logs` get (from the epoch's `history` entry).
LOGGED = ("frozen_fraction", "backprop_flops_saved", "backprop_flops_skipped")


@keras.saving.register_keras_serializable(package="keras_serene")
class EquilibriumFreezing(keras.callbacks.Callback):
    """Freezes the neurons at equilibrium for the next epoch (NEq).

    Each epoch, on a fixed subset run in inference mode, every watched neuron
    (by default: every Dense unit, Conv output channel and BatchNormalization
    channel, except in the model's output layers) gets `phi`, the mean over
    samples of the cosine between its pre-activation output map at this epoch
    and at the previous one (the first epoch is a warm-up), `dphi = phi -
    phi_prev` and a velocity `v = dphi - mu * v_prev`; the neurons with `|v| <
    epsilon` are not updated during the next epoch (their parameters stay
    bit-for-bit unchanged). A layer whose neurons are all frozen has its
    variables made non-trainable for that epoch, so its weight gradients are not
    computed (one traced train function per set of skipped layers, reused); a
    BatchNormalization skipped so still normalizes with the batch statistics.
    Each epoch's logs get `frozen_fraction` (neurons frozen during the epoch),
    `backprop_flops_saved` (`sum_l flops_l * frozen_l / sum_l flops_l` over the
    Dense/Conv/BN layers, counted from the layer shapes: the paper's measure,
    the work a masked update makes useless) and `backprop_flops_skipped` (the
    work not computed at all: a skipped layer's whole backward share when no
    layer before it trains, else its weight gradients only, since the gradient
    still flows through it to the layers before). On a CPU only skipping saves
    time (`benchmarks/neq_partial.py`, `docs/results_neq.md`).

    The model must be compiled with a masking optimizer around your own:
    `ks.MaskingOptimizer(optimizer)` (add `mask_gradients=True` for the
    authors' optimizer-state semantics) or `ks.SensitivityOptimizer` when
    pruning too. Frozen flags and skipped layers are cleared at the end of
    `fit`; each `fit` starts over with a warm-up epoch (unless resumed from
    `backup_dir`).

    After each epoch, `history` (one dict per epoch: `frozen_fraction`,
    `backprop_flops_saved`, `backprop_flops_skipped`, `skipped` layers,
    `frozen` count per layer, `probe_seconds`: the wall time of the probe,
    NEq's own cost),
    `layer_stats` (per layer: `neurons`, `frozen`, `backprop_flops`,
    `skipped`), `frozen` and `velocity` (per layer arrays, the decision for
    the next epoch) describe the state. Memory: the previous epoch's outputs
    of the subset (`stored_bytes`).

    Example:

    ```python
    x_probe, x_train, y_train = x[:600], x[600:], y[600:]  # held out
    model.compile(optimizer=ks.MaskingOptimizer(
                      keras.optimizers.SGD(0.1, momentum=0.9)),
                  loss=..., metrics=["accuracy"])
    neq = ks.callbacks.EquilibriumFreezing(x_probe)
    model.fit(x_train, y_train, epochs=50, callbacks=[neq])
    neq.history[-1]["frozen_fraction"]
    ```

    Args:
        validation_data: Inputs `x` (array, or list/dict of arrays), an
            `(x, y)` or `(x, y, sample_weight)` tuple, or a batched
            `tf.data.Dataset` / `keras.utils.PyDataset` (read once; only the
            inputs are kept, in a fixed order). Hold it out of training.
        epsilon: Float > 0. Equilibrium threshold on `|v|`. Defaults to
            `1e-3`.
        velocity_momentum: Float in [0, 1). `mu`. Defaults to `0.5`.
        velocity_form: String. `"paper"` (`v = dphi - mu * v_prev`) or
            `"code"` (the authors' code, `dphi - (1 - mu) * sum_j
            mu^(t-1-j) dphi_j`). Defaults to `"paper"`.
        layers: None or list of regex strings. Watch the neuron layers whose
            name matches one (`re.search`). Defaults to `None`: every
            neuron layer except the output layer(s).
        exclude: None or list of regex strings. Do not watch the layers
            whose name matches one. Defaults to `None`.
        skip_frozen_layers: Bool. Make the variables of a fully frozen
            layer non-trainable for the epoch. Defaults to `True`.
        skip_threshold: Float in (0, 1]. A watched layer with at least
            this fraction of its neurons at equilibrium is frozen whole
            (and skipped) for the next epoch. `1.0` freezes only the
            neurons at equilibrium, as the paper. Lower values (ours)
            trade some of a layer's unsettled neurons for a skipped layer,
            the only freezing that saves wall-clock time on CPU. Needs
            `skip_frozen_layers=True`. Defaults to `1.0`. A layer frozen whole
            stays frozen (its outputs stop changing) unless
            `forced_epochs` is set: with a decaying learning rate,
            `epsilon=0.03, skip_threshold=0.3` saved time on 10 epochs and
            froze the hidden layers early on 20 (`docs/results_neq.md`).
        forced_epochs: None or int >= 1. After this many epochs frozen
            whole by `skip_threshold`, a layer's neurons that were not at
            equilibrium when it was frozen train again for one epoch and
            are measured afresh (measured while frozen, behind frozen
            layers, they look settled). Defaults to `None`: they stay
            frozen while the layer's share at equilibrium holds.
        subset: None, int >= 1 or float in (0, 1]. Keep only this many (or
            this fraction) samples of `validation_data`, drawn once with
            `seed`. Defaults to `None` (all).
        seed: Int. Seed of the subset draw. Defaults to `0`.
        backup_dir: None or string. Directory where the state is written at
            each epoch end (and the variables as each epoch begins), to
            resume exactly with `keras.callbacks.BackupAndRestore` (give it
            the same directory), between epochs or mid-epoch with
            `save_freq=N` (the epoch is replayed from its start; keep the
            batch order fixed). Defaults to `None`.
        verbose: Int. 1 prints one line per epoch. Defaults to `0`.

    References:
        - [Bragagnolo et al., NeurIPS 2022](https://arxiv.org/abs/2207.09455),
          Sec. 3.
    """

    def __init__(
        self,
        validation_data,
        epsilon=1e-3,
        velocity_momentum=0.5,
        velocity_form="paper",
        layers=None,
        exclude=None,
        skip_frozen_layers=True,
        skip_threshold=1.0,
        forced_epochs=None,
        subset=None,
        seed=0,
        backup_dir=None,
        verbose=0,
    ):
        super().__init__()
        self.epsilon = eq.check_epsilon(epsilon, CALLER)
        self.velocity_momentum = eq.check_momentum(velocity_momentum, CALLER)
        self.velocity_form = eq.check_form(velocity_form, CALLER)
        self.layers = checks.check_names(CALLER, "layers", layers)
        self.exclude = checks.check_names(CALLER, "exclude", exclude)
        self.skip_frozen_layers = checks.check_bool(
            CALLER, "skip_frozen_layers", skip_frozen_layers
        )
        self.skip_threshold = checks.check_number(
            CALLER,
            "skip_threshold",
            skip_threshold,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
        )
        if self.skip_threshold < 1.0 and not self.skip_frozen_layers:
            checks.fail(
                CALLER,
                "skip_threshold",
                "be 1.0 when skip_frozen_layers=False (a layer frozen whole "
                "only saves time when it is skipped)",
                skip_threshold,
            )
        self.forced_epochs = checks.check_int(
            CALLER, "forced_epochs", forced_epochs, minimum=1, allow_none=True
        )
        if self.forced_epochs is not None and self.skip_threshold >= 1.0:
            checks.fail(
                CALLER,
                "forced_epochs",
                "be None when skip_threshold=1.0 (no layer is frozen whole "
                "before its neurons settle)",
                forced_epochs,
            )
        self.seed = checks.check_int(CALLER, "seed", seed)
        if backup_dir is not None and not isinstance(backup_dir, str):
            checks.fail(
                CALLER, "backup_dir", "be None or a path", backup_dir, TypeError
            )
        self.backup_dir = backup_dir
        self.verbose = checks.check_int(CALLER, "verbose", verbose, minimum=0)
        self.inputs = subset_inputs(validation_data, subset, self.seed)
        if isinstance(subset, (int, np.integer)):
            subset = int(subset)
        elif subset is not None:
            subset = float(subset)
        self.subset = subset
        self.num_samples = num_samples(self.inputs)
        self.history = []
        self.layer_stats = {}
        self._records = []
        self._probe = None
        self._probe_key = None
        self._skip = None
        self._resume = False
        self._upstream = None

    # -- fit hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._optimizer = masks_lib.mask_optimizer(self.model, caller=CALLER)
        masks_lib.ensure_built(self._optimizer, self.model)
        if self._skip is None or self._skip.model is not self.model:
            self._skip = LayerSkip(self.model)
        self._skip.start()
        self._probe = self._make_probe()
        self._records = self._probe.watched
        self._upstream = upstream_layers(self.model)
        self._probe.run(compare=False)
        for record in self._probe.records:
            record.reset()
        self._apply_masks(force=True)
        self.history = []
        self.layer_stats = {}
        self._resume = self.backup_dir is not None

    def on_epoch_begin(self, epoch, logs=None):
        resuming, self._resume = self._resume, False
        if resuming:
            history = backup.load_state(self.backup_dir, epoch, self._records)
            if history is not None:
                self.history = history
                self._apply_masks(force=True)
        callback_backup.epoch_begins(
            self.backup_dir, backup.NAME, epoch, self.model, resuming
        )
        if self.skip_frozen_layers:
            self._skip.skip(
                [
                    r.layer
                    for r in self._records
                    if r.skippable and r.applied.all()
                ]
            )

    def on_epoch_end(self, epoch, logs=None):
        skipped = [layer.name for layer in self._skip.skipped]
        self._skip.restore()  # the model is the user's between epochs
        logs = logs if logs is not None else {}
        stats = self._write_stats(epoch, skipped)
        for key in LOGGED:
            logs[key] = stats[key]
        start = time.perf_counter()
        phis = self._probe.run(compare=True)
        self.history[-1]["probe_seconds"] = time.perf_counter() - start
        for record, phi_now in zip(self._records, phis):
            dphi = eq.delta_phi(phi_now, record.phi)
            record.velocity, record.state = eq.velocity_step(
                self.velocity_form, dphi, record.state, self.velocity_momentum
            )
            record.phi = phi_now
            record.frozen = self._decide(
                record, eq.at_equilibrium(record.velocity, self.epsilon)
            )
        self._apply_masks()
        if self.backup_dir is not None:
            backup.save_state(
                self.backup_dir, epoch, self._records, self.history
            )
        if self.verbose:
            total = sum(r.frozen.size for r in self._records)
            frozen = sum(int(r.frozen.sum()) for r in self._records)
            print(
                f"\nEpoch {epoch + 1}: EquilibriumFreezing froze "
                f"{frozen}/{total} neurons for the next epoch."
            )

    def on_train_end(self, logs=None):
        self.restore()
        if self.backup_dir is not None:
            backup.remove_state(self.backup_dir)

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
                np.prod(z.shape) * 4
                for r in self._records
                for z in (r.previous or ())
            )
        )

    @property
    def train_functions_made(self):
        """Train functions made for skipped-layer sets (each traced once)."""
        return 0 if self._skip is None else self._skip.made

    def restore(self):
        """Makes skipped layers trainable and clears the frozen flags.

        Called at the end of `fit`; call it yourself if `fit` was
        interrupted by an exception.
        """
        if self._skip is not None:
            self._skip.restore()
        for record in self._records:
            if record.applied.any():
                self._set_frozen(record, np.zeros_like(record.applied))

    def _make_probe(self):
        """The probe of this model, built once (the layers keep its nodes)."""
        key = (
            id(self.model),
            tuple(self.layers or ()),
            tuple(self.exclude or ()),
            tuple(
                id(w.variable)
                for _, weights in neurons_lib.neuron_layers(self.model)
                for w in weights
            ),
        )
        if self._probe is None or self._probe_key != key:
            watched, passive = select_records(
                self.model, self.layers, self.exclude
            )
            self._probe = Probe(self.model, watched, passive, self.inputs)
            self._probe_key = key
        return self._probe

    def _decide(self, record, settled):
        """The neurons of `record` frozen for the next epoch: those at
        equilibrium (`settled`), or all of them when `skip_threshold` of
        them are. The ones frozen so without being at equilibrium are
        `record.forced`; after `forced_epochs` epochs they train again for
        an epoch (a velocity measured while frozen says nothing)."""
        if not record.skippable or self.skip_threshold >= 1.0:
            return settled
        if record.forced.any() and self.forced_epochs is not None:
            record.frozen_for += 1
            if record.frozen_for >= self.forced_epochs:
                frozen = settled & ~record.forced
                record.release()
                return frozen
        if settled.mean() >= self.skip_threshold:
            if not record.forced.any():
                record.forced = ~settled
                record.frozen_for = 0
            return np.ones_like(settled)
        record.release()
        return settled

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

    def _skipped_share(self, record, skipped):
        """The share of a layer's backward work its skip left undone: all
        of it, or its weight gradients only when a layer before it trained
        (the gradient then still flows through it). Without a functional
        graph to tell, the weight gradients only."""
        if record.layer.name not in skipped or not record.flops:
            return 0.0
        before = (self._upstream or {}).get(id(record.layer))
        trained_before = before is None or any(
            layer.trainable_weights and layer.name not in skipped
            for layer in before
        )
        if not trained_before:
            return 1.0
        return (record.flops - record.input_flops) / record.flops

    def _write_stats(self, epoch, skipped):
        """Figures of the epoch that just ran (masks set one epoch before)."""
        flops = [r.flops for r in self._records]
        fractions = [float(r.applied.mean()) for r in self._records]
        considered = sum(r.applied.size for r in self._records)
        frozen = sum(int(r.applied.sum()) for r in self._records)
        frozen_fraction = frozen / considered if considered else 0.0
        passive = [r.flops for r in self._probe.passive]
        flops_saved = eq.backprop_flops_saved(
            flops + passive, fractions + [0.0] * len(passive)
        )
        whole = [self._skipped_share(r, skipped) for r in self._records]
        flops_skipped = eq.backprop_flops_saved(
            flops + passive, whole + [0.0] * len(passive)
        )
        self.layer_stats = {
            r.layer.name: {
                "neurons": int(r.applied.size),
                "frozen": int(r.applied.sum()),
                "backprop_flops": float(r.flops),
                "skipped": r.layer.name in skipped,
            }
            for r in self._records
        }
        self.history.append(
            {
                "epoch": epoch + 1,
                "frozen_fraction": frozen_fraction,
                "backprop_flops_saved": flops_saved,
                "backprop_flops_skipped": flops_skipped,
                "skipped": list(skipped),
                "frozen": {
                    r.layer.name: int(r.applied.sum()) for r in self._records
                },
            }
        )
        return self.history[-1]

    def get_config(self):
        return {
            "epsilon": self.epsilon,
            "velocity_momentum": self.velocity_momentum,
            "velocity_form": self.velocity_form,
            "layers": self.layers,
            "exclude": self.exclude,
            "skip_frozen_layers": self.skip_frozen_layers,
            "skip_threshold": self.skip_threshold,
            "forced_epochs": self.forced_epochs,
            "subset": self.subset,
            "seed": self.seed,
            "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return from_config_with_data(cls, config, "x")
