"""keras_serene.rni: Receding Neuron Importances (arXiv 2204.06404).

The bounded BatchNorm (`ks.layers.BoundedBatchNormalization`), the
regulariser (`ks.regularizers.RecedingImportance`), the optimizer that gives
the bounded scales their learning rate (`ks.ImportanceOptimizer`) and one-shot
channel pruning (`ks.prune_by_importance`).
"""

from keras_serene.rni.bounded_batch_normalization import (
    BoundedBatchNormalization,
)
from keras_serene.rni.importance_optimizer import ImportanceOptimizer
from keras_serene.rni.importance_pruning import prune_by_importance
from keras_serene.rni.receding_importance import RecedingImportance
