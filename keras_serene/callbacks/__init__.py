"""keras_serene.callbacks: public callbacks (re-exports only)."""

from keras_serene.neq.equilibrium_freezing import EquilibriumFreezing
from keras_serene.psp.psp_entropy_logger import PSPEntropyLogger
from keras_serene.sensitivity.sensitivity_pruning import SensitivityPruning
