"""keras_serene.neq: neurons at equilibrium (Bragagnolo et al., NeurIPS 2022).

`equilibrium` holds the pure maths (phi, its velocity, the equilibrium test);
`equilibrium_freezing` the `EquilibriumFreezing` callback, public as
`ks.callbacks.EquilibriumFreezing`.
"""

from keras_serene.neq.equilibrium_freezing import EquilibriumFreezing
