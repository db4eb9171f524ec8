"""PSPEntropyLogger: per-layer mean PSP-entropy in the training logs.

Every `frequency` epochs (on the epochs where `epoch % frequency == 0`, so
the first one included) the callback measures the PSP-entropy of the chosen
layers on `validation_data` (`keras_serene.psp.psp_entropy`) and writes
the mean over each layer's neurons into `logs["psp_entropy/<layer name>"]`.
`History`, `CSVLogger`, progress bars and TensorBoard then show it. On the
other epochs the keys hold `NaN`, so every per-epoch list in
`history.history` keeps one entry per epoch.

The side model that reads the pre-activations
(`keras_serene.core.preactivations`) is built once per trained model; it calls
the model's own layers, so each measurement sees the current weights.

References:
    - Tartaglione, Bragagnolo, Grangetto, "Pruning artificial neural networks:
      a way to find well-generalizing, high-entropy sharp minima", ICANN 2020,
      arXiv:2004.14765 (PSP-entropy definition).
    - Authors' code: `EIDOSLAB/PSP-entropy`, `src/PSPentropy.py`.
"""

import math

import keras

from keras_serene.core import checks
from keras_serene.core.callback_config import from_config_with_data
from keras_serene.core.data import check_inputs_match
from keras_serene.core.data import check_xy
from keras_serene.core.data import is_dataset
from keras_serene.core.data import iterate_batches
from keras_serene.psp.psp_entropy import PER_VALUES
from keras_serene.psp.psp_entropy import PSPEntropyCounter


@keras.saving.register_keras_serializable(package="keras_serene")
class PSPEntropyLogger(keras.callbacks.Callback):
    """Writes the per-layer mean PSP-entropy into the training logs.

    PSP-entropy of neuron `i`: `H_i = sum_k H(p_ik)`, the binary entropy (in
    bits) of its on-probability `p_ik = P(z_i > 0 | class k)` on
    `validation_data`, clamped to `[1e-4, 0.9999]`; the logged value is the
    mean of `H_i` over the layer. The full result of the latest measurement
    is kept in `self.result` (the dict `psp_entropy` returns) and its epoch
    in `self.result_epoch`.

    Example:

    ```python
    logger = ks.callbacks.PSPEntropyLogger((x_val, y_val), frequency=5)
    history = model.fit(x, y, epochs=20, callbacks=[logger])
    history.history["psp_entropy/conv1"]   # NaN where not measured
    ```

    Args:
        validation_data: `(x, y)` arrays or a batched `tf.data.Dataset` /
            `keras.utils.PyDataset` yielding `(x, y)`. Not part of
            `get_config` (data, not configuration): pass it again to
            `from_config` as `config["validation_data"]`.
        layers: List of layer names or `None` for every Dense/Conv layer.
            Defaults to `None`.
        per: String. `"neuron"` or `"channel"` (see `psp_entropy`).
            Defaults to `"neuron"`.
        frequency: Int >= 1. Measure on epochs where
            `epoch % frequency == 0`. Defaults to `1`.
        batch_size: Int. Batch size for array `validation_data`.
            Defaults to `128`.
        num_classes: Int or `None`. Number of classes (`None`: largest label
            plus one). Defaults to `None`.
        prefix: String. Log keys are `prefix + layer name`. Defaults to
            `"psp_entropy/"`.
        verbose: Int. 1 prints one line per measurement. Defaults to `0`.

    References:
        Tartaglione et al., ICANN 2020, arXiv:2004.14765.
    """

    def __init__(
        self,
        validation_data,
        layers=None,
        per="neuron",
        frequency=1,
        batch_size=128,
        num_classes=None,
        prefix="psp_entropy/",
        verbose=0,
    ):
        super().__init__()
        owner = "PSPEntropyLogger"
        check_xy(owner, "validation_data", validation_data)
        checks.check_choice(owner, "per", per, PER_VALUES)
        checks.check_int(owner, "frequency", frequency, minimum=1)
        checks.check_int(owner, "batch_size", batch_size, minimum=1)
        checks.check_int(
            owner, "num_classes", num_classes, minimum=1, allow_none=True
        )
        checks.check_names(owner, "layers", layers)
        checks.check_type(owner, "prefix", prefix, str, "be a string")
        self.validation_data = validation_data
        self.layers = None if layers is None else list(layers)
        self.per = per
        self.frequency = frequency
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.prefix = prefix
        self.verbose = verbose
        self.result = None
        self.result_epoch = None
        self._counter = None
        self._counter_model = None

    def on_train_begin(self, logs=None):
        self.result = None
        self.result_epoch = None
        self._get_counter()  # Bad layer names fail before the first epoch.
        data = self.validation_data
        check_inputs_match(
            "PSPEntropyLogger",
            "validation_data",
            self.model,
            data if is_dataset(data) else data[0],
        )

    def measure(self):
        """Measures PSP-entropy on `validation_data` now; returns the dict."""
        counter = self._get_counter()
        counter.reset()
        if is_dataset(self.validation_data):
            x, y = self.validation_data, None
        else:
            x, y = self.validation_data
        for xb, yb in iterate_batches(
            x, y, self.batch_size, "PSPEntropyLogger"
        ):
            counter.update(xb, yb, self.num_classes)
        return counter.result(self.num_classes)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch % self.frequency == 0:
            self.result = self.measure()
            self.result_epoch = epoch
            values = {name: r["mean"] for name, r in self.result.items()}
            if self.verbose:
                text = ", ".join(f"{n}={v:.3f}" for n, v in values.items())
                print(f"\nEpoch {epoch + 1}: PSPEntropyLogger mean H: {text}")
        else:
            names = (
                self.result.keys()
                if self.result is not None
                else self._layer_names()
            )
            values = {name: math.nan for name in names}
        for name, value in values.items():
            logs[self.prefix + name] = value

    def _layer_names(self):
        return [layer.name for layer in self._get_counter().layers]

    def _get_counter(self):
        """The counter for `self.model`, built on first use per model."""
        if self._counter is None or self._counter_model is not self.model:
            self._counter = PSPEntropyCounter(
                self.model, layers=self.layers, per=self.per
            )
            self._counter_model = self.model
        return self._counter

    def get_config(self):
        return {
            "layers": self.layers,
            "per": self.per,
            "frequency": self.frequency,
            "batch_size": self.batch_size,
            "num_classes": self.num_classes,
            "prefix": self.prefix,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return from_config_with_data(cls, config, "(x, y)")
