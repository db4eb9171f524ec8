"""`OptimizerWrapper`: the plumbing every keras_serene optimizer wrapper shares.

Keras's `LossScaleOptimizer` is the pattern: the wrapper passes
`learning_rate=0.0` to the base class and owns no learning rate; it delegates
`learning_rate` (getter and setter), `iterations`, `scale_loss` and
`finalize_variable_values` to the inner optimizer and lists the inner
optimizer's variables after its own; it rejects the base class's keyword
arguments with "set `{arg}` on the `inner_optimizer`"; its config nests the
inner optimizer with `keras.saving.serialize_keras_object`.

Subclasses (`SensitivityOptimizer`, `ImportanceOptimizer`) add what they do
to the step in `build` and `apply`, and their own arguments to `get_config`
through `wrapper_config`.
"""

import keras

_BASE_OPTIMIZER_ARGS = (
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)


class OptimizerWrapper(keras.optimizers.Optimizer):
    """Base class of optimizers that wrap another one (not used directly).

    Args:
        inner_optimizer: `keras.optimizers.Optimizer`. The optimizer taking
            the step.
        name: String. Defaults to `None`.
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        cls = type(self).__name__
        for arg in _BASE_OPTIMIZER_ARGS:
            value = kwargs.pop(arg, None)
            if value not in (None, False):
                raise ValueError(
                    f"{cls} does not take `{arg}`. Instead, set `{arg}` on "
                    f"the `inner_optimizer`. Received {arg}={value!r}"
                )
        if kwargs:
            raise ValueError(
                f"{cls} got unexpected arguments: {sorted(kwargs)}."
            )
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"{cls}: `inner_optimizer` must be a "
                "`keras.optimizers.Optimizer` instance (Keras 3). Received "
                f"inner_optimizer={inner_optimizer!r} of type "
                f"{type(inner_optimizer).__name__}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def wrapper_config(self):
        """The subclass's own arguments (override)."""
        return {}

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            **self.wrapper_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **cls.deserialize_arguments(config, custom_objects))

    @classmethod
    def deserialize_arguments(cls, config, custom_objects=None):
        """Turns nested configs in `config` back into objects (override)."""
        return config
