"""Config helpers shared by the callbacks that hold data.

`EquilibriumFreezing` and `PSPEntropyLogger` keep arrays or datasets, which
do not belong in a JSON config: `get_config` leaves them out and
`from_config` needs the caller to put them back.
"""


def from_config_with_data(cls, config, hint):
    """Builds `cls(**config)`; a clear error when `validation_data` is absent.

    Args:
        cls: the callback class.
        config: the dict `get_config` returned, plus `validation_data`.
        hint: String. What to put there, e.g. `"x"` or `"(x, y)"`.
    """
    config = dict(config)
    if "validation_data" not in config:
        raise ValueError(
            f"{cls.__name__}.from_config: the config holds no data; add "
            f'`config["validation_data"] = {hint}` (or a dataset) first.'
        )
    return cls(**config)
