"""keras_serene.callbacks: public callbacks."""

from keras_serene.callbacks.equilibrium_freezing import EquilibriumFreezing
from keras_serene.callbacks.psp_entropy_logger import PSPEntropyLogger
from keras_serene.callbacks.sensitivity_pruning import SensitivityPruning
