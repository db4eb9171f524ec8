"""keras_serene.regularizers: public regularizers."""

from keras_serene.regularizers.receding_importance import RecedingImportance
