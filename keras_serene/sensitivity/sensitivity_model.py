"""`SensitivityModel`: the extra backward pass of output and neuron
sensitivity.

The output sensitivity of NeurIPS 2018 (arXiv 1810.11764, Eq. 4-9) and the
neuron sensitivity of SeReNe (arXiv 2102.03773, Sec. III, Eq. 6-9) are
derivatives of the network *outputs*, not of the loss: each training step
needs one more backward pass (K for the exact forms), and SeReNe needs the
pre-activations of every neuron layer (the authors' code reads them with
hooks, `EIDOSLAB/SeReNe`, `src/utilities/train.py`, `optimizer_steps`).
`SensitivityModel(model)` is the one way to run it with `fit`: a
`keras.Model` that shares `model`'s layers and weights and whose
`train_step` computes the training gradient, hands the estimator the outputs,
the labels, the pre-activations (from `keras_serene.core.preactivations`),
its optimizer state and the tape, and passes the result to the optimizer
explicitly,

    optimizer.apply(grads, variables, sensitivities=S)

so the optimizer never reaches into the model. Training it trains `model`;
`model` is what you save, slim and export. The train step uses
`tf.GradientTape` (the public way to customise `fit` with TensorFlow) and
`keras.ops` for the maths; under `tf.distribute` each replica's statistics
are averaged over the replicas before the optimizer step.
"""

import keras
from keras import ops

from keras_serene.core import distribute as _distribute
from keras_serene.core import neurons as neurons_lib
from keras_serene.core import preactivations as preactivations_lib
from keras_serene.sensitivity.degenerate import SensitivityPeaks
from keras_serene.sensitivity.degenerate import SensitivityWatch
from keras_serene.sensitivity.sensitivity_optimizer import SensitivityOptimizer
from keras_serene.sensitivity.sensitivity_optimizer import is_regularized


class ModelPass:
    """One training step's view of the model, handed to an estimator's
    `from_model`.

    Attributes:
        variables: the trainable variables, aligned with the gradients.
        regularized: bools, aligned: the variables that get a sensitivity.
        outputs: the model outputs of the step (training mode).
        labels: the step's targets `y` (may be None).
        preactivations: list of `(layer, z, [NeuronWeight])` for the probed
            layers (empty unless the estimator asks for them).
        loss_gradients: list of `dL/dz`, aligned with `preactivations`
            (empty unless the estimator asks for them).
        state: the estimator's optimizer state (the dict its `build`
            returned, kept by the optimizer as `sensitivity_state`).

    Compute the targets to differentiate inside `with
    model_pass.recording():`, then call `model_pass.gradient(target,
    sources)` outside it.
    """

    def __init__(
        self,
        tape,
        variables,
        regularized,
        outputs,
        labels,
        preactivations,
        loss_gradients,
        num_replicas,
        state=None,
    ):
        self._tape = tape
        self.variables = variables
        self.regularized = regularized
        self.outputs = outputs
        self.labels = labels
        self.preactivations = preactivations
        self.loss_gradients = loss_gradients
        self.num_replicas = num_replicas
        self.state = state if state is not None else {}

    def recording(self):
        """A context in which computations are recorded for `gradient`.

        The targets an estimator differentiates (e.g. `sum_k a_k y_k`) must
        be computed inside it: the tape of the step records again.
        """
        return self._tape

    def gradient(self, target, sources):
        """`d target / d source` for each source (zeros when unconnected)."""
        sources = list(sources)
        grads = self._tape.gradient(target, sources)
        return [
            ops.zeros(s.shape, target.dtype) if g is None else g
            for g, s in zip(grads, sources)
        ]

    def replica_mean(self, tensors):
        """Averages per-replica statistics over the replicas."""
        tensors = list(tensors)
        if self.num_replicas == 1:
            return tensors
        sums = _distribute.all_reduce_sum(tensors)
        return [s / float(self.num_replicas) for s in sums]


class _Plan:
    """What `compile` prepared for the train step (kept out of tracking)."""

    def __init__(self, estimator, probe, weights, peaks):
        self.estimator = estimator
        self.probe = probe
        self.weights = weights
        self.peaks = peaks

    def preactivations(self, zs):
        """`(layer, z, [NeuronWeight])` for each probed layer."""
        if self.probe is None:
            return []
        return [
            (layer, z, self.weights[id(layer)])
            for layer, z in zip(self.probe.layers, zs)
        ]


@keras.saving.register_keras_serializable(package="keras_serene")
class SensitivityModel(keras.Model):
    """Trains `model` with the extra pass output/neuron sensitivity need.

    A `keras.Model` that shares `model`'s layers and weights. Its
    `train_step` computes the loss gradient and, through the optimizer's
    estimator (`ks.sensitivity.OutputSensitivity`,
    `ks.sensitivity.NeuronSensitivity`), the sensitivities from the model's
    outputs and pre-activations, then calls
    `optimizer.apply(grads, variables, sensitivities=S)`. Compile it with a
    `ks.SensitivityOptimizer`, then `fit`, `evaluate` and `predict` it like
    any model; callbacks such as `ks.callbacks.SensitivityPruning` work on
    it. Training it trains `model`, which stays a plain Keras model: save,
    slim and export `model`. The `"mixed_float16"` policy is rejected (its
    `LossScaleOptimizer` does not forward the sensitivities); use
    `"mixed_bfloat16"` or float32.

    Example:

    ```python
    model = ks.zoo.lenet300()
    trainer = ks.SensitivityModel(model)
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.1), sensitivity="neuron", decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    trainer.fit(x, y, validation_split=0.1, epochs=20,
                callbacks=[ks.callbacks.SensitivityPruning(patience=5)])
    model.save("pruned.keras")
    ```

    Args:
        model: A built Functional or Sequential `keras.Model` (subclassed
            models work with estimators that need no pre-activations).
        name: String. Defaults to `None` (`"<model name>_sensitivity"`).
        **kwargs: Other `keras.Model` arguments (`trainable`, `dtype`).

    References:
        - [Tartaglione et al., 2018](https://arxiv.org/abs/1810.11764),
          Eq. 4-9.
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2102.03773),
          Sec. III.
    """

    def __init__(self, model, name=None, **kwargs):
        if not isinstance(model, keras.Model):
            raise TypeError(
                "SensitivityModel: `model` must be a keras.Model. Received "
                f"model={model!r} of type {type(model).__name__}."
            )
        if isinstance(model, SensitivityModel):
            raise ValueError(
                "SensitivityModel: `model` is already a SensitivityModel "
                f"({model.name!r}); wrap the plain model once."
            )
        if not model.built:
            raise ValueError(
                f"SensitivityModel: model {model.name!r} is not built; start "
                "it with `keras.Input(...)` or call it on data first."
            )
        super().__init__(name=name or f"{model.name}_sensitivity", **kwargs)
        self.model = model
        self._plan_holder = _Holder()
        self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def compile(self, optimizer="rmsprop", **kwargs):
        """`keras.Model.compile`; `optimizer` must be (or wrap) a
        `ks.SensitivityOptimizer`. Also checks that the estimator can handle
        the model, and prepares the pre-activation probe."""
        super().compile(optimizer=optimizer, **kwargs)
        self._plan_holder.plan = self._prepare(self.optimizer, watch=True)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, plus a check that warns once per layer whose
        sensitivity stayed zero for a whole epoch
        (`keras_serene.sensitivity.degenerate`)."""
        plan = self._plan_holder.plan
        if plan is not None and plan.peaks is not None:
            watch = SensitivityWatch(plan.peaks, plan.estimator)
            args = list(args)
            if len(args) > 5:  # fit(x, y, batch_size, epochs, verbose, cbs)
                args[5] = [*(args[5] or []), watch]
            else:
                kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), watch]
        return super().fit(*args, **kwargs)

    def compile_from_config(self, config):
        """Compiles from `get_compile_config()` (used by `.keras` loading)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _prepare(self, optimizer, watch=False):
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "SensitivityModel does not support loss scaling (the "
                "'mixed_float16' dtype policy, which makes Keras wrap the "
                "optimizer in a LossScaleOptimizer that does not forward "
                "`sensitivities`). Use the 'mixed_bfloat16' or 'float32' "
                f"policy. Received optimizer={optimizer!r}, dtype policy "
                f"{self.dtype_policy.name!r}."
            )
        if not isinstance(optimizer, SensitivityOptimizer):
            raise TypeError(
                "SensitivityModel.compile: `optimizer` must be a "
                "`ks.SensitivityOptimizer(inner_optimizer, sensitivity=...)`."
                f" Received optimizer={optimizer!r}"
            )
        estimator = optimizer.sensitivity
        regularized = [
            v
            for v in self.model.trainable_variables
            if is_regularized(v, optimizer.exclude)
        ]
        estimator.bind(self.model, regularized)
        if optimizer.built and not optimizer.sensitivity_state:
            # State for a model bound after the optimizer was built.
            optimizer.sensitivity_state = estimator.build(
                optimizer, optimizer.regularized_variables
            )
        probe, weights = None, {}
        if estimator.needs_preactivations:
            layers = estimator.probed_layers(self.model, regularized)
            probe = preactivations_lib.preactivation_model(
                self.model, layers, caller="SensitivityModel"
            )
            weights = {
                id(layer): ws
                for layer, ws in neurons_lib.neuron_layers(self.model)
            }
        peaks = (
            SensitivityPeaks(regularized)
            if watch and estimator.requires_model and optimizer.decay > 0
            else None
        )
        return _Plan(estimator, probe, weights, peaks)

    def train_step(self, data):
        import tensorflow as tf

        plan = self._plan_holder.plan
        if plan is None or plan.estimator is not self.optimizer.sensitivity:
            plan = self._plan_holder.plan = self._prepare(self.optimizer)
        estimator = plan.estimator
        optimizer = self.optimizer
        decayed = optimizer.decay > 0 and estimator.requires_model
        extra = decayed and estimator.uses_extra_pass
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape(persistent=extra) as tape:
            if plan.probe is not None:
                y_pred, zs = plan.probe(x, training=True)
            else:
                y_pred, zs = self(x, training=True), []
            loss = self.compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
            scaled = optimizer.scale_loss(loss)
        variables = list(self.trainable_variables)
        wanted = zs if decayed and estimator.needs_loss_gradients else []
        # One backward pass: the training gradient and, for NeuronLOBSTER,
        # the loss gradient w.r.t. the pre-activations.
        grads = tape.gradient(scaled, variables + list(wanted))
        loss_gradients = [
            g if g is not None else ops.zeros_like(z)
            for g, z in zip(grads[len(variables) :], wanted)
        ]
        grads = grads[: len(variables)]
        if not optimizer.built:
            # As `optimizer.apply` would, but before the estimator reads its
            # state (built by `optimizer.build`).
            optimizer.build(variables)
        sensitivities = None
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if decayed:
            model_pass = ModelPass(
                tape,
                variables,
                [is_regularized(v, optimizer.exclude) for v in variables],
                y_pred,
                y,
                plan.preactivations(zs),
                loss_gradients,
                num_replicas,
                optimizer.sensitivity_state,
            )
            sensitivities = estimator.from_model(model_pass)
            if plan.peaks is not None:
                plan.peaks.update(variables, sensitivities)
        del tape
        optimizer.apply(grads, variables, sensitivities=sensitivities)
        self._track_loss(loss, x, num_replicas)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _track_loss(self, loss, x, num_replicas):
        batch = ops.shape(next(t for t in keras.tree.flatten(x)))[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(
                    loss * ops.cast(num_replicas, loss.dtype),
                    sample_weight=batch,
                )
                return

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


class _Holder:
    """A plain attribute holder Keras does not track."""

    plan = None
