"""keras_serene.regularizers: public regularizers (re-exports only)."""

from keras_serene.rni.receding_importance import RecedingImportance
