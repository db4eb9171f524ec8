"""keras_serene.neq: neurons at equilibrium (Bragagnolo et al., NeurIPS 2022).

- `equilibrium`: the pure maths (phi, its velocity, the equilibrium test).
- `subset`: the fixed probe inputs; `neuron_records`: which layers are
  watched (all neuron layers but the outputs, by default) and their state;
  `probe`: the inference pass that streams phi.
- `layer_skip`: fully frozen layers made non-trainable, one traced train
  function per skipped set; `backup`: the state file for `BackupAndRestore`.
- `equilibrium_freezing`: the `EquilibriumFreezing` callback, public as
  `ks.callbacks.EquilibriumFreezing`.
"""

from keras_serene.neq.equilibrium_freezing import EquilibriumFreezing
